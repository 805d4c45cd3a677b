"""The run report (gradient check, overfit check, training run, best passage) and the loss
figures of run directories. The report is rendered from the run directory's files only."""

from __future__ import annotations

import io
import json
import math
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from charwise.errors import CharwiseError
from charwise.train import MAY_CHANGE

REPORT_FILE = "report.json"  # what the report needs besides the run's own artefacts
FORMAT = "charwise-report"  # marks report.json files written by charwise
VERSION = 1  # bump when report.json changes shape
PROTOCOL_UPDATES = 100_000  # default length of a report's training run (SPEC.md) ...
MIN_EPOCHS = 2  # ... extended to at least this many epochs when --updates is not given
GRAD_M = 5  # hidden units of the gradient-checked network (SPEC.md)
GRAD_H = 1e-4  # centered-difference step of the gradient check (SPEC.md)
OVERFIT_CHARS = 100  # the overfit check trains on the first 100 characters only ...
OVERFIT_TARGET = 1.0  # ... until the mean chunk loss over one pass is below this ...
OVERFIT_CAP = 10_000  # ... or this many updates are done (python-docs needs ~4,500)
# Settings with no effect on the loss curve: those a resume may change, but eta and engine.
UNPLOTTED = tuple(name for name in MAY_CHANGE if name not in ("eta", "engine"))


