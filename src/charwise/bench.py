"""Engines side by side: training and sampling speed against a classic numpy loop.

Contestants: (a) the classic loop written in the style of min-char-rnn and most course
solutions (one-hot column vectors, np.dot, a Python loop over time steps, dicts of states),
(b) the reference engine, (c) the fast engine in float64, (d) in float32, and (e) PyTorch's
nn.RNN + nn.Linear at batch 1 on one CPU thread when torch is installed. Repetitions are
interleaved (a b c d e a b c d e ...) so that a busy machine slows all of them alike, and
the table reports medians. Used by `charwise bench` and benchmarks/engines.py.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from charwise.corpus import Corpus
from charwise.engines import get_engine
from charwise.optim import CLIP, EPS, ETA, AdaGrad, TrainState
from charwise.params import RNNParams
from charwise.schedule import Schedule

REPEATS = 5  # interleaved repetitions; the table shows the median of each
SECONDS = 0.4  # aim for about this long per measurement, so timer noise does not matter
SAMPLE_SEED = 0  # the uniforms of the sampling runs
# idle seconds before each measurement: the BLAS and OpenMP threads of the contestant before
# (numpy's, SciPy's and torch's pools are separate) spin for a while after their work and
# would slow the next one otherwise (measured: the fast engine's lstm m 128, batch 1, float64,
# trained at 11,758 characters/s right after torch's turn without the pause, 43,552 with it)
PAUSE = 0.3


class Classic:
    """The classic exercise as students write it (after min-char-rnn, with SPEC.md's init)."""

    def __init__(self, params: RNNParams, data: np.ndarray, tau: int):
        self.Wxh, self.Whh, self.Why = params.U.copy(), params.W.copy(), params.V.copy()
        self.bh, self.by = params.b.reshape(-1, 1).copy(), params.c.reshape(-1, 1).copy()
        self.mem = [np.zeros_like(p) for p in self.arrays()]
        self.K, self.tau = len(params.c), tau
        self.data, self.pos = data.tolist(), 0
        self.hprev = np.zeros_like(self.bh)

    def arrays(self):
        return [self.Wxh, self.Whh, self.Why, self.bh, self.by]

    def loss_fun(self, inputs, targets, hprev):
        xs, hs, ys, ps = {}, {}, {}, {}
        hs[-1] = np.copy(hprev)
        loss = 0.0
        for t in range(len(inputs)):
            xs[t] = np.zeros((self.K, 1))
            xs[t][inputs[t]] = 1
            hs[t] = np.tanh(np.dot(self.Wxh, xs[t]) + np.dot(self.Whh, hs[t - 1]) + self.bh)
            ys[t] = np.dot(self.Why, hs[t]) + self.by
            ps[t] = np.exp(ys[t]) / np.sum(np.exp(ys[t]))
            loss += -np.log(ps[t][targets[t], 0])
        dWxh, dWhh, dWhy = (np.zeros_like(p) for p in (self.Wxh, self.Whh, self.Why))
        dbh, dby = np.zeros_like(self.bh), np.zeros_like(self.by)
        dhnext = np.zeros_like(hs[0])
        for t in reversed(range(len(inputs))):
            dy = np.copy(ps[t])
            dy[targets[t]] -= 1
            dWhy += np.dot(dy, hs[t].T)
            dby += dy
            dh = np.dot(self.Why.T, dy) + dhnext
            dhraw = (1 - hs[t] * hs[t]) * dh
            dbh += dhraw
            dWxh += np.dot(dhraw, xs[t].T)
            dWhh += np.dot(dhraw, hs[t - 1].T)
            dhnext = np.dot(self.Whh.T, dhraw)
        for dparam in (dWxh, dWhh, dWhy, dbh, dby):
            np.clip(dparam, -CLIP, CLIP, out=dparam)
        return loss, (dWxh, dWhh, dWhy, dbh, dby), hs[len(inputs) - 1]

    def train(self, updates: int) -> None:
        for _ in range(updates):
            if self.pos + self.tau + 1 >= len(self.data):
                self.pos, self.hprev = 0, np.zeros_like(self.bh)
            inputs = self.data[self.pos : self.pos + self.tau]
            targets = self.data[self.pos + 1 : self.pos + self.tau + 1]
            _, grads, self.hprev = self.loss_fun(inputs, targets, self.hprev)
            for param, dparam, mem in zip(self.arrays(), grads, self.mem, strict=True):
                mem += dparam * dparam
                param += -ETA * dparam / np.sqrt(mem + EPS)
            self.pos += self.tau

    def sample(self, n: int, rng: np.random.Generator) -> list[int]:
        x = np.zeros((self.K, 1))
        x[self.data[0]] = 1
        h, ixes = np.zeros_like(self.bh), []
        for _ in range(n):
            h = np.tanh(np.dot(self.Wxh, x) + np.dot(self.Whh, h) + self.bh)
            y = np.dot(self.Why, h) + self.by
            p = np.exp(y) / np.sum(np.exp(y))
            ix = rng.choice(range(self.K), p=p.ravel())
            x = np.zeros((self.K, 1))
            x[ix] = 1
            ixes.append(ix)
        return ixes


class Engine:
    """A charwise engine training with its own TrainState on the protocol's schedule."""

    def __init__(self, name: str, params: RNNParams, data: np.ndarray, tau: int):
        self.engine = get_engine(name)
        self.state = TrainState.fresh(params)
        self.data, self.schedule = data, Schedule(len(data), tau)

    def train(self, updates: int) -> None:
        one = (a[:, None] for a in self.schedule.block(self.state.updates, updates))
        losses, adagrad = np.empty(updates), AdaGrad(ETA, CLIP, EPS)
        if self.engine.run_block(self.state, adagrad, self.data, *one, losses) < updates:
            raise RuntimeError("training diverged during the benchmark")

    def sample(self, n: int, rng: np.random.Generator):
        h0 = np.zeros(self.state.params.m)
        x0 = int(self.data[0])
        return self.engine.sample(self.state.params, h0, x0, n, rng.random(n))


class Torch:
    """nn.RNN (tanh) + nn.Linear at batch 1, Adagrad, gradient values clipped, one thread.

    torch's Adagrad divides by sqrt(G) + eps rather than sqrt(G + eps); nothing else differs
    in the work done per update.
    """

    def __init__(self, params: RNNParams, data: np.ndarray, tau: int):
        import torch

        torch.set_num_threads(1)
        self.torch, self.K, self.tau = torch, len(params.c), tau
        m = params.m
        self.rnn = torch.nn.RNN(self.K, m, nonlinearity="tanh", dtype=torch.float64)
        self.out = torch.nn.Linear(m, self.K, dtype=torch.float64)
        with torch.no_grad():
            self.rnn.weight_ih_l0.copy_(torch.from_numpy(params.U))
            self.rnn.weight_hh_l0.copy_(torch.from_numpy(params.W))
            self.rnn.bias_ih_l0.zero_()
            self.rnn.bias_hh_l0.zero_()
            self.out.weight.copy_(torch.from_numpy(params.V))
            self.out.bias.zero_()
        self.params = list(self.rnn.parameters()) + list(self.out.parameters())
        self.opt = torch.optim.Adagrad(self.params, lr=ETA, eps=EPS)
        self.loss = torch.nn.CrossEntropyLoss(reduction="sum")
        self.data = torch.from_numpy(data.astype(np.int64))
        self.h, self.pos = torch.zeros(1, 1, m, dtype=torch.float64), 0

    def train(self, updates: int) -> None:
        torch = self.torch
        for _ in range(updates):
            if self.pos + self.tau + 1 >= len(self.data):
                self.pos, self.h = 0, torch.zeros_like(self.h)
            x = self.data[self.pos : self.pos + self.tau]
            y = self.data[self.pos + 1 : self.pos + self.tau + 1]
            onehot = torch.nn.functional.one_hot(x, self.K).to(torch.float64).unsqueeze(1)
            hs, h_last = self.rnn(onehot, self.h)
            loss = self.loss(self.out(hs[:, 0]), y)
            self.opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_value_(self.params, CLIP)
            self.opt.step()
            self.h, self.pos = h_last.detach(), self.pos + self.tau

    def sample(self, n: int, rng: np.random.Generator) -> list[int]:
        torch = self.torch
        uniforms, out = rng.random(n), []
        h, x = torch.zeros_like(self.h), int(self.data[0])
        with torch.no_grad():
            for u in uniforms:
                onehot = torch.nn.functional.one_hot(torch.tensor([x]), self.K).to(torch.float64)
                _, h = self.rnn(onehot.unsqueeze(1), h)
                cs = torch.cumsum(torch.softmax(self.out(h[0, 0]), dim=0), dim=0)
                x = min(int(torch.searchsorted(cs, u * cs[-1], right=True)), self.K - 1)
                out.append(x)
        return out


@dataclass
class Row:
    label: str
    make: Callable  # (params, data, tau) -> contestant with train(n) and sample(n, rng)
    dtype: str = "float64"
    train_rates: list | None = None  # updates/s, one per repetition
    sample_rates: list | None = None  # chars/s


def contestants(device: str | None = None) -> tuple[list[Row], list[str]]:
    """The rows of the table, and notes about rows left out; with a device, the charwise
    torch engine's rows on it too."""
    rows = [
        Row("(a) classic numpy loop", Classic),
        Row("(b) reference engine", lambda *a: Engine("reference", *a)),
        Row("(c) fast float64", lambda *a: Engine("fast", *a)),
        Row("(d) fast float32", lambda *a: Engine("fast", *a), "float32"),
    ]
    notes = []
    if importlib.util.find_spec("torch") is not None:
        rows.append(Row("(e) torch nn.RNN, 1 thread", Torch))
    else:
        notes.append("(e) torch nn.RNN: skipped, torch is not installed (pip install torch)")
    if device is not None:
        get_engine("torch").use_device(device)
        for label, dtype in (("(f) torch engine float64", "float64"), ("(g)   float32", "float32")):
            rows.append(Row(f"{label} {device}"[:28], lambda *a: Engine("torch", *a), dtype))
    return rows, notes


def _timed(func, n: int) -> float:
    time.sleep(PAUSE)
    t0 = time.perf_counter()
    func(n)
    return n / (time.perf_counter() - t0)


def _sample(player, n: int):
    return player.sample(n, np.random.default_rng(SAMPLE_SEED))


def _sized(rate, n: int) -> int:
    """How many units (updates, characters) take about SECONDS, from rate(n) (units per second
    over n of them) for n, 4n, 16n, ... until one measurement takes half of SECONDS: a call's
    fixed cost (converting its arguments, waking threads) would otherwise make a short first
    measurement's rate low, and with it every measurement short and its rate low too."""
    while True:
        per_second = rate(n)
        if n / per_second >= SECONDS / 2:
            return max(n, int(per_second * SECONDS))
        n *= 4


def run(
    corpus: Corpus,
    m: int = 100,
    tau: int = 25,
    repeats: int = REPEATS,
    seed: int = 1,
    device: str | None = None,
):
    """Measure every contestant; returns (rows, notes)."""
    rows, notes = contestants(device)
    data = np.ascontiguousarray(corpus.data)
    Schedule(len(data), tau)  # the corpus must hold one sequence
    players, sizes = [], []
    for row in rows:
        params = RNNParams.init(m, len(corpus.vocab), seed=seed, dtype=np.dtype(row.dtype))
        player = row.make(params, data, tau)
        player.train(1)  # warm-up: numba loads or compiles its kernels here
        player.sample(2, np.random.default_rng(SAMPLE_SEED))
        sample = functools.partial(_timed, functools.partial(_sample, player))
        sizes.append((_sized(functools.partial(_timed, player.train), 5), _sized(sample, 20)))
        players.append(player)
        row.train_rates, row.sample_rates = [], []
    for _ in range(repeats):
        for row, player, (n_train, n_sample) in zip(rows, players, sizes, strict=True):
            row.train_rates.append(_timed(player.train, n_train))
            row.sample_rates.append(_timed(functools.partial(_sample, player), n_sample))
    return rows, notes


def machine() -> str:
    """One line about the machine the numbers come from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import numba

    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, "
        f"numpy {np.__version__}, numba {numba.__version__}; {blas()}"
    )


def blas() -> str:
    """Which BLAS numpy (the reference) and SciPy (numba's np.dot: the fast engine) run, and
    with which kernels: OpenBLAS picks them for the CPU when it is loaded, and
    OPENBLAS_CORETYPE overrides its choice (README, "Speed")."""
    import scipy.linalg.cython_blas  # noqa: F401  (loads SciPy's BLAS, as numba does)
    import threadpoolctl

    names = {"numpy.libs": "numpy", "scipy.libs": "SciPy"}
    parts = []
    for lib in threadpoolctl.threadpool_info():
        if lib["user_api"] != "blas":
            continue
        owner = next((v for k, v in names.items() if k in lib["filepath"]), lib["prefix"])
        kernels = f", {lib['architecture']} kernels" if lib.get("architecture") else ""
        parts.append(f"{owner}: {lib['internal_api']} {lib['version']}{kernels}")
    return "BLAS " + ("; ".join(sorted(parts)) or "unknown")


def table(corpus: Corpus, rows: list[Row], notes: list[str], m: int, tau: int) -> str:
    """The results as a fixed-width table with ratios against the classic loop."""
    med = [(float(np.median(r.train_rates)), float(np.median(r.sample_rates))) for r in rows]
    base_train, base_sample = med[0]
    lines = [
        f"corpus {corpus.name} ({len(corpus):,} characters, K = {len(corpus.vocab)}), m = {m}, "
        f"seq length {tau}, median of {len(rows[0].train_rates)} interleaved repetitions",
        f"machine: {machine()}",
        "",
        f"{'engine':28} {'train chars/s':>14} {'updates/s':>10} {'vs (a)':>7} "
        f"{'sample chars/s':>15} {'vs (a)':>7}",
    ]
    for row, (train, sample) in zip(rows, med, strict=True):
        lines.append(
            f"{row.label:28} {train * tau:>14,.0f} {train:>10,.0f} {train / base_train:>6.1f}x "
            f"{sample:>15,.0f} {sample / base_sample:>6.1f}x"
        )
    return "\n".join(lines + [f"note: {note}" for note in notes])


# ---- any model: the engines side by side (charwise bench --model ... --batch ...) ------------
EVAL_CHARS = 20_000  # characters read by each validation measurement


@dataclass
class ModelRow:
    label: str
    engine: str
    dtype: str
    threads: int | None = None  # torch's intra-op threads (None: the engine's own)
    rates: dict | None = None  # train / sample / eval -> chars/s, one per repetition


class ModelRun:
    """One engine training, sampling and evaluating a model of the given shape on the corpus."""

    def __init__(self, row: ModelRow, corpus: Corpus, spec, optimizer: str, batch: int, tau: int):
        from charwise.optim import default_eta, make_optimizer
        from charwise.params import Params
        from charwise.schedule import Streams

        self.engine, self.threads = get_engine(row.engine), row.threads
        self.batch, self.tau = batch, tau
        if hasattr(self.engine, "use_device"):
            self.engine.use_device("cpu")
        self.optimizer = make_optimizer(optimizer, default_eta(optimizer))
        params = Params.init(spec, seed=1, dtype=np.dtype(row.dtype))
        self.state = TrainState.fresh(params, self.optimizer.slots, batch)
        self.schedule = Streams(corpus, tau, batch)
        self.data = np.ascontiguousarray(corpus.data)

    @contextlib.contextmanager
    def _threads(self):
        """torch's intra-op threads set to this row's count for the measurement."""
        if self.threads is None:
            yield
            return
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def train(self, updates: int) -> float:
        """Characters per second of `updates` updates (B x tau characters each)."""
        block = self.schedule.block(self.state.updates, updates)
        time.sleep(PAUSE)
        with self._threads():
            t0 = time.perf_counter()
            self.engine.run_block(self.state, self.optimizer, self.data, *block, np.empty(updates))
            return updates * self.batch * self.tau / (time.perf_counter() - t0)

    def sample(self, n: int) -> float:
        h0 = self.state.spec.zero_state(1)
        uniforms = np.random.default_rng(SAMPLE_SEED).random(n)
        time.sleep(PAUSE)
        with self._threads():
            t0 = time.perf_counter()
            self.engine.sample(self.state.params, h0, int(self.data[0]), n, uniforms)
            return n / (time.perf_counter() - t0)

    def evaluate(self, n: int) -> float:
        time.sleep(PAUSE)
        with self._threads():
            t0 = time.perf_counter()
            _, count = self.engine.evaluate(self.state.params, self.data[:n])
            return count / (time.perf_counter() - t0)


def model_rows(spec, optimizer: str, batch: int, dtype: str) -> tuple[list[ModelRow], list[str]]:
    """The engines that run the model: reference, fast (float64, float32), and the torch
    engine in `dtype` on the CPU with one thread and with all; notes for those left out."""
    from charwise.engines import why_not

    candidates = [
        ModelRow("reference float64", "reference", "float64"),
        ModelRow("fast float64", "fast", "float64"),
        ModelRow("fast float32", "fast", "float32"),
    ]
    if importlib.util.find_spec("torch") is not None:
        cpus = os.cpu_count() or 1
        candidates.append(ModelRow(f"torch {dtype}, 1 thread", "torch", dtype, 1))
        candidates.append(ModelRow(f"torch {dtype}, {cpus} threads", "torch", dtype, cpus))
    rows, notes = [], []
    for row in candidates:
        reason = why_not(row.engine, spec, optimizer, batch, 0.0, row.dtype)
        if reason:
            notes.append(f"{row.label}: left out, {reason}")
        else:
            rows.append(row)
    if importlib.util.find_spec("torch") is None:
        notes.append("torch: left out, not installed (pip install torch)")
    return rows, notes


def run_model(corpus: Corpus, spec, optimizer: str, batch: int, tau: int, dtype: str, repeats: int):
    """Training, sampling and validation speed of every engine that runs the model,
    interleaved over the repetitions; returns (rows, notes)."""
    rows, notes = model_rows(spec, optimizer, batch, dtype)
    runs = [ModelRun(row, corpus, spec, optimizer, batch, tau) for row in rows]
    sizes = []
    for run in runs:  # warm-up (kernels compiled or loaded), then sizes of about SECONDS
        if hasattr(run.engine, "warm_up"):
            run.engine.warm_up(np.dtype(run.state.params.dtype), run.state.spec)
        run.train(1), run.sample(2), run.evaluate(100)
        train = _sized(lambda n, r=run: r.train(n) / (batch * tau), 2)
        evaluate = run.evaluate(min(EVAL_CHARS, len(corpus)))
        n_eval = max(100, min(len(corpus), int(evaluate * SECONDS)))
        sizes.append((train, _sized(run.sample, 20), n_eval))
    for row in rows:
        row.rates = {"train": [], "sample": [], "eval": []}
    for _ in range(repeats):
        for row, run, (n_train, n_sample, n_eval) in zip(rows, runs, sizes, strict=True):
            row.rates["train"].append(run.train(n_train))
            row.rates["sample"].append(run.sample(n_sample))
            row.rates["eval"].append(run.evaluate(n_eval))
    return rows, notes


def model_table(corpus: Corpus, spec, optimizer: str, batch: int, tau: int, rows, notes) -> str:
    """The engines' characters per second, with ratios against the reference engine."""
    med = [{k: float(np.median(v)) for k, v in row.rates.items()} for row in rows]
    base = med[0] if rows and rows[0].engine == "reference" else None
    lines = [
        f"corpus {corpus.name} ({len(corpus):,} characters, K = {len(corpus.vocab)}), "
        f"{spec.describe()}, {optimizer}, batch {batch}, seq length {tau}, median of "
        f"{len(rows[0].rates['train']) if rows else 0} interleaved repetitions",
        f"machine: {machine()}",
        "",
        f"{'engine':24} {'train chars/s':>14} {'vs ref':>7} {'sample chars/s':>15} {'vs ref':>7} "
        f"{'eval chars/s':>13} {'vs ref':>7}",
    ]
    for row, m in zip(rows, med, strict=True):
        cells = []
        for key, width in (("train", 14), ("sample", 15), ("eval", 13)):
            ratio = f"{m[key] / base[key]:>6.1f}x" if base else f"{'-':>7}"
            cells.append(f"{m[key]:>{width},.0f} {ratio}")
        lines.append(f"{row.label:24} " + " ".join(cells))
    return "\n".join(lines + [f"note: {note}" for note in notes])
