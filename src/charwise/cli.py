"""The `charwise` command: a thin shell over the library."""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import sys
import time
from dataclasses import fields
from pathlib import Path

import click

from charwise.config import ENGINE_CHOICES, RECIPES, TrainConfig
from charwise.corpus import BUILTIN, PRESETS, LoadOptions, load_corpus, source_of
from charwise.errors import CharwiseError, exit_interrupted
from charwise.models import FAMILIES, ModelSpec
from charwise.report import OVERFIT_CAP
from charwise.settings import kind

corpus_argument = click.argument("corpus", default=BUILTIN, required=False)


def options_of(cls, only: tuple[str, ...] | None = None) -> list:
    """A click option for every CLI field of a settings dataclass (settings.setting)."""
    options = []
    for f in fields(cls):
        meta = f.metadata
        if not meta.get("cli", True) or (only is not None and f.name not in only):
            continue
        name = f"--{f.name.replace('_', '-')}"
        if isinstance(f.default, bool):
            options.append(click.option(name, f.name, is_flag=True, help=meta["help"]))
            continue
        values = click.Choice(meta["choices"]) if meta["choices"] else kind(f)
        default = None if meta.get("shown") else f.default
        shown = meta.get("shown") or default is not None
        options.append(
            click.option(
                name, f.name, type=values, default=default, show_default=shown, help=meta["help"]
            )  # fmt: skip
        )
    return options


encoding_options = options_of(LoadOptions, ("encoding", "errors"))
corpus_options = options_of(LoadOptions) + [
    click.option("--lines", is_flag=True, help="One document per line (same as --format lines)."),
    click.option(
        "--preset",
        type=click.Choice(sorted(PRESETS)),
        default=None,
        help="tweets: JSON archive, --drop-retweets --html-unescape --ascii, seq length 10, "
        "documents and samples of at most 140 characters (options given explicitly win).",
    ),
]
GRADCHECK_QUIET = 20_000  # gradcheck says how much work it is above this many entries
# Training settings of a preset (its loader settings are corpus.PRESETS).
TRAIN_PRESETS = {"tweets": {"seq_length": 10, "max_length": 140}}


# the loader options of corpus_options
CORPUS_KEYS = {f.name for f in fields(LoadOptions) if f.metadata["cli"]} | {"lines", "preset"}


def load_from_options(spec: str, kw: dict):
    """Load the corpus from a command's loader options (popped from kw), applying --preset."""
    return load_corpus(spec, **loader_options(kw))


def given_options(ctx: click.Context) -> set[str]:
    """The parameters of a command that the user set (not left at their defaults)."""
    from click.core import ParameterSource

    return {k for k in ctx.params if ctx.get_parameter_source(k) != ParameterSource.DEFAULT}


def loader_options(kw: dict) -> dict:
    """load_corpus() keywords from a command's loader options (popped from kw), with --preset
    and, for the training commands, --recipe (popped too).

    A recipe and a preset fill every setting the user left at its default, including kw's
    training ones; where both set one, the preset's (made for its corpus) wins.
    """
    given = given_options(click.get_current_context())
    opts = {key: kw.pop(key) for key in sorted(CORPUS_KEYS - {"preset"})}
    preset, recipe = kw.pop("preset"), kw.pop("recipe", None)
    if recipe is not None and "model" in given and kw["model"] != recipe:
        msg = f"--recipe {recipe} is for --model {recipe}; drop --model {kw['model']}"
        raise CharwiseError(msg)
    settings = RECIPES.get(recipe, {}) | PRESETS.get(preset, {}) | TRAIN_PRESETS.get(preset, {})
    for key, value in settings.items():
        if key not in given:
            (opts if key in opts else kw)[key] = value
    if "max_length" in given or "max_length" in settings:  # the documents' cap, when chosen
        opts["max_doc_length"] = kw["max_length"]
    if opts.pop("lines"):
        opts["format"] = "lines"
    end_char = opts.pop("end_char")
    if end_char is not None:
        if end_char.upper().startswith("U+") and len(end_char) > 2:
            try:
                end_char = chr(int(end_char[2:], 16))
            except (ValueError, OverflowError):
                msg = f"bad --end-char {end_char!r}; give one character or U+XXXX"
                raise CharwiseError(msg) from None
        opts["end_char"] = end_char
    return opts


