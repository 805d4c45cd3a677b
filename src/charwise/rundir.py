"""The run directory: its file names, the logs appended during a run, reading them back, and
repairing them on resume (the checkpoint is the truth)."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np

from charwise.errors import CharwiseError

CHECKPOINT = "checkpoint.npz"  # the resumable training state (final.npz: the model)
METRICS = "metrics.csv"
SAMPLES = "samples.txt"
EVAL = "eval.csv"
FINAL, BEST, BEST_VAL = "final.npz", "best.npz", "best-val.npz"
PASSAGE = "best_passage.txt"
VAL_PASSAGE = "best-val_passage.txt"
LOSS_PNG = "loss.png"
METRICS_HEADER = "update,epoch,loss,smooth_loss"
EVAL_COLUMNS = ("update", "epoch", "train_nats", "val_nats", "val_bits", "wall_seconds")
EVAL_HEADER = ",".join(EVAL_COLUMNS)


def append(path: Path, lines: list[str]) -> None:
    with path.open("a", encoding="utf-8", newline="") as f:
        f.writelines(lines)


def fsync(path: Path) -> None:
    """Flush a log to the disk (before a checkpoint that covers it)."""
    with path.open("ab") as f:
        os.fsync(f.fileno())


def sample_header(update: int, epoch: int, smooth: float, chars: int) -> str:
    return f"--- update {update}, epoch {epoch}, loss {smooth!r}, chars {chars} ---"


def _sample_records(raw: str):
    """(end offset, update, epoch, smooth loss, text) of each complete record of samples.txt."""
    pos = 0
    while True:
        end = raw.find("\n", pos)
        if end < 0:
            return
        try:
            parts = raw[pos:end].strip("- ").split(", ")
            rec = dict(part.split(" ", 1) for part in parts)
            n, update, epoch = int(rec["chars"]), int(rec["update"]), int(rec["epoch"])
            smooth = float(rec["loss"])
        except (ValueError, KeyError):
            return
        text, after = raw[end + 1 : end + 1 + n], end + 1 + n
        if len(text) < n or raw[after : after + 2] != "\n\n":
            return
        pos = after + 2
        yield pos, update, epoch, smooth, text


def read_samples(path: str | Path) -> list[dict]:
    """Parse samples.txt back into {update, epoch, smooth_loss, text} records."""
    with open(path, encoding="utf-8", newline="") as f:
        raw = f.read()
    keys = ("update", "epoch", "smooth_loss", "text")
    return [dict(zip(keys, rec[1:], strict=True)) for rec in _sample_records(raw)]


def _read_table(path: Path, columns: int, what: str) -> np.ndarray:
    """The rows of a numeric CSV with a header; a partial last line (a run being written) and
    an empty body are fine."""
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    with warnings.catch_warnings():  # a run stopped at update 0 has a header and no rows
        warnings.filterwarnings("ignore", "loadtxt: input contained no data")
        try:
            rows = io.StringIO(complete.decode())
            return np.loadtxt(rows, delimiter=",", skiprows=1, ndmin=2).reshape(-1, columns)
        except (ValueError, UnicodeDecodeError):
            raise CharwiseError(f"{path} is not a charwise {what} file") from None


def read_metrics(run_dir: str | Path) -> dict[str, np.ndarray]:
    """Columns of RUN_DIR/metrics.csv: update, epoch, loss, smooth_loss."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise CharwiseError(f"{run_dir} has no metrics.csv; give a run directory of charwise train")
    table = _read_table(path, 4, "metrics")
    return {name: table[:, i] for i, name in enumerate(METRICS_HEADER.split(","))}


def read_eval(run_dir: str | Path) -> dict[str, np.ndarray] | None:
    """Columns of RUN_DIR/eval.csv (see EVAL_COLUMNS), or None for a run without validation."""
    path = Path(run_dir) / EVAL
    if not path.is_file():
        return None
    table = _read_table(path, len(EVAL_COLUMNS), "evaluation")
    return {name: table[:, i] for i, name in enumerate(EVAL_COLUMNS)}


def repair_logs(out: Path, updates: int) -> None:
    """Cut metrics.csv, samples.txt and eval.csv back to `updates`: the checkpoint is the truth.

    Drops rows and samples written after the checkpoint and a partial last line left by a
    kill, so the resumed run appends exactly what an uninterrupted run would have written.
    """
    metrics = out / METRICS
    try:
        raw = metrics.read_bytes()
    except OSError:
        raw = b""
    lines = raw.split(b"\n")[: updates + 1]  # header + one row per update
    size = sum(len(line) + 1 for line in lines)
    rows = enumerate(lines[1:], start=1)
    if (
        size > len(raw)
        or lines[0] != METRICS_HEADER.encode()
        or not all(line.startswith(b"%d," % u) for u, line in rows)
    ):
        raise CharwiseError(
            f"{metrics} lacks rows of the first {updates} updates, which its checkpoint "
            "holds; restore that file or start a new run"
        )
    _truncate(metrics, size)
    samples = out / SAMPLES
    text = samples.read_bytes().decode("utf-8", "surrogateescape") if samples.exists() else ""
    keep = 0
    for end, update, *_ in _sample_records(text):
        if update > updates:
            break
        keep = end
    _truncate(samples, len(text[:keep].encode("utf-8", "surrogateescape")))
    evals = out / EVAL
    if evals.exists():
        keep = 0
        for line in evals.read_bytes().splitlines(keepends=True):
            head = line.split(b",", 1)[0]
            if not line.endswith(b"\n") or (head.isdigit() and int(head) > updates):
                break
            keep += len(line)
        _truncate(evals, keep)


def _truncate(path: Path, size: int) -> None:
    with path.open("ab") as f:
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())


def remove_stale_temporaries(out: Path) -> None:
    """Temporary files left by a kill in the middle of a save."""
    for stale in out.glob(".*.npz.*.tmp"):
        stale.unlink()
