"""Hyper-parameter sweeps on Ray Tune: a TOML file names the corpus, the fixed training
settings, the search space, the metric, the budget, the early-stopping scheduler and the
resources; every trial is an ordinary charwise run directory under DIR/trials/ that reports
each validation to Tune, with its charwise checkpoint as Tune's, so Tune can stop, pause,
move and resume trials exactly. Ray is an optional extra, imported only here."""

from __future__ import annotations

import math
import shutil
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from charwise.config import TrainConfig
from charwise.corpus import LoadOptions
from charwise.errors import CharwiseError

METRICS = {"val_bits_per_char": "val_bits", "val_nats_per_char": "val_nats"}  # lower is better
KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
TOP = ("corpus", "load", "metric", "samples", "scheduler", "concurrent", "seed")
TABLES = ("resources", "train", "space", "load")
BUDGET = ("updates", "minutes")
RAY_HINT = 'pip install -e ".[sweep]"'
TUNE_DIR = "tune"  # Tune's own state, under the sweep's folder
NAME = "sweep"  # the Tune experiment's name


@dataclass
class Sweep:
    """A sweep file, checked."""

    corpus: str
    load: dict  # load_corpus() options
    metric: str
    samples: int
    scheduler: str
    concurrent: int
    cpus: float
    gpus: float
    train: dict  # fixed TrainConfig settings
    updates: int | None
    minutes: float | None
    space: dict  # setting -> (kind, values)
    seed: int

    def search_space(self) -> dict:
        """The space in Tune's terms."""
        from ray import tune

        make = {
            "grid": tune.grid_search,
            "choice": tune.choice,
            "uniform": lambda v: tune.uniform(*v),
            "loguniform": lambda v: tune.loguniform(*v),
            "randint": lambda v: tune.randint(v[0], v[1] + 1),  # both ends included
        }
        return {name: make[kind](values) for name, (kind, values) in self.space.items()}


