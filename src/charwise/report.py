"""The run report (gradient check, overfit check, training run, best passage) and the loss
figures of run directories. The report is rendered from the run directory's files only."""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from charwise import safeio
from charwise.errors import CharwiseError
from charwise.figures import plot_compare, plot_overfit, plot_run  # noqa: F401 (compare: old home)
from charwise.rundir import read_eval, read_metrics  # noqa: F401  (read_metrics: old home)

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
    from charwise.engines import get_engine, pick
    from charwise.model import CharModel
    from charwise.optim import make_optimizer
    from charwise.schedule import Schedule
    from charwise.state import TrainState

    if cap < 1:
        raise CharwiseError(f"--overfit-cap must be at least 1 (got {cap})")
    n = min(OVERFIT_CHARS, len(corpus))
    tiny = Corpus(f"first {n} characters", corpus.vocab, np.ascontiguousarray(corpus.data[:n]))
    schedule = Schedule(len(tiny), config.seq_length)
    dtype = np.dtype(config.dtype)
    model = CharModel.init(
        corpus.vocab, config.model, config.m, config.layers, config.sig, config.seed, dtype
    )
    engine = get_engine(pick(config.engine, model.spec, config.optimizer, 1, 0.0, config.dtype))
    optimizer = make_optimizer(config.optimizer, config.eta, config.clip, config.alpha)
    state = TrainState.fresh(model.params, optimizer.slots)
    losses = np.empty(cap)
    reached = False
    while state.updates < cap and not reached:
        u0 = state.updates
        k = min(schedule.per_epoch, cap - u0)
        one = (a[:, None] for a in schedule.block(u0, k))  # one stream
        done = engine.run_block(state, optimizer, tiny.data, *one, losses[u0 : u0 + k])
        if done < k:
            raise CharwiseError(f"the overfit check diverged; lower --eta (now {config.eta})")
        reached = k == schedule.per_epoch and losses[u0 : u0 + k].mean() < OVERFIT_TARGET
    span = schedule.per_epoch * config.seq_length  # characters that served as targets
    rng = np.random.default_rng((config.seed, 2))  # (seed, 1) draws the training samples
    h0 = model.spec.zero_state()
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
    updates: int | None,
    out: str | Path,
    source: str,
    loader: dict | None = None,
    overfit_cap: int = OVERFIT_CAP,
    progress: bool = True,
    log: Callable[[str], None] = print,
    minutes: float | None = None,
) -> tuple[Path, Path]:
    """Run the four steps in order, store their results in OUT, then render the report.

    updates None: the protocol's length (default_updates), unless minutes bound the run."""
    from charwise.gradcheck import THRESHOLD, gradcheck_corpus, measure, worst
    from charwise.train import Trainer

    out = Path(out)
    t_start = time.perf_counter()
    from charwise.corpus import source_of

    # checks the settings before the long steps; records how to read the corpus again
    trainer = Trainer(corpus, config, out, source_of(source, loader or {}))
    trainer.lock.acquire()  # the report's directory is this process's (run() releases it)
    trainer.refuse_existing_run()
    if updates is None and minutes is None:
        updates = default_updates(trainer.schedule.per_epoch)

    log(f"1/4 gradient check ({config.model}, m = {GRAD_M}, h = {GRAD_H:g}, seed {config.seed})")
    t0 = time.perf_counter()
    rows = gradcheck_corpus(
        corpus, GRAD_M, GRAD_H, config.seq_length, config.sig, config.seed,
        config.model, config.layers,
    )  # fmt: skip
    grad_s = time.perf_counter() - t0
    by = measure(config.model, config.layers)
    log(f"    {'max relative error' if by == 'max_rel' else 'max error'} {worst(rows, by):.3e}")

    log(f"2/4 overfit check on the first {OVERFIT_CHARS} characters (cap {overfit_cap:,})")
    t0 = time.perf_counter()
    overfit = overfit_check(corpus, config, overfit_cap)
    overfit_s = time.perf_counter() - t0
    log(f"    {overfit['updates']:,} updates, mean loss {overfit['last_pass_mean_loss']:.3f}")

    data = {
        "format": FORMAT,
        "version": VERSION,
        "complete": False,  # until the training run has ended (then: report --resume DIR)
        "source": source,
        "corpus": {
            "name": corpus.name,
            "chars": len(corpus),
            "K": len(corpus.vocab),
            "per_epoch": trainer.schedule.per_epoch,
            "train_chars": len(trainer.train_corpus),
            "val_chars": len(trainer.val_corpus) if trainer.val_corpus is not None else 0,
            "sha256": corpus.fingerprint(),
            "loader": loader or {},  # the load_corpus() options (format, cleaning, ...)
        },
        "target": {"updates": updates, "minutes": minutes},
        "config": asdict(config),
        "gradcheck": {
            "m": GRAD_M,
            "h": GRAD_H,
            "seq_length": config.seq_length,
            "threshold": THRESHOLD,
            "measure": by,  # the error the verdict reads (gradcheck.measure)
            "rows": [asdict(r) for r in rows],
        },
        "overfit": overfit,
        "versions": versions(),
        "timings": {"gradcheck_s": grad_s, "overfit_s": overfit_s},
    }
    _write_data(out, data)
    return _train_and_render(trainer, data, progress, log, t_start)