# The options of a training run, shared by `train` and `report`.
train_options = [
    click.option("--updates", default=100_000, show_default=True, help="Total updates."),
    click.option(
        "--minutes",
        default=None,
        type=float,
        help="Stop (at a block end) after this many minutes of training; without --updates, "
        "train until then.",
    ),
    click.option("--out", default=None, help="Run directory [default: runs/<corpus>-<time>]."),
    *options_of(TrainConfig),
    click.option("--no-progress", is_flag=True, help="Plain log lines instead of a progress bar."),
    click.option(
        "--recipe",
        type=click.Choice(sorted(RECIPES)),
        default=None,
        help="The family's sensible defaults instead of the exercise's: "
        + "; ".join(
            f"{name}: " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in recipe.items())
            for name, recipe in sorted(RECIPES.items())
        )
        + " (options given explicitly, then a --preset's, win).",
    ),
]


def with_options(options):
    def decorate(func):
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def run_dir(out: str | None, corpus) -> Path:
    """--out, or a new folder runs/<corpus>-<time> (-2, -3, ... when two runs start in the
    same second: the folder is created here, so no two processes pick the same one)."""
    if out is not None:
        return Path(out)
    base = Path("runs") / f"{Path(corpus.name).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise CharwiseError(f"cannot create a new run folder next to {base}; pass --out")


@contextlib.contextmanager
def new_run_dir(out: str | None, corpus):
    """run_dir(out, corpus); a folder it created is removed again if the block fails."""
    path = run_dir(out, corpus)
    try:
        yield path
    except BaseException:
        if out is None:
            with contextlib.suppress(OSError):
                if [p.name for p in path.iterdir()] in ([], [".lock"]):
                    (path / ".lock").unlink(missing_ok=True)
                path.rmdir()  # only while nothing was written
        raise


def recommended_model(path: Path) -> Path:
    """A model file as given, or a run directory's recommended model: best-val.npz (lowest
    validation loss) when it exists, else best.npz (lowest smooth loss)."""
    from charwise import rundir

    if path.is_dir():
        for name in (rundir.BEST_VAL, rundir.BEST):
            if (path / name).is_file():
                return path / name
        raise CharwiseError(f"{path} holds no model (best-val.npz or best.npz); is it a run?")
    return path


def require_positive(**values) -> None:
    """One-line error naming the options that must be positive but are not."""
    bad = [f"--{name.replace('_', '-')}" for name, v in values.items() if v is not None and v <= 0]
    if bad:
        raise CharwiseError(f"{', '.join(bad)} must be positive")