def read_sweep(path: str | Path) -> Sweep:
    """The sweep file at path, with a one-line error naming the key for anything wrong."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CharwiseError(f"sweep file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CharwiseError(f"{path} is not valid TOML ({exc})") from None
    return parse_sweep(raw, path)


def parse_sweep(raw: dict, where="the sweep file") -> Sweep:
    unknown = sorted(set(raw) - set(TOP) - set(TABLES))
    if unknown:
        raise CharwiseError(
            f"{where}: unknown key {unknown[0]!r}; the keys are {', '.join(TOP + TABLES)}"
        )
    for table in TABLES:
        if table in raw and not isinstance(raw[table], dict):
            raise CharwiseError(f"{where}: {table} must be a table ([{table}])")
    corpus = _get(raw, "corpus", str, where, None)
    if corpus is None:
        raise CharwiseError(
            f"{where}: corpus is missing; name a file, a folder or a built-in corpus"
        )
    metric = _get(raw, "metric", str, where, "val_bits_per_char")
    if metric not in METRICS:
        raise CharwiseError(f"{where}: metric must be one of {', '.join(METRICS)} (got {metric!r})")
    scheduler = _get(raw, "scheduler", str, where, "asha")
    if scheduler not in ("asha", "none"):
        raise CharwiseError(f"{where}: scheduler must be asha or none (got {scheduler!r})")
    samples = _get(raw, "samples", int, where, 1, minimum=1)
    concurrent = _get(raw, "concurrent", int, where, 1, minimum=1)
    seed = _get(raw, "seed", int, where, 0, minimum=0)
    resources = raw.get("resources", {})
    bad = sorted(set(resources) - {"cpus", "gpus"})
    if bad:
        raise CharwiseError(f"{where}: unknown key resources.{bad[0]}; the keys are cpus, gpus")
    cpus = _get(resources, "cpus", (int, float), where, 1, minimum=0, name="resources.cpus")
    gpus = _get(resources, "gpus", (int, float), where, 0, minimum=0, name="resources.gpus")
    if cpus <= 0:
        raise CharwiseError(f"{where}: resources.cpus must be positive (got {cpus})")
    load = dict(raw.get("load", {}))
    known_load = {f.name for f in fields(LoadOptions) if f.metadata["cli"]}
    bad = sorted(set(load) - known_load)
    if bad:
        raise CharwiseError(f"{where}: unknown key load.{bad[0]}; see charwise train --help")
    settings = {f.name for f in fields(TrainConfig)}
    train = dict(raw.get("train", {}))
    bad = sorted(set(train) - settings - set(BUDGET))
    if bad:
        raise CharwiseError(f"{where}: unknown key train.{bad[0]}; see charwise train --help")
    updates = _get(train, "updates", int, where, None, minimum=1, name="train.updates")
    minutes = _get(train, "minutes", (int, float), where, None, minimum=0, name="train.minutes")
    if minutes is not None and not minutes > 0:
        raise CharwiseError(f"{where}: train.minutes must be positive (got {minutes})")
    if updates is None and minutes is None:
        raise CharwiseError(f"{where}: give each trial a budget: train.updates or train.minutes")
    for key in BUDGET:
        train.pop(key, None)
    space = {}
    for name, spec in raw.get("space", {}).items():
        if name not in settings:
            raise CharwiseError(f"{where}: unknown key space.{name}; it must be a training setting")
        if name in train:
            raise CharwiseError(f"{where}: space.{name} is also fixed in [train]; keep one")
        space[name] = _parse_dimension(name, spec, where)
    _check_settings(train, space, where)
    if "val_fraction" in train and not train["val_fraction"] > 0:
        raise CharwiseError(f"{where}: train.val_fraction must be positive: the metric needs it")
    return Sweep(
        corpus, load, metric, samples, scheduler, concurrent, float(cpus), float(gpus), train,
        updates, None if minutes is None else float(minutes), space, seed,
    )  # fmt: skip


def _get(table: dict, key: str, kind, where, default, minimum=None, name=None):
    """table[key] of the given type (bools are not numbers), at least minimum."""
    name = name or key
    if key not in table:
        return default
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        raise CharwiseError(
            f"{where}: {name} must be {' or '.join(k.__name__ for k in kinds)} (got {value!r})"
        )
    if minimum is not None and value < minimum:
        raise CharwiseError(f"{where}: {name} must be at least {minimum} (got {value!r})")
    return value


def _parse_dimension(name: str, spec, where) -> tuple[str, list]:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise CharwiseError(
            f"{where}: space.{name} must be one of {{ {' | '.join(f'{k} = ...' for k in KINDS)} }}"
        )
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise CharwiseError(f"{where}: space.{name}.{kind} must be a non-empty list")
    if kind in ("uniform", "loguniform", "randint"):
        numbers = (int,) if kind == "randint" else (int, float)
        ok = len(values) == 2 and all(
            isinstance(v, numbers) and not isinstance(v, bool) for v in values
        )
        if not ok or not values[0] < values[1] or (kind == "loguniform" and values[0] <= 0):
            low = "0 < low < high" if kind == "loguniform" else "low < high"
            raise CharwiseError(f"{where}: space.{name}.{kind} must be [low, high] with {low}")
    return kind, values


def _check_settings(train: dict, space: dict, where) -> None:
    """Every value a trial can get is a valid setting: checked at the space's corners."""
    corners = [dict(train)]
    for name, (kind, values) in space.items():
        picks = values if kind in ("grid", "choice") else [values[0], values[-1]]
        corners = [c | {name: v} for c in corners for v in picks][:256]
    for settings in corners:
        try:
            TrainConfig(**settings).check()
        except CharwiseError as exc:
            raise CharwiseError(f"{where}: {exc}") from None
        except TypeError as exc:
            raise CharwiseError(f"{where}: a setting has the wrong type ({exc})") from None


# ---- running ------------------------------------------------------------------------------------
def _ray():
    try:
        import ray
        from ray import tune
    except ImportError:
        raise CharwiseError(f"charwise sweep needs Ray Tune: {RAY_HINT}") from None
    return ray, tune


def trial(config: dict, sweep: Sweep, corpus, source: dict, out: str) -> None:
    """One trial: a charwise run in OUT/trials/<trial>, resumed from Tune's checkpoint (a copy
    of the run directory) when Tune restarts it; each validation goes to Tune."""
    from ray import tune

    from charwise.train import Trainer

    run = Path(out) / "trials" / tune.get_context().get_trial_id()
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as saved:
            if _updates(Path(saved)) > _updates(run):  # Tune's copy is newer: take it
                shutil.rmtree(run, ignore_errors=True)
                shutil.copytree(saved, run)
    settings = sweep.train | config
    if _updates(run) >= 0:
        trainer = Trainer.resume(run, corpus, progress=False)
    else:
        shutil.rmtree(run, ignore_errors=True)
        trainer = Trainer(corpus, TrainConfig(**settings), run, source, progress=False)
    trainer.listeners.append(Reporter(sweep.metric))
    trainer.run(sweep.updates, progress=False, minutes=sweep.minutes)