def resume_report(out: str | Path, progress: bool = True, log=print) -> tuple[Path, Path]:
    """Finish a report whose training run was stopped: resume it to its target, render."""
    from charwise.train import Trainer

    out = Path(out)
    data = load_report_data(out, complete=False)
    trainer = Trainer.resume(out, progress=progress)
    return _train_and_render(trainer, data, progress, log, time.perf_counter())


def _train_and_render(trainer, data: dict, progress, log, t_start: float) -> tuple[Path, Path]:
    """Step 3 (the training run, from wherever it stands) and 4, then report.json and render."""
    out, target = trainer.out, data["target"]
    updates, minutes = target["updates"], target["minutes"]
    length = f"{updates:,} updates" if updates is not None else f"{minutes:g} minutes"
    log(f"3/4 training: {length}, {trainer.schedule.per_epoch:,} per epoch -> {out}")
    trainer.run(updates, progress=progress, minutes=minutes)
    log("4/4 best-model passage written to best_passage.txt")
    timings = data["timings"]
    data |= {"complete": True, "updates": trainer.state.updates}
    timings["train_s"] = trainer.elapsed
    timings["wall_s"] = timings.get("wall_s", 0.0) + time.perf_counter() - t_start
    _write_data(out, data)
    return build_report(out)


def _write_data(out: Path, data: dict) -> None:
    safeio.write_text(out / REPORT_FILE, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


# ---- rendering --------------------------------------------------------------------------
def load_report_data(run_dir: str | Path, complete: bool = True) -> dict:
    """report.json of a report directory, with a one-line error when it is missing or foreign,
    or when it is not (complete) or is (not complete) a finished report."""
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
    if data.get("complete", True) != complete:
        if complete:
            raise CharwiseError(
                f"the report in {run_dir} was stopped during its training run; finish it with "
                f"charwise report --resume {run_dir}"
            )
        raise CharwiseError(f"the report in {run_dir} is finished; rebuild it with --from")
    return data


def build_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write RUN_DIR/report.md and report.html; a pure function of RUN_DIR's files."""
    from charwise import checkpoint, render, rundir
    from charwise.rundir import read_samples

    run = Path(run_dir)
    rundir.refuse_links(run)
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
        data["config"]["seq_length"],
    )
    fit = data["overfit"]
    plot_overfit(fit["losses"], fit["per_epoch"], fit["target"], run / "overfit.png", fit["chars"])
    evals = read_eval(run)
    val_passage = None
    if evals is not None and (run / rundir.VAL_PASSAGE).is_file():
        val_passage = (run / rundir.VAL_PASSAGE).read_text(encoding="utf-8")
    doc = render.document(data, samples, passage, best, final, MIN_EPOCHS, evals, val_passage)
    figures = {name: (run / name).read_bytes() for name in ("loss.png", "overfit.png")}
    md, page = run / "report.md", run / "report.html"
    safeio.write_text(md, render.markdown(doc))
    safeio.write_text(page, render.html(doc, figures))
    return md, page
