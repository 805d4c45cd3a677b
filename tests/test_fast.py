"""The numba engine against the reference engine (the oracle), from identical states."""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from charwise import bench as benchmarks
from charwise.bench import blas
from charwise.corpus import Corpus, load_corpus
from charwise.engines import fast, numerics, reference
from charwise.models import ModelSpec
from charwise.optim import CLIP, EPS, ETA, TrainState
from charwise.params import Params, RNNParams
from charwise.train import Schedule, TrainConfig, Trainer, read_samples
from charwise.vocab import Vocab
from conftest import english_like

REL64 = 1e-10  # float64: both engines round differently (sum order, fused multiply-add) ~1e-15
# float32 against the float64 reference on the same float32 weights: float32 rounding
# (eps 6e-8) accumulates over tau = 25 recurrent steps and sums of ~m terms; the bound
# sqrt(m) * tau * eps ~ 1e-5 for m = 20, with a factor 10 of margin.
REL32 = 1e-4
SRC = Path(__file__).resolve().parents[1] / "src"


def rel(a, b) -> float:
    """max |a - b| relative to max |b| (entrywise ratios blow up on entries near zero)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def assert_same_bits(results):
    """Every tuple of arrays in results equals the first, dtype and bits."""
    for other in results[1:]:
        for got, want in zip(other, results[0], strict=True):
            assert got.dtype == want.dtype and np.array_equal(got, want)


def corpus(n_chars: int = 3000, seed: int = 0) -> Corpus:
    text = english_like(n_chars, seed)
    vocab = Vocab.from_text(text)
    return Corpus(name="english-like", vocab=vocab, data=vocab.encode(text))


def trained_like(m: int, K: int, seed: int = 3, dtype=np.float64) -> RNNParams:
    """Parameters far from the tiny initial ones, so that tanh saturates and clipping acts."""
    p = RNNParams.init(m, K, sig=0.3, seed=seed)
    rng = np.random.default_rng(seed)
    p.b[:] = rng.standard_normal(m)
    p.c[:] = rng.standard_normal(K)
    return p.astype(dtype)


def assert_states_close(a: TrainState, b: TrainState, tol: float) -> None:
    for (name, x), (_, y) in zip(a.params.items(), b.params.items(), strict=True):
        assert rel(x, y) <= tol, f"parameter {name}: {rel(x, y):.2e}"
    for (name, x), (_, y) in zip(a.G.items(), b.G.items(), strict=True):
        assert rel(x, y) <= tol, f"AdaGrad G_{name}: {rel(x, y):.2e}"
    assert rel(a.h_prev, b.h_prev) <= tol
    assert abs(a.smooth_loss - b.smooth_loss) <= tol * abs(b.smooth_loss)
    assert a.updates == b.updates


# ---- one chunk ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, tol", [(np.float64, REL64), (np.float32, REL32)])
def test_loss_grads_and_h_last_match_reference(dtype, tol):
    c = corpus()
    K, m, tau = len(c.vocab), 20, 25
    params = trained_like(m, K, dtype=dtype)
    h0 = np.tanh(np.random.default_rng(1).standard_normal(m)).astype(dtype)
    x, y = c.data[100 : 100 + tau], c.data[101 : 101 + tau]
    L, grads, h = fast.loss_and_grads(params, x, y, h0)
    L_ref, grads_ref, h_ref = reference.loss_and_grads(params, x, y, h0)
    assert abs(L - L_ref) <= tol * L_ref
    for (name, g), (_, g_ref) in zip(grads.items(), grads_ref.items(), strict=True):
        assert g.shape == g_ref.shape and g.dtype == dtype
        assert rel(g, g_ref) <= tol, f"d{name}: {rel(g, g_ref):.2e}"
    assert rel(h, h_ref) <= tol
    assert np.abs(h_ref).max() > 0.9  # saturated units are part of the comparison


def test_short_and_empty_chunks_match_reference():
    params = trained_like(8, 5)
    for n in (0, 1, 3):
        x, y = np.arange(n) % 5, (np.arange(n) + 1) % 5
        L, grads, h = fast.loss_and_grads(params, x, y, np.zeros(8))
        L_ref, grads_ref, h_ref = reference.loss_and_grads(params, x, y, np.zeros(8))
        assert abs(L - L_ref) <= REL64 * max(L_ref, 1.0)
        for g, g_ref in zip(grads.arrays(), grads_ref.arrays(), strict=True):
            assert np.allclose(g, g_ref, rtol=REL64, atol=1e-300)
        assert np.allclose(h, h_ref, rtol=REL64, atol=0)


# ---- updates -----------------------------------------------------------------------------------
def one_update(engine, state: TrainState, data, schedule: Schedule, losses=None) -> int:
    starts, lengths, resets = schedule.block(state.updates, 1)
    out = np.empty(1) if losses is None else losses
    return engine.train_block(state, data, starts, lengths, resets, ETA, EPS, CLIP, out)


@pytest.mark.parametrize("dtype, tol", [(np.float64, REL64), (np.float32, REL32)])
def test_one_update_matches_reference(dtype, tol):
    c = corpus()
    params = trained_like(20, len(c.vocab), dtype=dtype)
    params.c[0] = 8.0  # a confidently wrong output: dL/dc_0 ~ tau > CLIP
    schedule = Schedule(len(c), 25)
    state = TrainState.fresh(params)
    state.G = RNNParams(*(np.full_like(a, 0.5) for a in params.arrays()))
    state.h_prev[:] = 0.3
    state.updates, state.smooth_loss = 7, 60.0  # not a reset chunk, smooth loss already set
    fast_state, ref_state = copy.deepcopy(state), copy.deepcopy(state)
    _, grads, _ = reference.loss_and_grads(params, c.data[175:200], c.data[176:201], state.h_prev)
    assert max(np.abs(g).max() for g in grads.arrays()) > CLIP  # clipping is exercised
    losses, losses_ref = np.empty(1), np.empty(1)
    assert one_update(fast, fast_state, c.data, schedule, losses) == 1
    assert one_update(reference, ref_state, c.data, schedule, losses_ref) == 1
    assert abs(losses[0] - losses_ref[0]) <= tol * losses_ref[0]
    assert_states_close(fast_state, ref_state, tol)
    assert fast_state.params.dtype == dtype and fast_state.h_prev.dtype == dtype


def test_200_updates_each_from_the_reference_state():
    """Each fast update starts where the previous one ended and is checked against a
    reference update from that same state; the chunks cross two epoch boundaries."""
    c = corpus(2000)
    schedule = Schedule(len(c), 25)
    assert schedule.per_epoch < 100  # resets of h_prev happen inside the 200 updates
    state = TrainState.fresh(RNNParams.init(30, len(c.vocab), seed=5))
    start = copy.deepcopy(state)
    for _ in range(200):
        ref_state = copy.deepcopy(state)
        assert one_update(fast, state, c.data, schedule) == 1
        assert one_update(reference, ref_state, c.data, schedule) == 1
        assert_states_close(state, ref_state, REL64)
        assert state.best_update == ref_state.best_update
    # The same 200 updates as one block give bit-identical results.
    starts, lengths, resets = schedule.block(0, 200)
    assert fast.train_block(start, c.data, starts, lengths, resets, ETA, EPS, CLIP, np.empty(200))
    for a, b in zip(
        start.params.arrays() + start.G.arrays(),
        state.params.arrays() + state.G.arrays(),
        strict=True,
    ):
        assert np.array_equal(a, b)
    assert start.smooth_loss == state.smooth_loss and start.best_update == state.best_update


def test_document_corpus_blocks_match_reference(tmp_path):
    """Short documents: chunks of varying length that reset h_prev at every document."""
    lines = english_like(4000, seed=9).splitlines()
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    c = load_corpus(path, format="lines")
    schedule = Schedule.for_corpus(c, 25)
    starts, lengths, resets = schedule.block(0, 150)
    assert len(set(lengths.tolist())) > 3 and resets.sum() > 10
    state = TrainState.fresh(RNNParams.init(20, len(c.vocab), seed=4))
    data = np.asarray(c.data)
    for k in range(150):
        ref_state = copy.deepcopy(state)
        block = (starts[k : k + 1], lengths[k : k + 1], resets[k : k + 1])
        assert fast.train_block(state, data, *block, ETA, EPS, CLIP, np.empty(1)) == 1
        assert reference.train_block(ref_state, data, *block, ETA, EPS, CLIP, np.empty(1)) == 1
        assert_states_close(state, ref_state, REL64)


def run_block(engine, c: Corpus, params: RNNParams, updates: int) -> tuple[TrainState, np.ndarray]:
    state = TrainState.fresh(params)
    starts, lengths, resets = Schedule(len(c), 25).block(0, updates)
    losses = np.empty(updates)
    done = engine.train_block(state, c.data, starts, lengths, resets, ETA, EPS, CLIP, losses)
    assert done == updates
    return state, losses


@pytest.mark.slow
def test_free_running_2000_updates_same_learning_curve():
    """Training is chaotic: long runs agree statistically, not bit for bit.

    m = 50: on this small, repetitive corpus m = 100 at eta = 0.1 is so chaotic that runs
    from weights 1e-12 apart end 4-8% apart; at m = 50 they end within 0.2% of each other,
    so the 3% band tests the engines rather than the luck of one trajectory.
    """
    c = corpus(6000, seed=2)
    K = len(c.vocab)
    ref, ref_losses = run_block(reference, c, RNNParams.init(50, K, seed=1), 2000)
    for dtype in (np.float64, np.float32):
        state, losses = run_block(fast, c, RNNParams.init(50, K, seed=1, dtype=dtype), 2000)
        assert abs(state.smooth_loss - ref.smooth_loss) <= 0.03 * ref.smooth_loss, dtype
        assert abs(losses[:1].item() - ref_losses[0]) <= REL32 * ref_losses[0]
    assert ref.smooth_loss < 0.8 * ref_losses[0]  # it learned something: the band is meaningful


def test_divergence_stops_before_the_bad_update():
    c = corpus()
    params = trained_like(10, len(c.vocab))
    params.W[3, 4] = np.nan
    for engine in (fast, reference):
        state = TrainState.fresh(params.copy())
        state.updates = 3
        losses = np.zeros(5)
        starts, lengths, resets = Schedule(len(c), 25).block(3, 5)
        assert (
            engine.train_block(state, c.data, starts, lengths, resets, ETA, EPS, CLIP, losses) == 0
        )
        assert np.isnan(losses[0]) and state.updates == 3
        assert np.array_equal(state.params.U, params.U) and not state.G.W.any()


def test_best_snapshot_block_equals_one_update_at_a_time():
    """English-like text, then random letters: the smooth loss falls, then rises again."""
    text = english_like(10_000, seed=4)
    noise = np.random.default_rng(4).choice(sorted(set(text)), 6_000)
    vocab = Vocab.from_text(text)
    c = Corpus(name="easy-then-hard", vocab=vocab, data=vocab.encode(text + "".join(noise)))
    schedule = Schedule(len(c), 25)
    params = RNNParams.init(16, len(c.vocab), seed=2)
    blocked, stepped = TrainState.fresh(params.copy()), TrainState.fresh(params.copy())
    n = 600
    starts, lengths, resets = schedule.block(0, n)
    losses = np.empty(n)
    assert fast.train_block(blocked, c.data, starts, lengths, resets, ETA, EPS, CLIP, losses) == n
    snapshots = []
    for _ in range(n):
        snapshots.append((stepped.params.copy(), stepped.h_prev.copy()))
        one_update(fast, stepped, c.data, schedule)
    smooth = np.empty(n)  # the oracle: the first minimum of the smooth loss, in float64
    for k, loss in enumerate(losses):
        smooth[k] = loss if k == 0 else 0.999 * smooth[k - 1] + 0.001 * loss
    best = int(np.argmin(smooth))
    assert 300 < best + 1 < 500  # in the middle of the block, at the end of the easy part
    for state in (blocked, stepped):
        assert state.best_update == best + 1 and state.best_smooth == smooth[best]
        assert state.best_x0 == c.data[starts[best]]
        assert np.array_equal(state.best_h, snapshots[best][1])
        for a, b in zip(state.best.arrays(), snapshots[best][0].arrays(), strict=True):
            assert np.array_equal(a, b)


# ---- sampling ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "temperature, top_p", [(1.0, 1.0), (0.5, 1.0), (1.3, 0.9), (0.0, 1.0), (0.8, 0.5)]
)
def test_sampling_draws_the_same_indices(temperature, top_p):
    params = trained_like(24, 30, seed=7)
    h0 = np.tanh(np.random.default_rng(2).standard_normal(24))
    uniforms = np.random.default_rng(3).random(400)
    for p in (params, params.astype(np.float32)):
        got = fast.sample(p, h0, 4, 400, uniforms, temperature, top_p)
        want = reference.sample(p, h0, 4, 400, uniforms, temperature, top_p)
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert len(set(got.tolist())) > (1 if temperature else 0)


def test_sampling_stops_after_the_stop_index_and_advance_matches():
    params = trained_like(24, 30, seed=8)
    uniforms = np.random.default_rng(4).random(500)
    got = fast.sample(params, np.zeros(24), 1, 500, uniforms, stop=2)
    want = reference.sample(params, np.zeros(24), 1, 500, uniforms, stop=2)
    assert np.array_equal(got, want) and got[-1] == 2 and len(got) < 500
    x = np.arange(40) % 30
    assert (
        rel(fast.advance(params, np.zeros(24), x), reference.advance(params, np.zeros(24), x))
        < REL64
    )


# ---- large layers: their units in chunks, one per thread -------------------------------------
@pytest.mark.parametrize("family", ["rnn", "lstm", "gru"])
def test_chunked_steps_equal_one_thread_to_the_bit(monkeypatch, family):
    """Sampling, advance and validation step a large layer's units in chunks, one per thread
    (fast._layer_step); each entry is computed as by one thread, so any number of chunks gives
    the same bits (one chunk is what tests/test_engines.py compares with the reference)."""
    spec = ModelSpec(family, K=11, m=12, layers=2)
    rng = np.random.default_rng(5)
    data = rng.integers(0, 11, 1500).astype(np.uint8)
    runs = [(0, 700), (700, 1500)]
    uniforms = rng.random(400)
    for dtype in (np.float64, np.float32):
        params = Params.init(spec, seed=3).astype(dtype)
        for a in params.arrays():  # weights spread as after training: varied samples
            a += (rng.standard_normal(a.shape) * 0.3).astype(dtype)
        results = []
        for n in (1, 2, 3, 4):
            monkeypatch.setattr(fast, "_chunks", lambda spec, batch=1, n=n: n)
            h0 = spec.zero_state()
            drawn = fast.sample(params, h0, 1, 400, uniforms)
            state = fast.advance(params, h0, data[:300])
            results.append((drawn, *state, np.array(fast.evaluate(params, data, runs))))
        assert len(set(results[0][0].tolist())) > 5
        assert fast.numba.get_num_threads() == fast.numba.config.NUMBA_NUM_THREADS  # given back
        assert_same_bits(results)


def four_threads_of_eight_cores(monkeypatch):
    """numba's 4 threads (OpenMP) on a machine of 8 cores, OMP_NUM_THREADS unset."""
    monkeypatch.setattr(fast.numba, "get_num_threads", lambda: 4)
    monkeypatch.setattr(fast.numba, "threading_layer", lambda: "omp")
    monkeypatch.setattr(fast.os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_chunks_follow_the_work_the_threads_and_omp_num_threads(monkeypatch):
    four_threads_of_eight_cores(monkeypatch)
    chunks = lambda family, m: fast._chunks(ModelSpec(family, K=65, m=m))  # noqa: E731
    assert chunks("lstm", 128) == chunks("gru", 256) == 1  # below PARALLEL_MIN
    assert chunks("lstm", 256) == 2  # PARALLEL_MIN / 2 of work per chunk at least
    assert chunks("lstm", 512) == chunks("rnn", 1024) == 4  # numba's threads
    assert chunks("lstm", 257) == 1  # m = 257 is prime
    batch = lambda family, m, B: fast._chunks(ModelSpec(family, K=65, m=m), B)  # noqa: E731
    assert batch("lstm", 128, 1) == batch("lstm", 32, 8) == 1  # training: the work of B streams
    assert batch("lstm", 128, 4) == batch("gru", 256, 1) + 1 == 2
    assert batch("lstm", 256, 32) == 4
    monkeypatch.setattr(fast.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert chunks("lstm", 512) == 2  # three cores: the largest divisor of m up to 3
    monkeypatch.delattr(fast.os, "sched_getaffinity")  # macOS has no affinity: all its cores
    monkeypatch.setattr(fast.os, "cpu_count", lambda: 8)
    assert chunks("lstm", 512) == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert chunks("lstm", 512) == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(fast.numba, "threading_layer", lambda: "workqueue")  # not thread-safe
    assert chunks("lstm", 512) == 1


@pytest.mark.parametrize("family", ["rnn", "lstm", "gru"])
def test_training_in_parts_of_the_units_equals_one_thread_to_the_bit(family):
    """Training steps a layer's units in parts, one per thread (kernels._steps), each entry
    computed as by one thread: loss, gradients, last states and a block of Adam updates are
    the same bits for any number of parts (one part is what the reference tests compare); with
    W read in place (3 streams) and from its packed panels (5 streams: kernels._panels)."""
    from charwise.engines import kernels
    from charwise.optim import make_optimizer
    from charwise.schedule import Streams

    c = corpus(2000)
    rng = np.random.default_rng(8)
    for dtype, m, drop, B in (
        (np.float64, 48, False, 5),
        (np.float32, 48, True, 3),
        (np.float32, 64, False, 5),
    ):
        spec = ModelSpec(family, K=len(c.vocab), m=m, layers=2)
        params = Params.init(spec, seed=4).astype(dtype)
        for a in params.arrays():
            a += (rng.standard_normal(a.shape) * 0.2).astype(dtype)
        X = rng.integers(0, len(c.vocab), (9, B))
        Y = rng.integers(0, len(c.vocab), (9, B))
        lengths = np.array([9, 4, 0, 9, 7][:B])
        state0 = tuple(rng.standard_normal(s.shape) * 0.5 for s in spec.zero_state(B))
        masks = [(rng.random((B, 9, m)) > 0.3) / 0.7 for _ in range(2)] if drop else None
        results = []
        for parts in (1, 2, 3):
            loss, grads, last = kernels.loss_and_grads_batch(
                params, X, Y, lengths, state0, masks, parts
            )
            opt = make_optimizer("adam", 0.01)
            state = TrainState.fresh(params.copy(), batch=B, opt=opt.init_state(params))
            block = Streams(c, 9, B).block(0, 4)
            kernels.run_block(state, opt, c.data, *block, np.empty(4), None, parts)
            results.append((np.array(loss), *grads.arrays(), *last, *state.params.arrays()))
        assert_same_bits(results)


@pytest.mark.parametrize("name", ["adagrad", "rmsprop", "adam"])
def test_bulk_in_parts_equals_one_thread_to_the_bit(name):
    """The products over a chunk and each update's optimiser step may run in parts, one per
    thread, where the layers' steps do not (kernels' bulk tag): the loss, gradients and last
    states, and a block of updates (losses, parameters, the optimiser's slots) are the same
    bits for 1, 2 and 3 parts (one is what the reference tests compare; m = 29: the arrays'
    parts do not all end at multiples of kernels.STEP_ALIGN)."""
    from charwise.engines import kernels
    from charwise.optim import make_optimizer
    from charwise.schedule import Streams

    c = corpus(2000)
    rng = np.random.default_rng(9)
    for dtype, B in ((np.float64, 1), (np.float32, 3)):
        spec = ModelSpec("lstm", K=len(c.vocab), m=29)
        params = Params.init(spec, seed=4).astype(dtype)
        X, Y = rng.integers(0, len(c.vocab), (2, 9, B))
        state0 = tuple(rng.standard_normal(s.shape) * 0.5 for s in spec.zero_state(B))
        opt = make_optimizer(name, 0.01)
        results = []
        for bulk in (1, 2, 3):
            loss, grads, last = kernels.loss_and_grads_batch(
                params, X, Y, np.full(B, 9), state0, None, 1, bulk
            )
            state = TrainState.fresh(params.copy(), batch=B, opt=opt.init_state(params))
            losses = np.empty(6)
            block = Streams(c, 9, B).block(0, 6)
            assert kernels.run_block(state, opt, c.data, *block, losses, None, 1, bulk) == 6
            slots = [a for s in opt.slots for a in state.opt[s].arrays()]
            results.append((np.array(loss), *grads.arrays(), *last, losses))
            results[-1] += (*state.params.arrays(), *slots)
        assert np.any(results[0][-1] != 0)  # the optimiser's slot of V, zero at the start
        assert_same_bits(results)


def test_optimiser_steps_run_on_threads_for_large_models_alone(monkeypatch):
    four_threads_of_eight_cores(monkeypatch)
    parts = lambda family, m, B=1: fast._parts(ModelSpec(family, K=65, m=m), B)  # noqa: E731
    assert parts("rnn", 128) == (1, 1)  # 33,217 parameters: below BULK_PARALLEL_MIN
    assert parts("gru", 128) == (1, 2)  # 83,009: BULK_PARALLEL_MIN / 2 per thread at least
    assert parts("lstm", 128) == (1, 3)  # 107,713
    assert parts("lstm", 256, 32) == (4, 4)  # the layers' steps in parts: the same threads
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert parts("lstm", 128) == (1, 1)


@pytest.mark.parametrize("family", ["rnn", "lstm", "gru"])
def test_large_products_by_blas_equal_the_reference_and_any_parts(family):
    """Products over a chunk of kernels.BLAS_MACS multiply-adds or more go to BLAS: a model
    whose products over all steps are that large (2 layers, m 128, batch 32, 10 steps, dropout)
    equals the reference to 1e-10 in float64 (loss, every gradient, the last states), and gives
    the same bits whether the steps run in 1 or 2 parts."""
    from charwise.engines import kernels

    c = corpus(2000)
    rng = np.random.default_rng(9)
    T, B, m = 10, 32, 128
    spec = ModelSpec(family, K=len(c.vocab), m=m, layers=2)
    assert spec.cell.GATES * m * m * T * B >= kernels.BLAS_MACS  # dW and the input products
    params = Params.init(spec, seed=4)
    for a in params.arrays():
        a += rng.standard_normal(a.shape) * 0.2
    X = rng.integers(0, len(c.vocab), (T, B))
    Y = rng.integers(0, len(c.vocab), (T, B))
    lengths = rng.integers(0, T + 1, B)
    lengths[0] = T
    state0 = tuple(rng.standard_normal(s.shape) * 0.5 for s in spec.zero_state(B))
    masks = [(rng.random((B, T, m)) > 0.3) / 0.7 for _ in range(2)]
    want = reference.loss_and_grads(params, X, Y, state0, lengths=lengths, masks=masks)
    results = []
    for parts in (1, 2):
        loss, grads, last = kernels.loss_and_grads_batch(
            params, X, Y, lengths, state0, masks, parts
        )
        assert abs(loss - want[0]) <= REL64 * want[0]
        for name, g in want[1].items():
            assert rel(grads[name], g) <= REL64, name
        for got, w in zip(last, want[2], strict=True):
            assert rel(got, w) <= REL64
        results.append((np.array(loss), *grads.arrays(), *last))
    for got, one in zip(results[1], results[0], strict=True):
        assert np.array_equal(got, one)


def test_chunked_sampling_from_several_threads_at_once(monkeypatch):
    """The dashboard samples for several requests at once, each in a thread of its own."""
    from concurrent.futures import ThreadPoolExecutor

    spec, params = chunked_model(monkeypatch)
    uniforms = np.random.default_rng(7).random((8, 3000))
    draw = lambda u: fast.sample(params, spec.zero_state(), 1, len(u), u)  # noqa: E731
    alone = [draw(u) for u in uniforms]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(draw, uniforms))
    assert all(np.array_equal(a, b) for a, b in zip(alone, together, strict=True))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX's")
def test_a_forked_child_steps_on_one_thread(monkeypatch):
    """numba's OpenMP layer (GNU libgomp) kills a forked child of a process that ran parallel
    work when the child starts some; the child steps on one thread instead, with the same
    results."""
    spec, params = chunked_model(monkeypatch)
    uniforms = np.random.default_rng(8).random(2000)
    want = fast.sample(params, spec.zero_state(), 1, 2000, uniforms)  # parallel in the parent
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if it drew the same characters
        got = fast.sample(params, spec.zero_state(), 1, 2000, uniforms)
        os._exit(0 if np.array_equal(got, want) and fast._chunks(spec) == 1 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def chunked_model(monkeypatch):
    """A small model stepped in chunks on several threads, as a large one is (the machine
    permitting: two cores and numba's OpenMP or TBB layer)."""
    monkeypatch.setattr(fast, "PARALLEL_MIN", 1)
    monkeypatch.setattr(fast, "PARALLEL_PID", [])
    spec = ModelSpec("lstm", K=11, m=12, layers=2)
    params = Params.init(spec, seed=4)
    for a in params.arrays():
        a += np.random.default_rng(6).standard_normal(a.shape) * 0.3
    if fast._cores() < 2:
        pytest.skip("one core: nothing runs on several threads")
    assert fast._chunks(spec) > 1
    return spec, params


# ---- the trainer -------------------------------------------------------------------------------
def train_run(tmp_path, capsys, engine: str, dtype: str = "float64"):
    """A Trainer run with small intervals; returns it and the update numbers it printed."""
    cfg = TrainConfig(m=12, seq_length=10, print_every=7, sample_every=40, sample_length=30)
    cfg.engine, cfg.dtype, cfg.passage_length = engine, dtype, 50
    trainer = Trainer(corpus(1500, seed=6), cfg, tmp_path / f"{engine}-{dtype}")
    trainer.run(250, progress=False)
    lines = capsys.readouterr().out.splitlines()
    printed = [int(line.split()[1]) for line in lines if line.startswith("update ")]
    return trainer, printed


def test_events_happen_at_the_same_updates_with_either_engine(tmp_path, capsys):
    runs = [
        train_run(tmp_path, capsys, "reference"),
        train_run(tmp_path, capsys, "fast"),
        train_run(tmp_path, capsys, "fast", "float32"),
    ]
    samples = [read_samples(trainer.out / "samples.txt") for trainer, _ in runs]
    assert [s["update"] for s in samples[0]] == [0, 40, 80, 120, 160, 200, 240]
    assert runs[0][1] == list(range(7, 250, 7))
    rows = [(trainer.out / "metrics.csv").read_text().splitlines() for trainer, _ in runs]
    first_loss = [float(r[1].split(",")[2]) for r in rows]
    for (trainer, printed), other, row, loss in zip(
        runs[1:], samples[1:], rows[1:], first_loss[1:], strict=True
    ):
        assert printed == runs[0][1]
        assert [s["update"] for s in other] == [s["update"] for s in samples[0]]
        assert other[0]["text"] == samples[0][0]["text"]  # same weights, same uniforms
        assert len(row) == len(rows[0]) == 251
        assert abs(loss - first_loss[0]) <= REL32 * first_loss[0]
        assert trainer.state.updates == runs[0][0].state.updates == 250
        assert (trainer.out / "final.npz").exists() and (trainer.out / "best.npz").exists()
    assert abs(first_loss[1] - first_loss[0]) <= REL64 * first_loss[0]


# ---- start-up ----------------------------------------------------------------------------------
def run_python(code: str, **env) -> str:
    full_env = {**os.environ, "PYTHONPATH": str(SRC), **env}
    full_env.pop("NUMBA_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_charwise_does_not_import_numba():
    code = "import sys, charwise, charwise.cli, charwise.train; print('numba' in sys.modules)"
    assert run_python(code) == "False"


@pytest.mark.parametrize(
    "name, value", [("OPENBLAS_THREAD_TIMEOUT", "20"), ("GOMP_SPINCOUNT", "10000")]
)
def test_idle_threads_sleep_soon_unless_the_user_says(name, value):
    code = f"import os; print(os.environ.get('{name}'))"
    unset = f"import os; os.environ.pop('{name}', None); import charwise; " + code[10:]
    assert run_python(unset) == value
    assert run_python("import charwise; " + code, **{name: "26"}) == "26"


def test_cache_dir_is_a_user_folder_only_for_a_read_only_package():
    env = {"XDG_CACHE_HOME": "/x/cache"}
    assert numerics.numba_cache_dir(False, env) == str(Path("/x/cache/charwise/numba"))
    assert numerics.numba_cache_dir(True, env) is None  # numba's __pycache__ beside the source
    assert numerics.numba_cache_dir(False, {**env, "NUMBA_CACHE_DIR": "/mine"}) is None
    assert numerics.numba_cache_dir(False, {}).endswith(str(Path(".cache/charwise/numba")))


@pytest.mark.slow
def test_read_only_package_compiles_once_into_the_user_cache(tmp_path):
    """The package folder is made to look read-only (os.access; tests may run as root)."""
    code = (
        "import os; real = os.access\n"
        "os.access = lambda p, m, **k: False if str(p).endswith('engines') else real(p, m, **k)\n"
        "import numpy as np\n"
        "from charwise.engines import fast, numerics\n"
        "from charwise.params import RNNParams\n"
        "fast.advance(RNNParams.init(4, 3), np.zeros(4), np.array([0, 2, 1]))\n"
        "print(numerics.CACHE_DIR, fast._advance.stats.cache_hits.most_common(1))"
    )
    cache = tmp_path / "cache"
    first = run_python(code, XDG_CACHE_HOME=str(cache))
    assert first.startswith(str(cache / "charwise" / "numba")) and first.endswith("[]")
    assert list((cache / "charwise" / "numba").rglob("*.nbi"))
    second = run_python(code, XDG_CACHE_HOME=str(cache))
    assert second.endswith(", 1)]")  # loaded from the cache, not compiled again


@pytest.mark.slow
def test_first_start_compiles_sampling_in_a_second_process(tmp_path):
    """warm_up on a fresh cache: the sampling side (here the exercise's) is compiled by another
    process beside training's, and this one loads it from the cache (on two cores or more)."""
    code = (
        "import numpy as np\n"
        "from charwise.engines import fast\n"
        "from charwise.models import ModelSpec\n"
        "fast.warm_up(np.float64, ModelSpec('rnn', K=3, m=2), exercise=True)\n"
        "hits = sum(f.stats.cache_hits.total() for f in (fast._sample, fast._evaluate))\n"
        "misses = sum(f.stats.cache_misses.total() for f in (fast._sample, fast._evaluate))\n"
        "print(hits, misses, fast._train_block.stats.cache_misses.total())"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "NUMBA_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    hits, misses, block_misses = out.stdout.split()
    assert block_misses == "1"  # training's kernels compiled here
    if fast._cores() > 1:
        assert (hits, misses) == ("2", "0")  # loaded: the other process compiled them
    else:
        assert (hits, misses) == ("0", "2")


def bench(tmp_path, *args) -> subprocess.CompletedProcess:
    """What `charwise bench` prints for a small English-like corpus and args."""
    path = tmp_path / "corpus.txt"
    path.write_text(english_like(3000), encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "charwise", "bench", str(path), *args],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    return out


def test_vectorised_tanh_and_sigmoid_are_accurate():
    """numerics' tanh and sigmoid against numpy's float64 ones: float64 to a few 1e-16, the
    float32 versions (float32 arithmetic) to a few float32 ulp (measured 5.8 and 2.6); NaN stays
    NaN, +-inf saturate."""
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [np.linspace(-30, 30, 600_001), rng.standard_normal(100_000) * 3]
        + [s * np.geomspace(1e-30, 80, 20_000) for s in (1, -1)]
    )
    for name, exact, f64, f32, ulps in (
        ("tanh", np.tanh, numerics._tanh, numerics._tanh32, 8),
        ("sigmoid", lambda v: 1 / (1 + np.exp(-v)), numerics._sigmoid, numerics._sigmoid32, 4),
    ):
        out, want = np.empty_like(x), exact(x)
        f64(x, out)
        scale = np.maximum(np.abs(want), 1e-300)  # tanh(0) = 0
        assert np.max(np.abs(out - want) / scale) < 2e-15, name
        x32, out32 = x.astype(np.float32), np.empty(x.size, np.float32)
        f32(x32, out32)
        want = exact(x32.astype(float))
        ulp = np.spacing(np.abs(want).astype(np.float32)).astype(float)
        assert np.max(np.abs(out32 - want) / ulp) <= ulps, name
        special = np.array([np.nan, np.inf, -np.inf, 0.0], np.float32)
        for f, a in ((f64, special.astype(float)), (f32, special)):
            got = np.empty_like(a)
            f(a, got)
            ends = [1.0, -1.0, 0.0] if name == "tanh" else [1.0, 0.0, 0.5]
            assert np.isnan(got[0]) and np.allclose(got[1:], ends, rtol=0, atol=1e-37), name


def test_vectorised_exp_is_accurate():
    """numerics' exp of the softmax (z <= 0, float64 or float32 z, float64 out) against
    numpy's to ~1 ulp; below EXP_MIN it is exp(EXP_MIN), NaN stays NaN."""
    z = -np.concatenate([np.linspace(0, 708, 700_001), np.geomspace(1e-300, 708, 20_000)])
    out = np.empty_like(z)
    numerics._exp_nonpositive(z, out)
    assert np.max(np.abs(out - np.exp(z)) / np.exp(z)) < 5e-16
    floor = np.empty(1)
    numerics._exp_nonpositive(np.array([numerics.EXP_MIN]), floor)
    for dtype in (np.float64, np.float32):
        got = np.empty(4)
        numerics._exp_nonpositive(np.array([np.nan, -np.inf, -800.0, -0.0], dtype), got)
        assert np.isnan(got[0]) and np.all(got[1:] == [*floor, *floor, 1.0]), got


def test_powers_of_two_from_bits_are_exact():
    """exp's 2^k, made from the bits of the float (numerics._pow2, _pow2_32), is exactly
    numpy's ldexp over the normal range (float64 and float32)."""
    for k in range(-1022, 1024):
        assert numerics._pow2(float(k)) == np.ldexp(1.0, k), k
    for k in range(-126, 128):
        assert numerics._pow2_32(np.float32(k)) == np.ldexp(np.float32(1.0), k), k


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.uname().machine != "x86_64",
    reason="numpy's and SciPy's wheels carry OpenBLAS with every x86 kernel on Linux",
)
def test_bench_names_the_blas_kernels_that_run():
    """The benchmarks' machine line names each BLAS and the kernels it runs: the one
    OPENBLAS_CORETYPE asks for where it is set (as on this project's machines; the test leaves
    the variable as it finds it), else OpenBLAS's own choice."""
    libraries = blas().removeprefix("BLAS ").split("; ")
    assert [lib.split(":")[0] for lib in libraries] == ["SciPy", "numpy"], libraries
    kernels = [lib.rsplit(", ", 1)[1].removesuffix(" kernels") for lib in libraries]
    assert all("openblas" in lib for lib in libraries) and all(kernels), libraries
    if os.environ.get("OPENBLAS_CORETYPE"):
        assert {k.lower() for k in kernels} == {os.environ["OPENBLAS_CORETYPE"].lower()}


def test_measurements_are_sized_past_a_calls_fixed_cost():
    """A benchmark sizes its measurements to about SECONDS from a measurement of at least half
    that: from a first one of 2 updates, a fixed 20 ms per call would make every measurement
    about 38 updates of 0.5 ms, a third of it the fixed cost."""
    calls = []

    def rate(n, fixed):
        calls.append(n)
        return n / (fixed + 0.0005 * n)

    seconds = benchmarks.SECONDS
    assert benchmarks._sized(lambda n: rate(n, 0.0), 2) == round(seconds / 0.0005)
    calls.clear()
    size = benchmarks._sized(lambda n: rate(n, 0.020), 2)
    assert calls == [2, 8, 32, 128, 512]  # the last: 0.276 s, the first over seconds / 2
    assert 0.9 * seconds <= size * 0.0005 <= seconds


@pytest.mark.slow
def test_bench_command_prints_every_engine(tmp_path):
    out = bench(tmp_path, "--m", "8", "--seq-length", "10", "--repeats", "1")
    for label in (
        "(a) classic",
        "(b) reference",
        "(c) fast float64",
        "(d) fast float32",
        "(e) torch",
    ):
        assert label in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.startswith("(")]
    assert rows[0].split()[-1] == "1.0x" and all(row.endswith("x") for row in rows[:4])


@pytest.mark.slow
def test_bench_compares_every_engine_on_any_model(tmp_path):
    """charwise bench --model ... --batch ...: each engine that runs the model, training,
    sampling and validation in characters per second against the reference, every engine
    (both dtypes of the fast one) included."""
    args = ["--model", "gru", "--layers", "2", "--m", "8", "--batch", "3", "--seq-length", "10"]
    out = bench(tmp_path, *args, "--optimizer", "adam", "--repeats", "2")
    assert "2-layer gru m = 8, adam, batch 3, seq length 10, median of 2" in out.stdout
    rows = {line[:24].strip(): line[24:].split() for line in out.stdout.splitlines()[4:]}
    labels = ["reference float64", "fast float64", "fast float32"]
    if importlib.util.find_spec("torch") is not None:
        labels += ["torch float32, 1 thread", f"torch float32, {os.cpu_count()} threads"]
    assert [label for label in rows if not label.startswith("note")] == labels
    assert rows["reference float64"][1::2] == ["1.0x", "1.0x", "1.0x"]
    for label in labels:
        rates = [float(v.replace(",", "")) for v in rows[label][0::2]]
        assert len(rates) == 3 and all(r > 0 for r in rates), label
    assert "left out" not in out.stdout  # every engine runs every model