def _updates(run: Path) -> int:
    """The updates of a run directory's checkpoint, -1 without one."""
    from charwise import checkpoint

    try:
        return int(checkpoint.read_meta(run / "checkpoint.npz")["updates"])
    except (CharwiseError, KeyError, TypeError, ValueError):
        return -1


class Reporter:
    """Sends each validation to Tune, with the run directory as its checkpoint, once the
    charwise checkpoint that covers it is written (at that block's end, or at the finish)."""

    def __init__(self, metric: str):
        self.metric, self.row = metric, None

    def on_evaluated(self, trainer, row: dict) -> None:
        self.row = row

    def on_block_end(self, trainer) -> None:
        self._send(trainer)

    def on_finish(self, trainer) -> None:
        self._send(trainer)

    def _send(self, trainer) -> None:
        from ray import tune

        if self.row is None:
            return
        row, self.row = self.row, None
        metrics = {self.metric: row[METRICS[self.metric]], "update": row["update"]}
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(trainer.out)))


def run_sweep(
    sweep: Sweep, out: Path, address: str | None = None, resume: bool = False, log=print
) -> list[dict]:
    """Run (or resume) the sweep into out; returns the results table's rows."""
    import logging
    import os

    from charwise.corpus import load_corpus, source_of

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own console tables off
    ray, tune = _ray()
    corpus = load_corpus(sweep.corpus, **sweep.load)
    source = source_of(sweep.corpus, sweep.load)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    quiet = dict(logging_level=logging.ERROR, log_to_driver=False, include_dashboard=False)
    if address:
        ray.init(address=address, **quiet)
    else:  # a Ray instance of this process's own, on this machine's loopback only
        ray.init(num_cpus=os.cpu_count(), _node_ip_address="127.0.0.1", **quiet)
    try:
        function = tune.with_parameters(
            trial, sweep=sweep, corpus=corpus, source=source, out=str(out)
        )
        function = tune.with_resources(function, {"cpu": sweep.cpus, "gpu": sweep.gpus})
        path = out / TUNE_DIR / NAME
        if resume:
            tuner = tune.Tuner.restore(str(path), function, resume_errored=True)
        else:
            tuner = tune.Tuner(
                function,
                param_space=sweep.search_space(),
                tune_config=tune.TuneConfig(
                    metric=sweep.metric,
                    mode="min",
                    num_samples=sweep.samples,
                    max_concurrent_trials=sweep.concurrent,
                    scheduler=_scheduler(sweep),
                    search_alg=_searcher(sweep),
                    trial_dirname_creator=lambda t: t.trial_id,
                ),
                run_config=tune.RunConfig(name=NAME, storage_path=str(out / TUNE_DIR), verbose=0),
            )
        grid = tuner.fit()
        return results(grid, sweep, out)
    finally:
        ray.shutdown()


