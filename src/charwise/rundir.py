"""The run directory: its file names, the logs appended during a run, reading them back, and
repairing them on resume (the checkpoint is the truth)."""

from __future__ import annotations

import io
import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np

from charwise import safeio
from charwise.errors import CharwiseError

CHECKPOINT = "checkpoint.npz"  # the resumable training state (final.npz: the model)
METRICS = "metrics.csv"
SAMPLES = "samples.txt"
EVAL = "eval.csv"
FINAL, BEST, BEST_VAL = "final.npz", "best.npz", "best-val.npz"
PASSAGE = "best_passage.txt"
VAL_PASSAGE = "best-val_passage.txt"
LOSS_PNG = "loss.png"
EVENTS = "events.log"  # one JSON object a line: start, resume, checkpoint, ..., end
CONSOLE = "console.log"  # the output of a run the dashboard started
METRICS_HEADER = "update,epoch,loss,smooth_loss"
EVAL_COLUMNS = ("update", "epoch", "train_nats", "val_nats", "val_bits", "wall_seconds")
EVAL_HEADER = ",".join(EVAL_COLUMNS)


LOCK = ".lock"  # held (flock) by the process that runs in the directory
LOCK_TRIES = 5  # attempts 50 ms apart before a held lock is an error
REPORT_FILES = ("report.json", "report.md", "report.html", "overfit.png")
FILES = (CHECKPOINT, METRICS, SAMPLES, EVAL, FINAL, BEST, BEST_VAL, PASSAGE, VAL_PASSAGE)
FILES += (LOSS_PNG, EVENTS, CONSOLE)


def append(path: Path, lines: list[str]) -> None:
    """Append lines to a log, never through a symlink."""
    safeio.append(path, "".join(lines).encode("utf-8"))


def fsync(path: Path) -> None:
    """Flush a log to the disk (before a checkpoint that covers it)."""
    safeio.fsync(path)


def refuse_links(out: Path) -> None:
    """A run directory whose files are symbolic links is refused: charwise would otherwise be
    led to write outside it."""
    for name in (*FILES, *REPORT_FILES, LOCK):
        if (out / name).is_symlink():
            raise CharwiseError(
                f"{out / name} is a symbolic link; a run directory holds only regular files "
                "that charwise wrote: remove the link"
            )


class RunLock:
    """Exclusive ownership of a run directory for the life of one process's run: flock on
    RUN/.lock, which holds the owner's pid. The system releases it when the process ends,
    however it ends (a SIGKILL leaves no stale lock)."""

    def __init__(self, out: Path):
        self.out, self.fd = Path(out), None

    def acquire(self) -> None:
        import fcntl

        if self.fd is not None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        refuse_links(self.out)
        fd = safeio.open_fd_nofollow(self.out / LOCK, os.O_RDWR | os.O_CREAT)
        for attempt in range(LOCK_TRIES):  # `charwise runs` may peek at it for an instant
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt + 1 < LOCK_TRIES:
                    time.sleep(0.05)
        else:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise CharwiseError(
                f"{self.out} is in use by another charwise process (pid {holder}); wait for "
                "it to finish or stop it, or pick another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None

    __del__ = release  # a trainer dropped without running (a resume only looked) frees it


def sample_header(update: int, epoch: int, smooth: float, chars: int) -> str:
    """The line above a training sample: its update, epoch, smooth loss ('-' before the
    first update) and length (which read_samples needs)."""
    loss = "-" if math.isnan(smooth) else f"{smooth:.4f}"
    return f"--- update {update}, epoch {epoch}, loss {loss}, chars {chars} ---"


def sample_records(raw: str):
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
            smooth = math.nan if rec["loss"] == "-" else float(rec["loss"])
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
    return [dict(zip(keys, rec[1:], strict=True)) for rec in sample_records(raw)]


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
    for end, update, *_ in sample_records(text):
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
    safeio.truncate(path, size)


def remove_stale_temporaries(out: Path) -> None:
    """The temporary files of charwise's atomic writes (safeio) that a kill in the middle of
    one left behind."""
    for name in (*FILES, *REPORT_FILES):
        for stale in out.glob(f".{name}.*.tmp"):
            stale.unlink()


def log_event(out: Path, event: str, **facts) -> None:
    """Append an event of the run's history to events.log (never cut on resume: what happened,
    including updates a resume redid)."""
    record = {"time": round(time.time(), 3), "event": event, **facts}
    append(out / EVENTS, [json.dumps(record) + "\n"])


def read_events(out: Path) -> list[dict]:
    """The events of RUN/events.log; [] without one."""
    try:
        raw = safeio.read_from(out / EVENTS)
    except OSError:
        return []
    return parse_events(raw.split(b"\n")[:-1])


def parse_events(lines: list[bytes]) -> list[dict]:
    """The event records of lines of events.log (a malformed line is skipped)."""
    events = []
    for line in lines:
        try:
            record = json.loads(line, parse_constant=_no_constant)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("event"), str):
            events.append(record)
    return events


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")  # NaN and Infinity: no charwise event has them