# ---- figures ----------------------------------------------------------------------------
def read_metrics(run_dir: str | Path) -> dict[str, np.ndarray]:
    """Columns of RUN_DIR/metrics.csv: update, epoch, loss, smooth_loss."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise CharwiseError(f"{run_dir} has no metrics.csv; give a run directory of charwise train")
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]  # a run being written may end in a partial line
    with warnings.catch_warnings():  # a run stopped at update 0 has a header and no rows
        warnings.filterwarnings("ignore", "loadtxt: input contained no data")
        try:
            rows = io.StringIO(complete.decode())
            table = np.loadtxt(rows, delimiter=",", skiprows=1, ndmin=2).reshape(-1, 4)
        except (ValueError, UnicodeDecodeError):
            raise CharwiseError(f"{path} is not a charwise metrics file") from None
    return {name: table[:, i] for i, name in enumerate(["update", "epoch", "loss", "smooth_loss"])}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(
    run_dir: str | Path, out: str | Path, per_epoch: int | None = None, title: str | None = None
) -> None:
    """Loss and smooth loss against update, with epoch boundaries marked."""
    plt = _pyplot()
    cols = read_metrics(run_dir)
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    ax.plot(cols["update"], cols["loss"], lw=0.4, alpha=0.35, color="tab:blue", label="loss")
    ax.plot(cols["update"], cols["smooth_loss"], lw=1.6, color="tab:red", label="smooth loss")
    if per_epoch and len(cols["update"]):
        for k, u in enumerate(np.arange(per_epoch, cols["update"][-1], per_epoch), start=2):
            ax.axvline(u, color="gray", ls=":", lw=0.8)
            ax.text(
                u,
                0.98,
                f" epoch {k}",
                transform=ax.get_xaxis_transform(),
                va="top",
                fontsize=8,
                color="gray",
            )
    ax.set_xlabel("update")
    ax.set_ylabel("loss per sequence (sum over characters)")
    ax.set_title(title or f"Training loss: {Path(run_dir).name}", loc="left")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", bbox_to_anchor=(1, 1), ncol=2, frameon=False)  # clear of data
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_overfit(losses: list[float], per_pass: int, target: float, out: str | Path) -> None:
    """The overfit check's loss per chunk and per pass (log scale), and its target."""
    plt = _pyplot()
    losses = np.asarray(losses)
    passes = len(losses) // per_pass
    mean = losses[: passes * per_pass].reshape(passes, per_pass).mean(axis=1)
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=120)
    updates = np.arange(1, len(losses) + 1)
    ax.semilogy(updates, losses, lw=0.4, alpha=0.35, color="tab:blue", label="loss per chunk")
    ends = per_pass * np.arange(1, passes + 1)
    ax.semilogy(ends, mean, lw=1.4, color="tab:blue", label="mean over a pass")
    ax.axhline(target, color="tab:red", ls="--", lw=1, label=f"target {target:g}")
    ax.set_xlabel("update")
    ax.set_ylabel("loss per sequence")
    ax.set_title(f"Overfit check: first {OVERFIT_CHARS} characters", loc="left")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", bbox_to_anchor=(1, 1), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_compare(run_dirs: list[str | Path], out: str | Path) -> list[str]:
    """Overlay the smooth-loss curves of several runs, each labelled by the settings that differ.

    Losses are divided by the sequence length when the runs' sequence lengths differ (SPEC.md).
    Returns the labels.
    """
    from charwise import checkpoint

    settings = []
    for run in run_dirs:
        _, meta = checkpoint.load(Path(run) / "final.npz")
        curve = {k: v for k, v in meta["config"].items() if k not in UNPLOTTED}
        settings.append({"corpus": meta["corpus"]["name"], **curve})
    keys = [k for k in settings[0] if len({json.dumps(s.get(k)) for s in settings}) > 1]
    labels = [
        ", ".join(f"{k}={s.get(k)}" for k in keys) or Path(r).name
        for r, s in zip(run_dirs, settings, strict=True)
    ]
    if len(set(labels)) < len(labels):  # same settings: the folder names tell the runs apart
        labels = [
            f"{Path(r).name}: {label}" if keys else label
            for r, label in zip(run_dirs, labels, strict=True)
        ]
    per_char = "seq_length" in keys
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    for run, s, label in zip(run_dirs, settings, labels, strict=True):
        cols = read_metrics(run)
        scale = s["seq_length"] if per_char else 1
        ax.plot(cols["update"], cols["smooth_loss"] / scale, lw=1.4, label=label)
    ax.set_xlabel("update")
    ax.set_ylabel("smooth loss per character" if per_char else "smooth loss per sequence")
    ax.set_title("Smooth loss" + (f" ({', '.join(keys)} varied)" if keys else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return labels


# ---- the steps --------------------------------------------------------------------------
def default_updates(per_epoch: int) -> int:
    """The protocol's run length: 100,000 updates and at least two epochs."""
    return max(PROTOCOL_UPDATES, MIN_EPOCHS * per_epoch)


def overfit_check(corpus, config, cap: int = OVERFIT_CAP) -> dict:
    """A fresh network trained on the first 100 characters until it has memorised them.

    The schedule of SPEC.md on 100 characters with tau = 25 is 3 chunks per pass (inputs
    start at 0, 25, 50; characters 2..76 are targets). Training stops after the first whole
    pass whose mean chunk loss is below OVERFIT_TARGET, or at `cap` updates. Then a sample
    of as many characters as were targets, from h = 0 and the first character, is set
    against the true text.
    """
    from charwise.corpus import Corpus
    from charwise.engines import get_engine
    from charwise.model import CharRNN
    from charwise.optim import CLIP, EPS, TrainState
    from charwise.train import Schedule

    if cap < 1:
        raise CharwiseError(f"--overfit-cap must be at least 1 (got {cap})")
    n = min(OVERFIT_CHARS, len(corpus))
    tiny = Corpus(f"first {n} characters", corpus.vocab, np.ascontiguousarray(corpus.data[:n]))
    schedule = Schedule(len(tiny), config.seq_length)
    engine = get_engine(config.engine)
    model = CharRNN.init(corpus.vocab, config.m, config.sig, config.seed, np.dtype(config.dtype))
    state = TrainState.fresh(model.params)
    losses = np.empty(cap)
    reached = False
    while state.updates < cap and not reached:
        u0 = state.updates
        k = min(schedule.per_epoch, cap - u0)
        starts, lengths, resets = schedule.block(u0, k)
        done = engine.train_block(
            state, tiny.data, starts, lengths, resets, config.eta, EPS, CLIP, losses[u0 : u0 + k]
        )
        if done < k:
            raise CharwiseError(f"the overfit check diverged; lower --eta (now {config.eta})")
        reached = k == schedule.per_epoch and losses[u0 : u0 + k].mean() < OVERFIT_TARGET
    span = schedule.per_epoch * config.seq_length  # characters that served as targets
    rng = np.random.default_rng((config.seed, 2))  # (seed, 1) draws the training samples
    h0 = np.zeros(config.m, dtype=state.h_prev.dtype)
    x0 = int(tiny.data[0])
    generated = corpus.vocab.decode(engine.sample(state.params, h0, x0, span, rng.random(span)))
    truth = tiny.head(span + 1)
    pairs = zip(generated, truth[1:], strict=True)
    match = next((i for i, (a, b) in enumerate(pairs) if a != b), span)
    last = losses[max(0, state.updates - schedule.per_epoch) : state.updates]
    return {
        "chars": n,
        "per_epoch": schedule.per_epoch,
        "target": OVERFIT_TARGET,
        "cap": cap,
        "updates": state.updates,
        "reached": bool(reached),
        "last_pass_mean_loss": float(last.mean()) if len(last) else math.nan,
        "losses": losses[: state.updates].tolist(),
        "truth": truth,
        "sample": truth[0] + generated,
        "matching_chars": match,  # leading generated characters equal to the text
    }


def versions() -> dict[str, str]:
    """Versions of python, numpy, numba and charwise (numba is not imported for this)."""
    from importlib.metadata import PackageNotFoundError, version

    import charwise

    try:
        numba = version("numba")
    except PackageNotFoundError:
        numba = "not installed"
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba,
        "charwise": charwise.__version__,
    }


def make_report(
    corpus,
    config,
    updates: int,
    out: str | Path,
    source: str,
    loader: dict | None = None,
    overfit_cap: int = OVERFIT_CAP,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[Path, Path]:
    """Run the four steps in order, store their results in OUT, then render the report."""
    from charwise.gradcheck import THRESHOLD, gradcheck_corpus
    from charwise.train import Trainer

    out = Path(out)
    t_start = time.perf_counter()
    trainer = Trainer(corpus, config, out)  # checks the settings before the long steps
    trainer.refuse_existing_run()
    out.mkdir(parents=True, exist_ok=True)

    log(f"1/4 gradient check (m = {GRAD_M}, h = {GRAD_H:g}, seed {config.seed})")
    t0 = time.perf_counter()
    rows = gradcheck_corpus(
        corpus, m=GRAD_M, h=GRAD_H, seq_length=config.seq_length, sig=config.sig, seed=config.seed
    )
    grad_s = time.perf_counter() - t0
    log(f"    max relative error {max(r.max_rel for r in rows):.3e}")

    log(f"2/4 overfit check on the first {OVERFIT_CHARS} characters (cap {overfit_cap:,})")
    t0 = time.perf_counter()
    overfit = overfit_check(corpus, config, overfit_cap)
    overfit_s = time.perf_counter() - t0
    log(f"    {overfit['updates']:,} updates, mean loss {overfit['last_pass_mean_loss']:.3f}")

    log(f"3/4 training: {updates:,} updates, {trainer.schedule.per_epoch:,} per epoch -> {out}")
    trainer.run(updates, progress=progress)
    log("4/4 best-model passage written to best_passage.txt")

    data = {
        "format": FORMAT,
        "version": VERSION,
        "source": source,
        "corpus": {
            "name": corpus.name,
            "chars": len(corpus),
            "K": len(corpus.vocab),
            "per_epoch": trainer.schedule.per_epoch,
            "sha256": corpus.fingerprint(),
            "loader": loader or {},  # the load_corpus() options (format, cleaning, ...)
        },
        "updates": updates,
        "config": asdict(config),
        "gradcheck": {
            "m": GRAD_M,
            "h": GRAD_H,
            "seq_length": config.seq_length,
            "threshold": THRESHOLD,
            "rows": [asdict(r) for r in rows],
        },
        "overfit": overfit,
        "versions": versions(),
        "timings": {
            "gradcheck_s": grad_s,
            "overfit_s": overfit_s,
            "train_s": trainer.elapsed,
            "wall_s": time.perf_counter() - t_start,
        },
    }
    (out / REPORT_FILE).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return build_report(out)


# ---- rendering --------------------------------------------------------------------------
def load_report_data(run_dir: str | Path) -> dict:
    """report.json of a report directory, with a one-line error when it is missing or foreign."""
    path = Path(run_dir) / REPORT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CharwiseError(
            f"{path} not found; --from needs a directory written by charwise report"
        ) from None
    except (OSError, ValueError) as exc:
        raise CharwiseError(f"cannot read {path} ({exc}); run charwise report again") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CharwiseError(f"{path} is not a charwise report file; run charwise report again")
    if data.get("version") != VERSION:
        raise CharwiseError(
            f"{path} has report version {data.get('version')}, this charwise reads {VERSION}"
        )
    return data


def build_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write RUN_DIR/report.md and report.html; a pure function of RUN_DIR's files."""
    from charwise import checkpoint, render
    from charwise.train import read_samples

    run = Path(run_dir)
    data = load_report_data(run)
    try:
        samples = read_samples(run / "samples.txt")
        passage = (run / "best_passage.txt").read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise CharwiseError(
            f"{run} lacks a readable run artefact ({exc}); rerun the report"
        ) from None
    best = checkpoint.load(run / "best.npz")[1]
    final = checkpoint.load(run / "final.npz")[1]
    plot_run(
        run,
        run / "loss.png",
        data["corpus"]["per_epoch"],
        f"Training loss: {data['corpus']['name']}",
    )
    fit = data["overfit"]
    plot_overfit(fit["losses"], fit["per_epoch"], fit["target"], run / "overfit.png")
    doc = render.document(data, samples, passage, best, final)
    figures = {name: (run / name).read_bytes() for name in ("loss.png", "overfit.png")}
    md, page = run / "report.md", run / "report.html"
    md.write_text(render.markdown(doc), encoding="utf-8")
    page.write_text(render.html(doc, figures), encoding="utf-8")
    return md, page