def _scheduler(sweep: Sweep):
    """ASHA on the validations (per update budget) or on the training time (minutes)."""
    if sweep.scheduler == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    every = sweep.train.get("eval_every") or TrainConfig().eval_every
    if sweep.updates is not None:  # the last rung at the last validation; max_t one beyond,
        reports = max(1, math.ceil(sweep.updates / every))  # so a trial ends by itself
        rungs = dict(grace_period=max(1, reports // 4), reduction_factor=2)
        return ASHAScheduler(max_t=reports + 1, **rungs)
    budget = 60.0 * sweep.minutes  # training time; the trial's clock also counts validations
    rungs = dict(grace_period=budget / 4, reduction_factor=2)
    return ASHAScheduler(time_attr="time_total_s", max_t=4 * budget, **rungs)


def _searcher(sweep: Sweep):
    """Seeded draws of the space's random parts, so a sweep file gives the same trials."""
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=sweep.seed)


def results(grid, sweep: Sweep, out: Path) -> list[dict]:
    """One row per trial from its run directory: settings, best metric, updates, time, status."""
    from charwise import rundir

    rows = []
    for result in grid:
        run = out / "trials" / Path(result.path).name
        evals = rundir.read_eval(run) if run.is_dir() else None
        column = METRICS[sweep.metric]
        best = int(evals[column].argmin()) if evals is not None and len(evals["update"]) else None
        final = run / "final.npz"
        if result.error is not None:
            status = "error"
        elif final.is_file():
            status = "finished"
        elif result.config is None or result.metrics is None or not result.metrics:
            status = "not run"  # an interrupted sweep: --resume runs it
        elif "done" in result.metrics and not result.metrics["done"]:
            status = "interrupted"
        else:
            status = "stopped early"
        config = result.config or {}
        row = {"trial": run.name} | {k: config.get(k) for k in sweep.space}
        row |= {
            sweep.metric: float(evals[column][best]) if best is not None else math.nan,
            "best_update": int(evals["update"][best]) if best is not None else 0,
            "updates": max(_updates(run), 0),
            "train_seconds": float(evals["wall_seconds"][-1]) if best is not None else 0.0,
            "status": status,
        }
        rows.append(row)
    return sorted(rows, key=lambda r: (math.isnan(r[sweep.metric]), r[sweep.metric]))


# ---- results ------------------------------------------------------------------------------------
RESULTS = "results.csv"


def write_results(rows: list[dict], sweep: Sweep, out: Path) -> tuple[Path, Path, Path]:
    """DIR/results.csv, and DIR/sweep.md and sweep.html: the table sorted by the metric, the
    validation curves of every trial, the best settings as a command, a sample of the best."""
    import csv
    import io
    import shlex

    from charwise import render, safeio
    from charwise.model import CharModel

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    safeio.write_text(out / RESULTS, buf.getvalue())
    plot_curves(rows, sweep, out, out / "sweep.png")
    unit = "bits" if sweep.metric == "val_bits_per_char" else "nats"
    table = render.Table(
        ["trial", *sweep.space, f"best val {unit}/char", "at update", "updates", "status"],
        [
            [
                r["trial"],
                *(str(r[k]) for k in sweep.space),
                f"{r[sweep.metric]:.4f}",
                f"{r['best_update']:,}",
                f"{r['updates']:,}",
                r["status"],
            ]
            for r in rows
        ],  # fmt: skip
    )
    best = rows[0]
    settings = sweep.train | {k: best[k] for k in sweep.space}
    budget = {"updates": sweep.updates, "minutes": sweep.minutes}
    options = [
        f"--{k.replace('_', '-')} {shlex.quote(str(v))}"
        for k, v in (settings | budget).items()
        if v is not None
    ]
    loader = [
        f"--{k.replace('_', '-')}" + ("" if v is True else f" {shlex.quote(str(v))}")
        for k, v in sweep.load.items()
        if v is not False
    ]
    command = " ".join(["charwise train", shlex.quote(sweep.corpus), *loader, *options])
    blocks = [
        render.Para(
            f"{len(rows)} trials of the search space, sorted by validation {unit} per "
            f"character (lower is better); each trial is a run directory in trials/."
        ),
        table,
        render.Figure("sweep.png", "Validation loss of every trial against update."),
        render.Para("The best settings, as a command:"),
        render.Code(command),
    ]
    model_file = out / "trials" / best["trial"] / "best-val.npz"
    if model_file.is_file():
        model, _ = CharModel.load(model_file)
        blocks += [
            render.Para("300 characters from the best trial's best-val.npz (seed 1):"),
            render.Code(model.sample(300, seed=1)),
        ]
    doc = render.Doc("charwise sweep", [render.Section("Trials", blocks)])
    md, page = out / "sweep.md", out / "sweep.html"
    safeio.write_text(md, render.markdown(doc))
    safeio.write_text(page, render.html(doc, {"sweep.png": (out / "sweep.png").read_bytes()}))
    return out / RESULTS, md, page


def _show(value) -> str:
    """A setting as the table and chart show it (floats to 4 significant digits)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def plot_curves(rows: list[dict], sweep: Sweep, out: Path, path: Path) -> None:
    """The validation curves of every trial on one chart."""
    from charwise import rundir
    from charwise.figures import _pyplot, save

    plt = _pyplot()
    column = METRICS[sweep.metric]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    colours = plt.get_cmap("tab20").colors  # 20 distinct colours, then line styles change
    for i, r in enumerate(rows):
        evals = rundir.read_eval(out / "trials" / r["trial"])
        if evals is not None and len(evals["update"]):
            label = ", ".join(f"{k}={_show(r[k])}" for k in sweep.space) or r["trial"]
            style = dict(color=colours[i % 20], ls=("-", "--", ":")[i // 20 % 3])
            ax.plot(evals["update"], evals[column], marker="o", ms=3, lw=1, label=label, **style)
    ax.set_xlabel("update")
    ax.set_ylabel(sweep.metric.replace("_", " "))
    ax.set_title("Sweep: validation loss of every trial", loc="left")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)