class Group(click.Group):
    """Prints CharwiseError as one line on stderr and exits 1, without a traceback; Ctrl-C
    outside training (start-up, a second Ctrl-C) exits 130 with a line saying what is kept."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CharwiseError as exc:
            click.echo(f"charwise: error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo(f"\ncharwise: interrupted{resume_hint(ctx)}", err=True)
            exit_interrupted(130)
        except OSError as exc:  # a file charwise was asked to read or write, outside a run
            where = f" {exc.filename}" if exc.filename else ""
            click.echo(f"charwise: error: cannot use{where}: {exc.strerror or exc}", err=True)
            sys.exit(1)


def remember_run(ctx: click.Context, folder: Path, command: str) -> None:
    """The run a Ctrl-C outside training would leave, and the command that continues it."""
    ctx.meta.update({"charwise.run": folder, "charwise.resume": f"charwise {command} --resume"})


def resume_hint(ctx: click.Context) -> str:
    """What a Ctrl-C left: the command that continues the run, if it saved a checkpoint."""
    from charwise.rundir import CHECKPOINT

    run, command = ctx.meta.get("charwise.run"), ctx.meta.get("charwise.resume")
    if run is not None and (Path(run) / CHECKPOINT).is_file():
        return f"; the last checkpoint is kept. Continue with: {command} {run}"
    return " before anything was saved"


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="charwise")
def main():
    """Train character-level RNNs on any text and write new text one character at a time."""


@main.command()
@corpus_argument
@with_options(corpus_options)
@click.option("--seq-length", default=25, show_default=True, help="Characters per chunk.")
@click.option(
    "--val-fraction", default=TrainConfig.val_fraction, show_default=True, help="Held-out share."
)
@click.option(
    "--max-length", default=None, type=int, help="Documents: cut each at this many characters."
)
def info(corpus, seq_length, val_fraction, max_length, **options):
    """Characters, documents, vocabulary size K before and after cleaning, and updates per epoch."""
    from charwise.schedule import Schedule

    require_positive(seq_length=seq_length, max_length=max_length)
    TrainConfig(val_fraction=val_fraction).check()
    kw = {"seq_length": seq_length, "max_length": max_length, **options}
    c = load_from_options(corpus, kw)
    click.echo(f"corpus      {c.name}")
    click.echo(f"characters  {len(c):,}")
    if c.documents:
        click.echo(f"documents   {len(c.starts):,} (each followed by end char {c.vocab.end!r})")
    click.echo(f"K           {len(c.vocab)}")
    if getattr(c.data, "filename", None):
        click.echo(f"mapped      {c.data.filename} ({c.data.nbytes:,} bytes)")
    if c.report is not None:
        click.echo("cleaning (K counts text characters, without the end char):")
        click.echo(c.report.format())
    click.echo(f"vocabulary  {''.join(c.vocab.chars)!r}")
    per_epoch = Schedule.for_corpus(c, kw["seq_length"]).per_epoch
    click.echo(f"updates per epoch at seq length {kw['seq_length']}: {per_epoch:,}")
    try:
        train, held = c.split(val_fraction)
    except CharwiseError as exc:  # info describes the corpus; training would refuse it
        click.echo(f"held out: {exc}")
        return
    if held is not None:
        unit = f"{len(held.starts):,} documents, " if c.documents else ""
        per_epoch = Schedule.for_corpus(train, kw["seq_length"]).per_epoch
        click.echo(
            f"held out with --val-fraction {val_fraction:g}: {unit}{len(held):,} characters; "
            f"the training part ({len(train):,} characters) has {per_epoch:,} updates per epoch"
        )


@main.command()
@corpus_argument
@with_options(corpus_options)
@click.option("--m", default=5, show_default=True, help="Hidden units of the checked network.")
@click.option("--h", "step", default=1e-4, show_default=True, help="Finite-difference step.")
@click.option("--seq-length", default=25, show_default=True, help="Characters checked.")
@click.option("--sig", default=0.01, show_default=True, help="Initial weight scale.")
@click.option("--seed", default=1, show_default=True, help="Seed of the initial weights.")
@click.option("--threshold", default=1e-6, show_default=True, help="Largest passing rel. error.")
@click.option("--model", type=click.Choice(FAMILIES), default="rnn", show_default=True)
@click.option("--layers", default=1, show_default=True, help="Stacked layers.")
@click.option("--batch", default=1, show_default=True, help="Streams (the loss is their mean).")
def gradcheck(corpus, m, step, seq_length, sig, seed, threshold, model, layers, batch, **options):
    """Compare analytic and centered-difference gradients on the first characters of CORPUS."""
    from charwise.gradcheck import format_table, gradcheck_corpus, measure, worst

    require_positive(m=m, h=step, seq_length=seq_length, sig=sig, layers=layers, batch=batch)
    c = load_from_options(corpus, options)
    spec = ModelSpec(model, K=len(c.vocab), m=m, layers=layers)
    entries = sum(math.prod(shape) for shape in spec.shapes().values())
    bar = None
    if entries > GRADCHECK_QUIET:  # minutes of work: say so, and show progress on a terminal
        click.echo(f"checking {entries:,} entries, two forward passes each", err=True)
        if sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=entries, unit="entry", dynamic_ncols=True, leave=False)
    progress = bar.update if bar is not None else None
    try:
        rows = gradcheck_corpus(c, m, step, seq_length, sig, seed, model, layers, batch, progress)
    finally:
        if bar is not None:
            bar.close()
    by = measure(model, layers)
    click.echo(format_table(rows, by))
    error = worst(rows, by)
    what = "max relative error" if by == "max_rel" else "max error against the largest entry"
    if error > threshold:
        click.echo(f"FAIL: {what} {error:.3e} > {threshold:g}", err=True)
        sys.exit(1)
    click.echo(f"PASS: {what} {error:.3e} <= {threshold:g}")


@main.command()
@corpus_argument
@with_options(corpus_options)
@with_options(train_options)
@click.option(
    "--resume",
    type=click.Path(path_type=Path, file_okay=False),
    help="Continue the run in this directory from its checkpoint.",
)
@click.pass_context
def train(ctx, corpus, updates, minutes, out, no_progress, resume, **settings):
    """Train on CORPUS (a file, folder, download or python-docs); the README's protocol.

    \b
    RUN_DIR/checkpoint.npz is rewritten (atomically) every --checkpoint-every updates, every
    --checkpoint-seconds, on Ctrl-C/SIGTERM (exit 130/143) and at the end. --resume RUN_DIR
    continues exactly where it left off, reading corpus and settings from the checkpoint;
    only --updates, --minutes, --eta, --engine, --print-every, --eval-every and the sample,
    passage, document-sample (--max-length) and checkpoint settings may differ (they are
    recorded). A non-finite loss or gradient, or a smooth loss above 2 x tau ln K (a uniform
    guess), stops the run (exit 1); the last good checkpoint is kept.
    """
    from charwise import rundir
    from charwise.train import Interrupted, Trainer

    given = given_options(ctx)
    require_positive(updates=updates, minutes=minutes)
    if resume is not None and "recipe" in given:
        raise CharwiseError("--resume reads the settings from the checkpoint; drop --recipe")
    loader = loader_options(settings)  # pops the loader options (applies --preset, --recipe)
    progress = not no_progress
    if resume is not None:
        if "out" in given:
            raise CharwiseError("--resume RUN_DIR is the run directory; drop --out")
        remember_run(ctx, resume, "train")
        options = sorted(f"--{k.replace('_', '-')}" for k in given & CORPUS_KEYS)
        if options and "corpus" not in given:
            raise CharwiseError(
                f"--resume reads the corpus as the run recorded it; drop {', '.join(options)}, "
                "or give the CORPUS with them"
            )
        c = load_corpus(corpus, **loader) if "corpus" in given else None
        changes = {k: v for k, v in settings.items() if k in given}
        trainer = Trainer.resume(resume, c, progress=progress, **changes)
        if c is not None:  # the same corpus (its SHA-256 matched), read from where it is now
            trainer.source = source_of(corpus, loader)
        c, out = trainer.corpus, resume
        if "minutes" not in given:
            minutes = trainer.minutes
        if "updates" not in given:
            updates = trainer.target or (None if minutes else updates)
        if updates is not None and trainer.state.updates > updates:
            raise CharwiseError(
                f"{out} already has {trainer.state.updates:,} updates; pass a larger --updates"
            )
    else:
        c = load_corpus(corpus, **loader)
        config = TrainConfig(**settings)
        with new_run_dir(out, c) as out:
            trainer = Trainer(c, config, out, source_of(corpus, loader), progress)
        remember_run(ctx, out, "train")
        if minutes is not None and "updates" not in given:
            updates = None  # train for the minutes given
    verb = f"resuming at update {trainer.state.updates:,}" if resume else "training"
    held = trainer.val_corpus
    click.echo(
        f"{verb} {trainer.spec.describe()} ({trainer.engine_name} engine"
        + (f" on {trainer.device}" if trainer.device else "")
        + f") on {c.name}: "
        f"{len(c):,} characters"
        + (f" in {len(c.starts):,} documents" if c.documents else "")
        + (f" ({len(held):,} held out)" if held is not None else "")
        + f", K = {len(c.vocab)}, {trainer.schedule.per_epoch:,} updates per epoch -> {out}"
    )
    try:
        state = trainer.run(updates, progress=progress, minutes=minutes)
    except Interrupted as exc:
        click.echo(f"\ncharwise: {exc}", err=True)
        exit_interrupted(128 + exc.signum)
    passage = (out / rundir.PASSAGE).read_text(encoding="utf-8")
    click.echo(
        f"\n--- best model (update {state.best_update}, smooth loss "
        f"{state.best_smooth:.3f}) ---\n{passage}\n"
    )
    rate = state.updates / max(trainer.elapsed, 1e-9)
    val = ""
    if trainer.best_val is not None:
        best = trainer.best_val
        val = (
            f", best validation {best['val_nats']:.4f} nats/char = "
            f"{best['val_nats'] / math.log(2):.4f} bits/char (update {best['update']:,})"
        )
    click.echo(
        f"done: {state.updates:,} updates, smooth loss {state.smooth_loss:.3f}{val}, "
        f"{rate:,.0f} updates/s; artefacts in {out}"
    )


@main.command()
@corpus_argument
@with_options(encoding_options)
@click.option("--m", default=100, show_default=True, help="Hidden units.")
@click.option("--seq-length", default=25, show_default=True, help="Characters per chunk.")
@click.option("--repeats", default=5, show_default=True, help="Interleaved repetitions.")
@click.option(
    "--engine",
    type=click.Choice(["torch"]),
    default=None,
    help="Also the charwise torch engine's rows (float64, float32) on --device.",
)
@click.option("--device", default="auto", show_default=True, help="--engine torch: its device.")
@click.option("--model", type=click.Choice(FAMILIES), default="rnn", show_default=True)
@click.option("--layers", default=1, show_default=True, help="Stacked layers.")
@click.option("--batch", default=1, show_default=True, help="Streams per update.")
@click.option("--optimizer", type=click.Choice(("adagrad", "rmsprop", "adam")), default="adagrad")
@click.option(
    "--dtype",
    type=click.Choice(["float64", "float32"]),
    default="float32",
    show_default=True,
    help="The torch rows' type (beyond the exercise).",
)
def bench(corpus, encoding, errors, m, seq_length, repeats, engine, device, **model):
    """Training and sampling speed of every engine side by side: the exercise against a
    classic loop; with --model, --layers, --batch or --optimizer beyond it, every engine that
    runs that model (reference, fast, torch with one thread and with all), training, sampling
    and validation."""
    from charwise import bench as benchmark

    if min(repeats, m, seq_length, model["layers"], model["batch"]) < 1:
        raise CharwiseError("--repeats, --m, --seq-length, --layers and --batch must be positive")
    c = load_corpus(corpus, encoding, errors)
    exercise = (model["model"], model["layers"], model["batch"], model["optimizer"])
    if exercise != ("rnn", 1, 1, "adagrad"):
        spec = ModelSpec(model["model"], len(c.vocab), m, model["layers"])
        args = (spec, model["optimizer"], model["batch"], seq_length)
        rows, notes = benchmark.run_model(c, *args, model["dtype"], repeats)
        click.echo(benchmark.model_table(c, *args, rows, notes))
        return
    rows, notes = benchmark.run(c, m, seq_length, repeats, device=device if engine else None)
    click.echo(benchmark.table(c, rows, notes, m, seq_length))


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path), metavar="[MODEL]", required=False)
@click.option("--latest", is_flag=True, help="The latest run in runs/ (its recommended model).")
@click.option(
    "--length",
    default=None,
    type=int,
    help="Characters per sample [default: 1000; document models: up to the max length trained "
    "with, the prime included].",
)
@click.option("--count", default=1, show_default=True, help="Samples (documents) to print.")
@click.option("--prime", default=None, help="Text fed through the network first.")
@click.option("--temperature", default=1.0, show_default=True, help="0 = greedy, <1 = safer.")
@click.option("--top-p", default=1.0, show_default=True, help="Nucleus sampling mass (0, 1].")
@click.option("--seed", default=None, type=int, help="Seed; the same seed gives the same text.")
@click.option("--engine", type=click.Choice(ENGINE_CHOICES), default="auto", show_default=True)
@click.option("--device", default="auto", show_default=True, help="--engine torch: its device.")
def sample(checkpoint, latest, length, count, prime, temperature, top_p, seed, engine, device):
    """Generate text from a model (.npz), or from a run directory's recommended model
    (best-val.npz, else best.npz); document models stop at the end character."""
    import numpy as np

    from charwise import rundir
    from charwise.generate import sample_length
    from charwise.model import DOC_SEPARATOR, CharModel

    require_positive(length=length, count=count)
    if (checkpoint is None) == (not latest):
        raise CharwiseError("give a MODEL (a .npz or a run directory) or --latest")
    checkpoint = rundir.latest(Path("runs")) if latest else checkpoint
    model, _ = CharModel.load(recommended_model(checkpoint))
    model.engine(engine, device)  # refuses what the engine cannot run, places the torch one
    rng = np.random.default_rng(seed)
    kw = dict(temperature=temperature, top_p=top_p, engine=engine, rng=rng)
    length = sample_length(model, length, prime)
    if model.vocab.end is not None and prime is None:
        texts = model.sample_documents(count, length, **kw)
    else:
        indices = [model.sample_indices(length, prime, **kw) for _ in range(count)]
        end = model.vocab.end or ""
        texts = [(prime or "") + model.vocab.decode(i).removesuffix(end) for i in indices]
    click.echo(DOC_SEPARATOR.join(texts))


@main.command("eval")
@click.argument("model_path", type=click.Path(path_type=Path), metavar="MODEL")
@click.argument("corpus", required=False)
@with_options(corpus_options)
@click.option("--engine", type=click.Choice(ENGINE_CHOICES), default="auto", show_default=True)
@click.option("--device", default="auto", show_default=True, help="--engine torch: its device.")
@click.pass_context
def evaluate(ctx, model_path, corpus, engine, device, **options):
    """Nats and bits per character of MODEL (a .npz, or a run directory's recommended model) on
    CORPUS read once from a zero state (each document from its own), or without CORPUS on the
    held-out part of the corpus the model was trained on."""
    from charwise.evaluate import score

    path = recommended_model(model_path)
    given = given_options(ctx) & CORPUS_KEYS
    if corpus is None and given:
        raise CharwiseError(f"corpus options need a CORPUS; drop {', '.join(sorted(given))}")
    text = load_from_options(corpus, options) if corpus is not None else None
    result = score(path, text, engine, device)
    click.echo(
        f"{path} on {result['corpus']}: {result['chars']:,} characters scored, "
        f"{result['nats']:.4f} nats/char = {result['bits']:.4f} bits/char"
    )


@main.command()
@corpus_argument
@with_options(corpus_options)
@with_options(train_options)
@click.option(
    "--overfit-cap",
    default=OVERFIT_CAP,
    show_default=True,
    help="Most updates of the overfit check.",
)
@click.option(
    "--from",
    "from_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Rebuild the report of this report directory without training.",
)
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Finish the report in this directory, whose training run was stopped.",
)
@click.pass_context
def report(
    ctx, corpus, updates, minutes, out, no_progress, overfit_cap, from_dir, resume_dir, **kw
):
    """Gradient check, overfit check, training run and best passage of CORPUS, as a report.

    Writes OUT/report.md and a self-contained OUT/report.html. Without --updates the run
    has 100,000 updates and at least 2 epochs.
    """
    from charwise.report import build_report, make_report, resume_report
    from charwise.train import Interrupted

    for flag, folder in (("--from", from_dir), ("--resume", resume_dir)):
        others = given_options(ctx) - {"from_dir", "resume_dir", "no_progress"}
        given = sorted(f"--{name.replace('_', '-')}" for name in others)
        if folder is not None and given:
            raise CharwiseError(f"{flag} reads the report's own settings; drop {', '.join(given)}")
    if from_dir is not None and resume_dir is not None:
        raise CharwiseError("give --from or --resume, not both")
    if from_dir is not None:
        md, page = build_report(from_dir)
    elif resume_dir is not None:
        remember_run(ctx, resume_dir, "report")
        try:
            md, page = resume_report(resume_dir, progress=not no_progress, log=click.echo)
        except Interrupted as exc:
            report_stopped(exc, resume_dir)
    else:
        loader = loader_options(kw)  # pops the loader options (applies --preset, --recipe)
        c = load_corpus(corpus, **loader)
        config = TrainConfig(**kw)
        if "updates" not in given_options(ctx):
            updates = None  # the protocol's length (report.default_updates), or --minutes
        try:
            with new_run_dir(out, c) as folder:
                ctx.meta.update(
                    {"charwise.run": folder, "charwise.resume": "charwise report --resume"}
                )
                md, page = make_report(
                    c,
                    config,
                    updates,
                    folder,
                    corpus,
                    loader,
                    overfit_cap,
                    progress=not no_progress,
                    log=click.echo,
                    minutes=minutes,
                )
        except Interrupted as exc:
            report_stopped(exc, folder)
    click.echo(f"report: {md}\n        {page}")


def report_stopped(exc, folder: Path) -> None:
    """A report whose training run was stopped: the hint that finishes it, exit 128 + signal."""
    name = signal.Signals(exc.signum).name
    click.echo(
        f"\ncharwise: stopped by {name}; checkpoint saved. Finish the report with: "
        f"charwise report --resume {folder}",
        err=True,
    )
    exit_interrupted(128 + exc.signum)


@main.command()
@click.argument("sweep_file", required=False, type=click.Path(path_type=Path), metavar="[SWEEP]")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Sweep folder.")
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Continue the sweep in this folder (finished trials are not run again).",
)
@click.option(
    "--address",
    default=None,
    help="Join a running Ray cluster (ray://HOST:PORT or auto) instead of starting Ray here.",
)
def sweep(sweep_file, out, resume_dir, address):
    """Run the trials of SWEEP (a TOML file) on Ray Tune into --out: each an ordinary run in
    OUT/trials/, ASHA stopping the poor ones early; results.csv, sweep.md and sweep.html."""
    from charwise import sweep as sweeps

    if resume_dir is not None:
        if sweep_file is not None or out is not None:
            raise CharwiseError("--resume DIR reads the sweep from DIR; drop SWEEP and --out")
        folder = resume_dir
        plan = sweeps.read_sweep(folder / "sweep.toml")
    else:
        if sweep_file is None or out is None:
            raise CharwiseError("give a SWEEP file and --out DIR (or --resume DIR)")
        plan = sweeps.read_sweep(sweep_file)
        if (out / "sweep.toml").exists():
            raise CharwiseError(f"{out} already holds a sweep; continue it with --resume {out}")
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sweep_file, out / "sweep.toml")
        folder = out
    rows = sweeps.run_sweep(plan, folder, address=address, resume=resume_dir is not None)
    unfinished = [r for r in rows if r["status"] not in ("finished", "stopped early")]
    paths = sweeps.write_results(rows, plan, folder)
    click.echo("\n".join(str(p) for p in paths))
    if unfinished:
        click.echo(
            f"charwise: {len(unfinished)} trial(s) did not finish; continue with: "
            f"charwise sweep --resume {folder}",
            err=True,
        )
        sys.exit(130)


@main.command()
@click.argument("runs_dir", default="runs", type=click.Path(path_type=Path), metavar="[RUNS_DIR]")
@click.option("--port", default=0, show_default="a free port", help="Port to listen on.")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; anything but loopback makes the dashboard reachable by others.",
)
@click.option("--no-browser", is_flag=True, help="Do not open the page in a browser.")
def serve(runs_dir, port, host, no_browser):
    """The web dashboard of the runs in RUNS_DIR: follow training live, compare runs, start,
    stop and resume them, and sample with each character coloured by its surprisal."""
    from charwise.web.server import serve as serve_dashboard

    if not 0 <= port <= 65535:
        raise CharwiseError("--port must be between 0 and 65535")
    runs_dir.mkdir(parents=True, exist_ok=True)
    serve_dashboard(runs_dir, host, port, browser=not no_browser)


@main.command()
@click.argument("folder", default="runs", type=click.Path(path_type=Path))
def runs(folder):
    """The run directories in FOLDER: model, updates, status, best validation, training time."""
    from charwise import rundir

    if not folder.is_dir():
        raise CharwiseError(f"{folder} is not a folder; give the folder that holds your runs")
    rows = [r for p in sorted(folder.iterdir()) if (r := rundir.describe(p)) is not None]
    if not rows:
        click.echo(f"no runs in {folder}")
        return
    click.echo(
        f"{'run':34} {'model':14} {'opt':8} {'updates':>9} {'target':>9} {'val b/c':>8} "
        f"{'status':9} {'train':>8}"
    )
    for r in sorted(rows, key=lambda r: r.get("modified", 0)):
        if r["status"] == "unreadable":
            click.echo(f"{r['run'][:34]:34} (unreadable checkpoint)")
            continue
        target = f"{r['target']:,}" if isinstance(r["target"], int) else r["target"]
        val = "-" if math.isnan(r["val_bits"]) else f"{r['val_bits']:.3f}"
        click.echo(
            f"{r['run'][:34]:34} {r['model'][:14]:14} {r['optimizer'][:8]:8} "
            f"{r['updates']:>9,} {target:>9} {val:>8} {r['status']:9} {r['train_s']:>7.0f}s"
        )


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Figure file to write (.png, .pdf, .svg, ...).",
)
def plot(run_dirs, out):
    """Overlay the smooth-loss curves of RUN_DIRs, labelled by the settings that differ."""
    from charwise.figures import plot_compare

    for label in plot_compare(run_dirs, out):
        click.echo(f"  {label}")
    click.echo(f"wrote {out}")
