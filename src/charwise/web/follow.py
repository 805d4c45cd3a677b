"""Reading a run directory for the dashboard: its listing, its curves thinned for a chart, and
following its files as a run writes them (only what is new is read and sent)."""

from __future__ import annotations

import math
from pathlib import Path

from charwise import checkpoint, rundir, safeio
from charwise.errors import CharwiseError

POINTS = 2000  # most training points a chart receives for one run's history
SAMPLES_SHOWN = 10  # training samples sent when a page starts following a run


def run_facts(out: Path) -> dict | None:
    """describe() in JSON terms (NaN is null) or None for a folder that is not a run."""
    facts = rundir.describe(out)
    if facts is None:
        return None
    facts["name"] = facts.pop("run")
    if isinstance(facts.get("val_bits"), float) and math.isnan(facts["val_bits"]):
        facts["val_bits"] = None
    return facts


def details(out: Path) -> dict:
    """What the run page shows besides its curves: settings, corpus, best validation, events,
    and which models can be sampled."""
    facts = run_facts(out) or {"name": out.name, "status": "unreadable"}
    try:
        meta = checkpoint.read_meta(out / rundir.CHECKPOINT)
    except CharwiseError:
        meta = {}
    models = [
        k for k, f in MODEL_FILES.items() if (out / f).is_file() and not (out / f).is_symlink()
    ]
    return facts | {
        "config": meta.get("config", {}),
        "corpus": meta.get("corpus", {}),
        "engine_used": meta.get("engine_used"),
        "best_val": meta.get("best_val"),
        "events": rundir.read_events(out),
        "models": models,
    }


MODEL_FILES = {
    "best-val": rundir.BEST_VAL,
    "best": rundir.BEST,
    "final": rundir.FINAL,
    "checkpoint": rundir.CHECKPOINT,
}


def stride_for(rows: int, target: int) -> int:
    """Every stride-th update is charted, so that a run's curve has at most ~POINTS points."""
    return max(1, math.ceil(max(rows, target) / POINTS))


def parse_rows(lines: list[bytes], columns: int) -> list[list[float]]:
    """The numeric rows of CSV lines (a header or a malformed line is skipped)."""
    rows = []
    for line in lines:
        try:
            row = [float(v) for v in line.split(b",")]
        except ValueError:
            continue
        if len(row) == columns and all(math.isfinite(v) for v in row):
            rows.append([int(row[0]), *row[1:]])
    return rows


def curves(out: Path) -> dict:
    """The run's training curve (every stride-th update and the last) and its evaluations."""
    facts = run_facts(out) or {}
    metrics = Tail(out / rundir.METRICS)
    rows = parse_rows(metrics.lines(), 4)
    stride = stride_for(
        len(rows), facts.get("target") if isinstance(facts.get("target"), int) else 0
    )
    kept = [r for r in rows if r[0] % stride == 0] + (
        [rows[-1]] if rows and rows[-1][0] % stride else []
    )
    evals = parse_rows(Tail(out / rundir.EVAL).lines(), len(rundir.EVAL_COLUMNS))
    return {
        "seq_length": facts.get("seq_length"),
        "batch": facts.get("batch"),
        "updates": facts.get("updates"),
        "train_seconds": facts.get("train_s"),
        "metrics": {
            "update": [r[0] for r in kept],
            "loss": [r[2] for r in kept],
            "smooth": [r[3] for r in kept],
        },
        "eval": {name: [r[i] for r in evals] for i, name in enumerate(rundir.EVAL_COLUMNS)}
        if (out / rundir.EVAL).is_file()
        else None,
    }


class Tail:
    """The complete lines appended to a file since the last look. A file that shrank (a
    resume cuts its logs back to the checkpoint) sets `reset`: read it again from the start."""

    def __init__(self, path: Path):
        self.path, self.offset, self.reset = path, 0, False

    def new_bytes(self) -> bytes:
        """What was appended since the offset (not yet consumed)."""
        try:
            size = self.path.lstat().st_size
            if size < self.offset:
                self.reset = True
            return safeio.read_from(self.path, self.offset) if size > self.offset else b""
        except OSError:
            return b""

    def lines(self) -> list[bytes]:
        data = self.new_bytes()
        data = data[: data.rfind(b"\n") + 1]  # a partial last line waits for its end
        self.offset += len(data)
        return data.split(b"\n")[:-1]


class SampleTail(Tail):
    """The complete records appended to samples.txt since the last look."""

    def records(self) -> list[dict]:
        text = self.new_bytes().decode("utf-8", "replace")
        found, used = [], 0
        for end, update, epoch, smooth, body in rundir.sample_records(text):
            smooth = None if math.isnan(smooth) else smooth
            found.append({"update": update, "epoch": epoch, "smooth_loss": smooth, "text": body})
            used = end
        self.offset += len(text[:used].encode("utf-8"))
        return found
