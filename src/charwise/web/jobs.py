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
from dataclasses import fields
from pathlib import Path

from charwise import datasets, rundir, safeio
from charwise.config import TrainConfig
from charwise.corpus import BUILTIN
from charwise.errors import CharwiseError
from charwise.settings import kind

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


def number(form: dict, key: str, cast, default=None):
    """form[key] as an int or a finite float (cast), default when missing or empty."""
    value = form.get(key)
    if value in (None, ""):
        return default
    try:
        result = cast(value)
    except (TypeError, ValueError, OverflowError):
        raise CharwiseError(f"{key} must be a number (got {value!r})") from None
    if isinstance(result, float) and not math.isfinite(result):
        raise CharwiseError(f"{key} must be a finite number (got {value!r})")
    return result


def budget_options(form: dict) -> list[str]:
    """--updates N and/or --minutes M from the form (each positive when given)."""
    options = []
    for key, cast in (("updates", int), ("minutes", float)):
        value = number(form, key, cast)
        if value is not None:
            if value <= 0:
                raise CharwiseError(f"{key} must be positive (got {value!r})")
            options += [f"--{key}", repr(value) if cast is float else str(value)]
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


def check_name(name: str) -> str:
    """A new run's folder name: letters, digits, '.', '_' and '-' (whether it is taken, the
    exclusive mkdir in Jobs.start says)."""
    if not name or name.startswith(".") or not set(name) <= NAME_CHARS or len(name) > 100:
        raise CharwiseError(
            "a run name is letters, digits, '.', '_' and '-' (not first), at most 100 of them"
        )
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
        cast = kind(declared[key])
        value = form.get(key) if cast is str else number(form, key, cast)
        if value not in (None, ""):
            values[key] = str(value) if cast is str else value
    TrainConfig(**values).check()
    budget = budget_options(form)
    if not budget:
        raise CharwiseError("give updates or minutes")
    stem = Path(corpus).stem or "run"
    name = form.get("name") or f"{stem}-{values.get('model', 'rnn')}-{time.strftime('%H%M%S')}"
    name = check_name(str(name))
    options = [f"--{k.replace('_', '-')}={v}" for k, v in values.items()]
    return name, ["--out", str(runs_dir / name), *options, *budget, "--", corpus]


class Job:
    """A `charwise train` child process. Its output goes to RUN/console.log, so the run never
    depends on this server (a server that exits leaves it training) and a restarted server
    still shows it."""

    def __init__(self, out: Path, arguments: list[str]):
        self.out, self.arguments = out, arguments
        self.command = shlex.join(["charwise", "train", *arguments])
        self.process: asyncio.subprocess.Process | None = None
        self.interrupted = False  # SIGINT sent: a second one would stop it without a checkpoint

    async def start(self) -> None:
        fd = safeio.open_fd_nofollow(
            self.out / rundir.CONSOLE, os.O_WRONLY | os.O_APPEND | os.O_CREAT
        )
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "charwise",
                "train",
                *self.arguments,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # the server's Ctrl-C reaches it only through stop()
                env=os.environ | {"PYTHONUNBUFFERED": "1"},
            )
        finally:
            os.close(fd)
        # held: the loop keeps only a weak reference to a task
        self.waiter = asyncio.get_running_loop().create_task(self._wait())

    async def _wait(self) -> None:
        code = await self.process.wait()
        rundir.append(self.out / rundir.CONSOLE, [f"[charwise train exited with status {code}]\n"])

    @property
    def active(self) -> bool:
        """Starting or running."""
        return self.process is None or self.process.returncode is None

    def interrupt(self) -> None:
        if self.process is not None and self.active and not self.interrupted:
            self.process.send_signal(signal.SIGINT)
            self.interrupted = True


class Jobs:
    """The children of this server by run name (the latest command for each run)."""

    def __init__(self):
        self.by_run: dict[str, Job] = {}
        self.interrupted: set[int] = set()  # pids of command-line runs sent SIGINT

    async def start(self, name: str, out: Path, arguments: list[str], new: bool) -> Job:
        """Run `charwise train arguments` for the run `name` (a new one: its folder is created
        here, so two requests never start the same run)."""
        job = self.by_run.get(name)
        if job is not None and job.active and job.process is not None and not new:
            with contextlib.suppress(TimeoutError):  # it released the run; let it exit
                await asyncio.wait_for(job.process.wait(), 5.0)
        job = self.by_run.get(name)
        if job is not None and job.active:
            raise CharwiseError(f"{name} is already running")
        if new:
            try:
                out.mkdir()
            except FileExistsError:
                raise CharwiseError(f"a run named {name} exists; pick another name") from None
        job = self.by_run[name] = Job(out, arguments)  # reserved before the first await
        try:
            await job.start()
        except BaseException:
            del self.by_run[name]
            raise
        return job

    def stop(self, name: str, out: Path) -> str:
        """SIGINT, once, to the process training the run (it checkpoints and exits): this
        server's child, or the charwise process that holds the run's lock."""
        job = self.by_run.get(name)
        if job is not None and job.active:
            if job.interrupted:
                return "already stopping"
            job.interrupt()
            return "stopping"
        if not rundir.is_running(out):
            raise CharwiseError(f"{name} is not running")
        try:
            pid = int((out / rundir.LOCK).read_text().strip())
            if pid in self.interrupted:
                return "already stopping"
            os.kill(pid, signal.SIGINT)
        except (OSError, ValueError):
            raise CharwiseError(f"cannot reach the process that trains {name}") from None
        self.interrupted.add(pid)
        return "stopping"

    async def stop_all(self, wait: float = 30.0) -> None:
        """On shutdown: every child is interrupted (so it checkpoints) and waited for, together,
        at most `wait` seconds (one that takes longer goes on by itself)."""
        running = [job for job in self.by_run.values() if job.active and job.process is not None]
        for job in running:
            job.interrupt()
        if running:
            waits = asyncio.gather(*(job.process.wait() for job in running))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waits, wait)
