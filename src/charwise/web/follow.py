"""Reading a run directory for the dashboard: its listing, its curves thinned for a chart, and
following its files as a run writes them (only what is new is read and sent)."""

from __future__ import annotations

import math
import time
from pathlib import Path

from charwise import checkpoint, rundir, safeio
from charwise.errors import CharwiseError

POINTS = 2000  # most training points a chart receives for one run's history
SAMPLES_SHOWN = 10  # training samples sent when a page starts following a run
CONSOLE_SHOWN = 200  # lines of console.log sent when a page starts following a run
STATUS_EVERY = 1.0  # seconds between looks at a followed run's checkpoint and lock


def readable(path: Path) -> bool:
    """A file the dashboard reads: a regular file, not a link (it never reads through a link
    in RUNS_DIR)."""
    return path.is_file() and not path.is_symlink()


def is_run(out: Path) -> bool:
    """A run directory: its checkpoint readable."""
    return readable(out / rundir.CHECKPOINT)


def run_facts(out: Path) -> dict | None:
    """describe() in JSON terms (NaN is null) or None for a folder that is not a run."""
    facts = rundir.describe(out) if is_run(out) else None
    if facts is None:
        return None
    facts["name"] = facts.pop("run")
    if isinstance(facts.get("val_bits"), float) and math.isnan(facts["val_bits"]):
        facts["val_bits"] = None
    return facts


def details(out: Path) -> dict:
    """What the run page shows besides its curves: settings, corpus, best validation, events,
    and which models can be sampled."""
    starting = not (out / rundir.CHECKPOINT).exists()  # a run the server just started
    facts = run_facts(out) or {"name": out.name, "status": "starting" if starting else "unreadable"}
    try:
        meta = checkpoint.read_meta(out / rundir.CHECKPOINT)
    except CharwiseError:
        meta = {}
    models = [k for k, f in MODEL_FILES.items() if readable(out / f)]
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


class Thinner:
    """Keeps every stride-th update of metrics.csv for a chart: the stride is the smallest power
    of two at least max(target, latest update) / POINTS, so a run's curve has at most about
    POINTS points (a run without an updates target: about POINTS/2 more each time its length
    doubles), and the points kept before a stride doubled stay valid."""

    def __init__(self, target: int = 0):
        self.target, self.stride = target, 1

    def rows(self, lines: list[bytes], last: bool = False) -> list[list[float]]:
        """The kept rows of consecutive lines of metrics.csv (and the final one, with last);
        only those are parsed."""
        lines = [line for line in lines if line[:1].isdigit()]  # not the header
        if not lines:
            return []
        try:
            u0 = int(lines[0].split(b",", 1)[0])
        except ValueError:
            return []
        end = u0 + len(lines) - 1  # one row per update, in order (repair_logs keeps it so)
        while self.stride * POINTS < max(self.target, end):
            self.stride *= 2
        picked = lines[(-u0) % self.stride :: self.stride]
        if last and end % self.stride:
            picked.append(lines[-1])
        return parse_rows(picked, 4)


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
    """The run's training curve (thinned, with its last update) and its evaluations."""
    facts = run_facts(out) or {}
    target = facts.get("target") if isinstance(facts.get("target"), int) else 0
    kept = Thinner(target).rows(Tail(out / rundir.METRICS).lines(), last=True)
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
        text = self.new_bytes().decode("utf-8", "surrogateescape")
        found, used = [], 0
        for end, update, epoch, smooth, body in rundir.sample_records(text):
            smooth = None if math.isnan(smooth) else smooth
            found.append({"update": update, "epoch": epoch, "smooth_loss": smooth, "text": body})
            used = end
        self.offset += len(text[:used].encode("utf-8", "surrogateescape"))
        return found


def last_lines(path: Path, n: int) -> list[str]:
    """The last n lines of a text file ([] without one)."""
    try:
        raw = safeio.read_from(path)
    except OSError:
        return []
    return raw.decode("utf-8", "replace").splitlines()[-n:]


class Follower:
    """A run's files for one page: the first poll gives its history (thinned curves, the last
    samples, events, console), later ones what was appended since."""

    def __init__(self, out: Path):
        self.out = out
        self.metrics = Tail(out / rundir.METRICS)
        self.evals = Tail(out / rundir.EVAL)
        self.samples = SampleTail(out / rundir.SAMPLES)
        self.events = Tail(out / rundir.EVENTS)
        self.console = Tail(out / rundir.CONSOLE)
        self.first, self.status, self.looked, self.thinner = True, None, 0.0, None

    def poll(self) -> tuple[list[tuple[str, object]], bool]:
        """(event name, data) pairs, and whether the stream must end: a log was cut back or
        the run resumed (its logs were cut back to the checkpoint, maybe grown again since)."""
        out = []
        now = time.monotonic()
        if now - self.looked >= STATUS_EVERY:
            facts = run_facts(self.out) or {"status": "starting"}
            self.looked = now
            news = {k: facts.get(k) for k in ("status", "updates", "target")}
            if news != self.status:
                self.status = news
                out.append(("status", news))
        if self.thinner is None:
            target = self.status["target"] if self.status else None
            self.thinner = Thinner(target if isinstance(target, int) else 0)
        rows = self.thinner.rows(self.metrics.lines(), last=self.first)
        if rows:
            out.append(("metrics", {"rows": rows}))
        rows = parse_rows(self.evals.lines(), len(rundir.EVAL_COLUMNS))
        if rows:
            out.append(("eval", {"rows": rows}))
        records = self.samples.records()
        out += [("sample", r) for r in (records[-SAMPLES_SHOWN:] if self.first else records)]
        resumed = False
        for record in rundir.parse_events(self.events.lines()):
            out.append(("event", record))
            resumed |= record["event"] == "resume" and not self.first
        lines = [line.decode("utf-8", "replace") for line in self.console.lines()]
        if lines:
            out.append(("console", {"lines": lines[-CONSOLE_SHOWN:] if self.first else lines}))
        self.first = False
        cut = self.metrics.reset or self.evals.reset or self.samples.reset
        return out, cut or resumed