def is_running(out: Path) -> bool:
    """Whether a process holds the run directory (its lock is taken)."""
    import fcntl

    try:
        fd = safeio.open_fd_nofollow(out / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def describe(out: Path) -> dict | None:
    """What `charwise runs` and the dashboard show of a run directory (None: not a run).
    Status: running (a process holds it), finished (its final files match its checkpoint and it
    reached its target), diverged (its last stop was a divergence), stopped (Ctrl-C, a kill:
    resume it)."""
    from charwise import checkpoint

    if not (out / CHECKPOINT).is_file():
        return None
    # the lock first: a process writes its last checkpoint before it lets go, so a run seen
    # stopped here is read after that write (read first, a stop in between showed stale updates)
    running = is_running(out)
    try:
        meta = checkpoint.read_meta(out / CHECKPOINT)
        config = meta["config"]
        updates, target = meta["updates"], meta.get("target_updates") or 0
        minutes = meta.get("target_minutes")
        seconds = float(meta.get("train_seconds", 0.0))
        config["model"], int(updates), float(config.get("m", 0))
    except (CharwiseError, KeyError, TypeError, ValueError, AttributeError):
        return {"run": out.name, "status": "unreadable"}
    done = updates >= target if target else bool(minutes) and seconds >= 60 * minutes
    done = done or meta.get("early_stopped") is True
    final = out / FINAL
    status = "running" if running else "stopped"
    if status == "stopped" and done and final.is_file():
        status = (
            "finished" if final.stat().st_mtime >= (out / CHECKPOINT).stat().st_mtime else status
        )
    events = read_events(out)
    stops = [e["event"] for e in events if e["event"] not in ("end", "checkpoint")]
    if status == "stopped" and stops and stops[-1] == "diverged":
        status = "diverged"
    best = meta.get("best_val") if isinstance(meta.get("best_val"), dict) else {}
    layers = config.get("layers", 1)
    model = f"{layers}x " if layers > 1 else ""
    return {
        "run": out.name,
        "corpus": meta.get("corpus", {}).get("name", "?"),
        "model": f"{model}{config.get('model', 'rnn')} {config.get('m')}",
        "family": config.get("model", "rnn"),
        "layers": layers,
        "m": config.get("m"),
        "seq_length": config.get("seq_length"),
        "batch": config.get("batch", 1),
        "optimizer": config.get("optimizer", "adagrad"),
        "updates": updates,
        "target": target or (f"{minutes:g} min" if minutes else "?"),
        "val_bits": float(best.get("val_nats", math.nan)) / math.log(2),
        "status": status,
        "train_s": seconds,
        "modified": (out / CHECKPOINT).stat().st_mtime,
        "started": events[0]["time"] if events else None,
    }


def latest(folder: Path) -> Path:
    """The run in folder whose checkpoint was written last."""
    runs = [p for p in Path(folder).glob("*") if (p / CHECKPOINT).is_file()]
    if not runs:
        raise CharwiseError(f"no runs in {folder}; train one with charwise train")
    return max(runs, key=lambda p: (p / CHECKPOINT).stat().st_mtime)
