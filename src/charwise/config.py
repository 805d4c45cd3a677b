"""Every setting of a training run, declared once: its default, range and meaning. The CLI's
options are made from these fields, and every run records them in its checkpoints."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from charwise.engines import CHOICES
from charwise.errors import CharwiseError
from charwise.models import FAMILIES
from charwise.optim import ALPHA, CLIP, OPTIMIZERS, SCHEDULES, default_eta
from charwise.schedule import CHUNKS
from charwise.settings import same_kind, setting

ENGINE_CHOICES = CHOICES
DTYPES = ("float64", "float32", "bfloat16")
DROPOUT_RNGS = ("numpy", "device")


@dataclass
class TrainConfig:
    """Every setting of a run, recorded in its checkpoints."""

    model: str = setting("rnn", "Cell family.", choices=FAMILIES)
    layers: int = setting(1, "Stacked layers.", minimum=1)
    m: int = setting(100, "Hidden units per layer.", minimum=1)
    dropout: float = setting(
        0.0, "Inverted dropout on the input of layers 2..L and on h^L.", minimum=0.0, below=1.0
    )
    optimizer: str = setting("adagrad", "Optimiser.", choices=tuple(OPTIMIZERS))
    eta: float | None = setting(
        None, "Learning rate [default: 0.1 for adagrad, 2e-3 otherwise].", minimum=0.0, type=float
    )
    clip: float = setting(CLIP, "Gradient entries are clipped to [-clip, clip].", minimum=0.0)
    alpha: float = setting(
        ALPHA, "RMSProp's decay of the squared gradients.", minimum=0.0, below=1.0
    )
    lr_schedule: str = setting(
        "constant",
        "Learning rate over the run: eta, or a cosine or linear decay to --min-lr x eta at "
        "--decay-updates (after any --warmup).",
        choices=SCHEDULES,
    )
    warmup: int = setting(0, "Updates of linear warm-up from eta/N to eta.", minimum=0)
    min_lr: float = setting(0.1, "cosine/linear: the final rate as a share of eta.", minimum=0.0)
    decay_updates: int = setting(
        0,
        "cosine/linear: the update the decay ends at (0: the run's --updates, or with "
        "--minutes alone the update the minutes are expected to reach, at the --warmup's speed).",
        minimum=0,
    )
    patience: int = setting(
        0, "Stop after N validations without a lower validation loss (0: never).", minimum=0
    )
    seq_length: int = setting(25, "Characters per chunk (tau).", minimum=1)
    batch: int = setting(1, "Streams per update (the loss is their mean).", minimum=1)
    chunks: str = setting("streams", "Chunk schedule: B streams, or random chunks.", choices=CHUNKS)
    sig: float = setting(0.01, "Initial weight scale (rnn).", minimum=0.0)
    seed: int = setting(1, "Seed of weights, samples, dropout and random chunks.", minimum=0)
    val_fraction: float = setting(
        0.05, "Held-out share of the corpus (0: train on all of it).", minimum=0.0, below=1.0
    )
    eval_every: int = setting(10_000, "Validation every N updates (and at the end).", minimum=1)
    print_every: int = setting(100, "Progress refresh (and log line) interval.", minimum=1)
    sample_every: int = setting(10_000, "A sample before update 1 and every N updates.", minimum=1)
    sample_length: int = setting(200, "Characters per training sample.", minimum=1)
    passage_length: int = setting(1000, "Characters of the best-model passage.", minimum=0)
    max_length: int = setting(
        200, "Documents: cap of a sampled document; given, also of training documents.", minimum=1
    )
    sample_docs: int = setting(3, "Documents: documents per training sample.", minimum=1)
    passage_docs: int = setting(10, "Documents: documents of the final passage.", minimum=1)
    engine: str = setting(
        "auto", "Engine: auto picks the fastest that runs the model.", choices=ENGINE_CHOICES
    )
    device: str = setting("auto", "--engine torch: auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps.")
    dtype: str = setting(
        "float64",
        "Parameter type (float32: fast and torch engines; bfloat16: torch's autocast, float32 "
        "weights).",
        choices=DTYPES,
    )
    dropout_rng: str = setting(
        "numpy",
        "Dropout masks: numpy's generator (every engine alike) or the torch device's (faster "
        "on a GPU, other masks).",
        choices=DROPOUT_RNGS,
    )
    checkpoint_every: int = setting(
        0, "Checkpoint every N updates (0: only timed ones).", minimum=0
    )
    checkpoint_seconds: float = setting(
        60.0, "And at the first block end N s after the last (0: off).", minimum=0.0
    )

    def __post_init__(self):
        if self.eta is None:  # the optimiser's default learning rate
            self.eta = default_eta(self.optimizer)

    def check(self) -> None:
        """One-line errors for values out of range, naming the option."""
        if self.dropout_rng == "device" and self.engine != "torch":
            raise CharwiseError("--dropout-rng device needs --engine torch")
        if self.min_lr > 1.0:
            raise CharwiseError(f"--min-lr must be at most 1 (got {self.min_lr})")
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            option = f"--{f.name.replace('_', '-')}"
            if meta["choices"] is not None:
                if value not in meta["choices"]:
                    raise CharwiseError(f"{option} must be one of {', '.join(meta['choices'])}")
                continue
            if isinstance(value, float) and not math.isfinite(value):
                raise CharwiseError(f"{option} must be a finite number (got {value})")
            positive = f.name in ("eta", "clip", "sig") or meta["minimum"] == 1
            if positive and not value > 0:
                raise CharwiseError(f"{option} must be positive (got {value})")
            if meta["minimum"] is not None and value < meta["minimum"]:
                raise CharwiseError(f"{option} must be at least {meta['minimum']} (got {value})")
            if meta["below"] is not None and not value < meta["below"]:
                raise CharwiseError(f"{option} must be below {meta['below']} (got {value})")


# Recipes: each family's sensible defaults for a model worth its training time, beyond the
# exercise's (SPEC part one's defaults, which a plain --model keeps so that every command keeps
# its meaning). Tuned on tiny Shakespeare for a 10-minute run on a 2-core machine (README,
# "Models, optimisers and batches"); --recipe NAME fills every setting the user left at its
# default.
_RECIPE = {
    "layers": 2,
    "m": 256,
    "dropout": 0.1,
    "optimizer": "adam",
    "eta": 0.005,
    "lr_schedule": "cosine",
    "warmup": 200,
    "seq_length": 100,
    "batch": 32,
    "dtype": "float32",
    "eval_every": 500,
}
RECIPES = {"gru": {"model": "gru", **_RECIPE}, "lstm": {"model": "lstm", **_RECIPE, "eta": 0.03}}


# Settings a resume may change (recorded): they alter what happens next, never the saved state.
MAY_CHANGE = (
    "eta",
    "print_every",
    "sample_every",
    "sample_length",
    "passage_length",
    "max_length",
    "sample_docs",
    "passage_docs",
    "checkpoint_every",
    "checkpoint_seconds",
    "engine",
    "device",
    "eval_every",
    "patience",
)


def config_from(saved, where) -> TrainConfig:
    """The TrainConfig recorded in a checkpoint (settings added since then keep defaults)."""
    known = {f.name for f in fields(TrainConfig)}
    if not isinstance(saved, dict) or not saved.keys() <= known:
        extra = sorted(saved.keys() - known) if isinstance(saved, dict) else saved
        raise CharwiseError(f"{where}: unknown settings {extra} in its checkpoint; update charwise")
    config = TrainConfig(**saved)
    wrong = [f.name for f in fields(config) if not same_kind(getattr(config, f.name), f)]
    if wrong:
        raise CharwiseError(f"{where}: settings {wrong} in its checkpoint have wrong types")
    config.check()
    return config
