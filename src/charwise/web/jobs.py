"""Training runs that the dashboard starts: `charwise train` child processes, the command line
each runs (shown so users can copy it) and the last lines of its output."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shlex
import signal
import sys
import time
from collections import deque
from dataclasses import fields
from pathlib import Path

from charwise import datasets, rundir
from charwise.config import TrainConfig
from charwise.corpus import BUILTIN
from charwise.errors import CharwiseError
from charwise.settings import kind

CONSOLE_LINES = 200  # lines of a child's output kept for the run page
# The settings the page's form may set; the others keep their defaults.
FORM_SETTINGS = (
    "model",
    "m",
    "layers",
    "optimizer",
    "eta",
    "batch",
    "seq_length",
    "dropout",
    "val_fraction",
    "eval_every",
    "seed",
    "dtype",
)
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _number(key: str, value, cast):
    try:
        number = cast(value)
    except (TypeError, ValueError):
        raise CharwiseError(f"{key} must be a number (got {value!r})") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise CharwiseError(f"{key} must be a finite number (got {value!r})")
    return number


def budget_options(form: dict) -> list[str]:
    """--updates N and/or --minutes M from the form (each positive when given)."""
    options = []
    for key, cast in (("updates", int), ("minutes", float)):
        value = form.get(key)
        if value not in (None, ""):
            number = _number(key, value, cast)
            if number <= 0:
                raise CharwiseError(f"{key} must be positive (got {value!r})")
            options += [f"--{key}", repr(number) if cast is float else str(number)]
    return options


def check_corpus(corpus) -> str:
    """The corpus as `charwise train` takes it: the built-in, a download, or a path that
    exists (read and checked again by train itself)."""
    if not isinstance(corpus, str) or not corpus.strip():
        raise CharwiseError("give a corpus: a file or folder on this machine, or a built-in")
    if corpus == BUILTIN or datasets.is_dataset(corpus):
        return corpus
    if corpus.startswith("-") or "\0" in corpus or not Path(corpus).exists():
        raise CharwiseError(f"corpus not found: {corpus}; give a file, a folder or a built-in")
    return corpus


def check_name(name: str, runs_dir: Path) -> str:
    """A new run's folder name: letters, digits, '.', '_' and '-', not yet taken."""
    if not name or name.startswith(".") or not set(name) <= NAME_CHARS or len(name) > 100:
        raise CharwiseError(
            "a run name is letters, digits, '.', '_' and '-' (not first), at most 100 of them"
        )
    if (runs_dir / name).exists() or (runs_dir / name).is_symlink():
        raise CharwiseError(f"a run named {name} exists; pick another name")
    return name


def train_arguments(form: dict, runs_dir: Path) -> tuple[str, list[str]]:
    """The run's name and `charwise train` arguments for the page's form, every value checked
    as the command line checks it."""
    unknown = sorted(set(form) - {*FORM_SETTINGS, "corpus", "name", "updates", "minutes"})
    if unknown:
        raise CharwiseError(f"unknown setting {unknown[0]}")
    corpus = check_corpus(form.get("corpus"))
    declared = {f.name: f for f in fields(TrainConfig)}
    values = {}
    for key in FORM_SETTINGS:
        value = form.get(key)
        if value in (None, ""):
            continue
        cast = kind(declared[key])
        values[key] = str(value) if cast is str else _number(key, value, cast)
    TrainConfig(**values).check()
    budget = budget_options(form)
    if not budget:
        raise CharwiseError("give updates or minutes")
    stem = Path(corpus).stem or "run"
    name = form.get("name") or f"{stem}-{values.get('model', 'rnn')}-{time.strftime('%H%M%S')}"
    name = check_name(str(name), runs_dir)
    options = [f"--{k.replace('_', '-')}={v}" for k, v in values.items()]
    return name, ["--out", str(runs_dir / name), *options, *budget, "--", corpus]


class Job:
    """A `charwise train` child process and the last lines of its output."""

    def __init__(self, arguments: list[str]):
        self.arguments = arguments
        self.command = shlex.join(["charwise", "train", *arguments])
        self.lines: deque[str] = deque(maxlen=CONSOLE_LINES)
        self.count = 0  # lines read so far (the page asks for those after the ones it has)
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "charwise",
            "train",
            *self.arguments,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # the server's Ctrl-C reaches it only through stop()
            env=os.environ | {"PYTHONUNBUFFERED": "1"},
        )
        asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for line in self.process.stdout:
            self.lines.append(line.decode("utf-8", "replace").rstrip("\n"))
            self.count += 1
        await self.process.wait()
        self.lines.append(f"[charwise train exited with status {self.process.returncode}]")
        self.count += 1

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def new_lines(self, seen: int) -> list[str]:
        """The lines after the first `seen` that are still kept."""
        fresh = min(self.count - seen, len(self.lines))
        return list(self.lines)[len(self.lines) - fresh :] if fresh > 0 else []

    def interrupt(self) -> None:
        if self.running:
            self.process.send_signal(signal.SIGINT)


class Jobs:
    """The children of this server by run name (the latest command for each run)."""

    def __init__(self):
        self.by_run: dict[str, Job] = {}

    async def start(self, name: str, arguments: list[str]) -> Job:
        job = self.by_run.get(name)
        if job is not None and job.running:  # it released the run; give it time to exit
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.process.wait(), 5.0)
            if job.running:
                raise CharwiseError(f"{name} is already running")
        job = Job(arguments)
        await job.start()
        self.by_run[name] = job
        return job

    def stop(self, name: str, out: Path) -> None:
        """SIGINT to the process training the run (it checkpoints and exits): this server's
        child, or the charwise process that holds the run's lock."""
        job = self.by_run.get(name)
        if job is not None and job.running:
            job.interrupt()
            return
        if not rundir.is_running(out):
            raise CharwiseError(f"{name} is not running")
        try:
            pid = int((out / rundir.LOCK).read_text().strip())
            os.kill(pid, signal.SIGINT)
        except (OSError, ValueError):
            raise CharwiseError(f"cannot reach the process that trains {name}") from None

    async def stop_all(self, wait: float = 30.0) -> None:
        """On shutdown: every child is interrupted (so it checkpoints) and waited for."""
        running = [job for job in self.by_run.values() if job.running]
        for job in running:
            job.interrupt()
        for job in running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.process.wait(), wait)
