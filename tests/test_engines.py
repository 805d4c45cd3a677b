"""Every engine against the reference engine (the oracle), from identical states, for every
combination it runs: one comparison suite, parametrised over engines and models."""

from __future__ import annotations

import copy
import importlib.util
import os

import numpy as np
import pytest

from charwise.corpus import Corpus, load_corpus
from charwise.engines import fast, get_engine, kernels, reference, why_not
from charwise.models import ModelSpec
from charwise.optim import LRSchedule, make_optimizer
from charwise.params import Params
from charwise.schedule import Streams
from charwise.state import TrainState
from conftest import english_like
from test_families import rel

REL = 1e-10  # float64: the same math, rounded differently (~1e-15)
has_torch = importlib.util.find_spec("torch") is not None
if not has_torch and os.environ.get("CHARWISE_REQUIRE_TORCH"):
    raise RuntimeError("CHARWISE_REQUIRE_TORCH is set but torch is not installed")

# (family, layers, batch, optimizer, dropout): the exercise, then what lies beyond it
CASES = (
    [("rnn", 1, 1, "adagrad", 0.0)]
    + [
        (family, layers, batch, optimizer, dropout)
        for family in ("rnn", "lstm", "gru")
        for layers, batch, optimizer, dropout in (
            (1, 4, "adam", 0.0),
            (2, 1, "rmsprop", 0.0),
            (2, 4, "adam", 0.3),
        )
    ]
    + [("lstm", 1, 3, "adagrad", 0.0)]
)  # AdaGrad beyond the exercise
ENGINES = ["fast"] + (["torch"] if has_torch else [])
PAIRS = [
    pytest.param(engine, *case, id=f"{engine}-{case[0]}-L{case[1]}-B{case[2]}-{case[3]}-p{case[4]}")
    for engine in ENGINES
    for case in CASES
    if why_not(engine, ModelSpec(case[0], 30, 6, case[1]), case[3], case[2], case[4], "float64")
    is None
]


def text_data(n: int = 3000, seed: int = 0):
    from charwise.vocab import Vocab

    text = english_like(n, seed)
    vocab = Vocab.from_text(text)
    return vocab, vocab.encode(text)


def random_state(family, layers, batch, optimizer, K, m=6, seed=3) -> TrainState:
    """A state far from the initial one: non-zero weights, biases, optimiser slots, carry."""
    rng = np.random.default_rng(seed)
    params = Params.init(ModelSpec(family, K, m, layers), seed, sig=0.3)
    for a in params.arrays():
        a += 0.2 * rng.standard_normal(a.shape)
    state = TrainState.fresh(params, make_optimizer(optimizer, 0.01).slots, batch)
    for slot in state.opt.values():
        for a in slot.arrays():
            a[...] = rng.uniform(0.0, 0.2, a.shape)
    for s in state.carry:
        s[...] = rng.uniform(-0.5, 0.5, s.shape)
    state.updates, state.smooth_loss = 5, 40.0
    return state


def assert_close(a: TrainState, b: TrainState, tol: float = REL) -> None:
    for name, x in a.params.items():
        assert rel(x, b.params[name]) <= tol, name
    for slot, p in a.opt.items():
        for name, x in p.items():
            assert rel(x, b.opt[slot][name]) <= tol, f"{slot}_{name}"
    for x, y in zip(a.carry, b.carry, strict=True):
        assert rel(x, y) <= tol
    assert abs(a.smooth_loss - b.smooth_loss) <= tol * abs(b.smooth_loss)
    assert (a.updates, a.best_update) == (b.updates, b.best_update)


@pytest.mark.parametrize("engine, family, layers, batch, optimizer, dropout", PAIRS)
def test_updates_each_from_the_reference_state(engine, family, layers, batch, optimizer, dropout):
    """30 updates (epoch boundaries and best-model snapshots among them); each starts from the
    reference's state and is compared with the reference's update, masks drawn alike."""
    eng = get_engine(engine)
    vocab, data = text_data()
    schedule = Streams(Corpus("t", vocab, data), 10, batch)
    state = random_state(family, layers, batch, optimizer, len(vocab))
    opt = make_optimizer(optimizer, 0.01)
    for u in range(30):
        starts, lengths, resets = schedule.block(state.updates, 1)
        dropouts = []
        for _ in range(2):  # the same masks for both engines: the same seeded generator
            dropouts.append(
                reference.Dropout(dropout, 10, np.random.default_rng((u, 2))) if dropout else None
            )
        ref_state = copy.deepcopy(state)
        losses, ref_losses = np.empty(1), np.empty(1)
        assert eng.run_block(state, opt, data, starts, lengths, resets, losses, dropouts[0]) == 1
        assert (
            reference.run_block(
                ref_state, opt, data, starts, lengths, resets, ref_losses, dropouts[1]
            )
            == 1
        )
        assert abs(losses[0] - ref_losses[0]) <= REL * ref_losses[0]
        assert_close(state, ref_state)
        state = ref_state  # re-seeded from the reference: differences never accumulate


def documents(tmp_path, n: int = 120):
    """A corpus of n short documents (one per line): streams of chunks of several lengths."""
    rng = np.random.default_rng(5)
    lines = [english_like(int(rng.integers(5, 60)), seed=i).replace("\n", " ") for i in range(n)]
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    return load_corpus(path, format="lines")


BLOCKS = [("lstm", 2, 3, "adam", 0.3), ("gru", 2, 3, "rmsprop", 0.0), ("rnn", 1, 2, "adagrad", 0.2)]


@pytest.mark.parametrize("family, layers, batch, optimizer, dropout", BLOCKS)
def test_fast_block_in_one_call_is_its_updates_one_at_a_time(
    family, layers, batch, optimizer, dropout, tmp_path, monkeypatch
):
    """The fast engine runs a block of updates in one compiled call (with dropout, in parts whose
    draws are taken at once: here at most 5 updates a part); bit for bit the same as one update
    per call, the dropout generator left where the reference leaves it, and the reference's
    results to REL, on documents (chunks of several lengths, states reset at each document)
    with a cosine schedule."""
    corpus = documents(tmp_path)
    tau, n, m = 8, 12, 6
    monkeypatch.setattr(kernels, "MASK_BYTES", 5 * 8 * layers * batch * tau * m)
    state = random_state(family, layers, batch, optimizer, len(corpus.vocab), m)
    opt = make_optimizer(optimizer, 0.01)
    opt.schedule = LRSchedule("cosine", 3, 0.1, 15)
    starts, lengths, resets = Streams(corpus, tau, batch).block(state.updates, n)
    assert len(set(lengths.ravel())) > 2 and resets.any()  # the documents' shapes are there
    whole, one, ref = (copy.deepcopy(state) for _ in range(3))
    drops = [
        reference.Dropout(dropout, tau, np.random.default_rng(7)) if dropout else None
        for _ in range(3)
    ]
    losses = np.empty((3, n))
    data = corpus.data
    assert fast.run_block(whole, opt, data, starts, lengths, resets, losses[0], drops[0]) == n
    for k in range(n):
        block = (starts[k : k + 1], lengths[k : k + 1], resets[k : k + 1])
        assert fast.run_block(one, opt, data, *block, losses[1, k : k + 1], drops[1]) == 1
    assert reference.run_block(ref, opt, data, starts, lengths, resets, losses[2], drops[2]) == n
    for name, a in whole.arrays().items():
        assert np.array_equal(a, one.arrays()[name]), name
    assert np.array_equal(losses[0], losses[1])
    scalars = ("updates", "smooth_loss", "best_smooth", "best_update", "best_x0")
    assert [getattr(whole, s) for s in scalars] == [getattr(one, s) for s in scalars]
    assert_close(whole, ref)
    assert rel(losses[0], losses[2]) <= REL and whole.best_x0 == ref.best_x0
    if dropout:
        assert drops[0].state() == drops[1].state() == drops[2].state()


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_fast_block_stops_where_the_reference_stops(dropout, tmp_path, monkeypatch):
    """A NaN in the input weights of one character: the first update that reads it is not
    applied by either engine, the count done is the same, and the dropout generator ends where
    the reference's does (the draws of the updates done and of the failed one), also when the
    failure falls inside the second part of a block."""
    corpus = documents(tmp_path)
    tau, n, batch = 8, 12, 2
    monkeypatch.setattr(kernels, "MASK_BYTES", 4 * 8 * 2 * batch * tau * 6)
    state = random_state("lstm", 2, batch, "adam", len(corpus.vocab))
    starts, lengths, resets = Streams(corpus, tau, batch).block(state.updates, n)
    read = [  # the characters each update reads
        set().union(*(corpus.data[s : s + q].tolist() for s, q in zip(ss, qs, strict=True)))
        for ss, qs in zip(starts, lengths, strict=True)
    ]
    first = {ch: next(k for k, r in enumerate(read) if ch in r) for ch in set().union(*read)}
    ch, stop = max(first.items(), key=lambda item: item[1])
    assert 4 < stop < n  # in the second part of the block
    state.params["U"][:, ch] = np.nan
    opt = make_optimizer("adam", 0.01)
    done, drops = [], []
    for engine in (fast, reference):
        s = copy.deepcopy(state)
        drops.append(reference.Dropout(dropout, tau, np.random.default_rng(3)) if dropout else None)
        losses = np.empty(n)
        done.append(
            engine.run_block(s, opt, corpus.data, starts, lengths, resets, losses, drops[-1])
        )
        assert s.updates == state.updates + stop and np.isnan(losses[stop])
    assert done == [stop, stop]
    if dropout:
        assert drops[0].state() == drops[1].state()


@pytest.mark.parametrize("engine, family, layers, batch, optimizer, dropout", PAIRS)
def test_loss_gradients_and_state(engine, family, layers, batch, optimizer, dropout):
    eng = get_engine(engine)
    vocab, data = text_data()
    state = random_state(family, layers, batch, optimizer, len(vocab))
    rng = np.random.default_rng(1)
    starts = rng.integers(0, len(data) - 12, batch)
    lengths = np.full(batch, 10)
    if batch > 1:
        lengths[1:] = [4, 10, 7][: batch - 1]  # document chunks of several lengths
    X, Y = reference.chunk_arrays(data, starts, lengths)
    masks = [(rng.random((batch, 10, 6)) >= 0.3) / 0.7 for _ in range(layers)]
    kw = dict(lengths=lengths, masks=masks if dropout else None)
    if (family, layers, batch) == ("rnn", 1, 1):  # the exercise's interface too: h alone
        h0 = state.carry[0][0, 0]
        got = eng.loss_and_grads(state.params, X[:, 0], Y[:, 0], h0)
        want = reference.loss_and_grads(state.params, X[:, 0], Y[:, 0], h0)
        assert abs(got[0] - want[0]) <= REL * want[0] and rel(got[2], want[2]) <= REL
        for name, g in want[1].items():
            assert rel(got[1][name], g) <= REL, name
    got = eng.loss_and_grads(state.params, X, Y, state.carry, **kw)
    want = reference.loss_and_grads(state.params, X, Y, state.carry, **kw)
    assert abs(got[0] - want[0]) <= REL * want[0]
    for name, g in want[1].items():
        assert rel(got[1][name], g) <= REL, name
    for a, b in zip(np.atleast_1d(got[2]), np.atleast_1d(want[2]), strict=True):
        assert rel(a, b) <= REL


@pytest.mark.parametrize("engine, family, layers, batch, optimizer, dropout", PAIRS)
def test_samples_and_validation_loss(engine, family, layers, batch, optimizer, dropout):
    eng = get_engine(engine)
    vocab, data = text_data()
    state = random_state(family, layers, 1, optimizer, len(vocab))
    uniforms = np.random.default_rng(7).random(300)
    h0 = tuple(s[:, :1] for s in state.carry)
    # float32 weights too (the fast engine keeps W in float32 for these): the reference upcasts
    # them, and both compute in float64 on the same values
    for params in (state.params, *([state.params.astype(np.float32)] * (engine == "fast"))):
        for temperature, top_p in ((1.0, 1.0), (0.7, 0.9), (0.0, 1.0)):
            got = eng.sample(params, h0, 4, 300, uniforms, temperature, top_p)
            want = reference.sample(params, h0, 4, 300, uniforms, temperature, top_p)
            assert np.array_equal(got, want)
        for runs in (None, [(0, 40), (39, 41), (40, 700), (699, 2000)]):  # a text; documents
            got, want = eng.evaluate(params, data, runs), reference.evaluate(params, data, runs)
            assert got[1] == want[1] and abs(got[0] - want[0]) <= REL * want[0]
        h, want = eng.advance(params, h0, data[:50]), reference.advance(params, h0, data[:50])
        for a, b in zip(np.atleast_1d(h), np.atleast_1d(want), strict=True):
            assert rel(a, b) <= REL


def as_float32(state: TrainState) -> TrainState:
    """The state with every array rounded to float32 (the float64 reference then runs on the
    same values)."""
    f32 = lambda p: p.astype(np.float32)  # noqa: E731
    state = copy.deepcopy(state)
    state.params, state.best = f32(state.params), f32(state.best)
    state.opt = {slot: f32(p) for slot, p in state.opt.items()}
    state.carry = tuple(s.astype(np.float32) for s in state.carry)
    state.best_carry = tuple(s.astype(np.float32) for s in state.best_carry)
    return state


def as_float64(state: TrainState) -> TrainState:
    state = copy.deepcopy(state)
    state.params, state.best = state.params.astype(np.float64), state.best.astype(np.float64)
    state.opt = {slot: p.astype(np.float64) for slot, p in state.opt.items()}
    state.carry = tuple(s.astype(np.float64) for s in state.carry)
    return state


# float32 against the float64 reference on the same float32 values: float32 rounding (eps 6e-8)
# grows through sums of ~m terms and the recurrence over tau = 10 steps, and dL/dW sums
# B x tau products; the gates are float32 to a few ulp (numerics._tanh32, _sigmoid32); measured
# at most 5.1e-7 in the test below (4.4e-7 with float64 gates), bound with a factor ~20 of margin.
REL32 = 1e-5
FAST_PAIRS = [p for p in PAIRS if p.values[0] == "fast"]


@pytest.mark.parametrize("engine, family, layers, batch, optimizer, dropout", FAST_PAIRS)
def test_float32_equals_the_reference_to_float32_rounding(
    engine, family, layers, batch, optimizer, dropout
):
    """The fast engine in float32: loss, every gradient and the carried states of a chunk, then
    10 updates each from the reference's state (rounded to float32), masks drawn alike."""
    eng = get_engine(engine)
    vocab, data = text_data()
    state = as_float32(random_state(family, layers, batch, optimizer, len(vocab)))
    rng = np.random.default_rng(1)
    starts = rng.integers(0, len(data) - 12, batch)
    lengths = np.full(batch, 10)
    lengths[1:] = [4, 10, 7][: batch - 1]
    X, Y = reference.chunk_arrays(data, starts, lengths)
    masks = [(rng.random((batch, 10, 6)) >= 0.3) / 0.7 for _ in range(layers)]
    kw = dict(lengths=lengths, masks=masks if dropout else None)
    got = eng.loss_and_grads(state.params, X, Y, state.carry, **kw)
    want = reference.loss_and_grads(state.params.astype(np.float64), X, Y, state.carry, **kw)
    assert abs(got[0] - want[0]) <= REL32 * want[0]
    for name, g in want[1].items():
        assert got[1][name].dtype == np.float32 and rel(got[1][name], g) <= REL32, name
    for a, b in zip(got[2], want[2], strict=True):
        assert a.dtype == np.float32 and rel(a, b) <= REL32
    schedule = Streams(Corpus("t", vocab, data), 10, batch)
    opt = make_optimizer(optimizer, 0.01)
    for u in range(10):
        block = schedule.block(state.updates, 1)
        dropouts = [reference.Dropout(dropout, 10, np.random.default_rng((u, 2))) for _ in "ab"]
        dropouts = dropouts if dropout else [None, None]
        ref_state = as_float64(state)
        losses, ref_losses = np.empty(1), np.empty(1)
        assert eng.run_block(state, opt, data, *block, losses, dropouts[0]) == 1
        assert reference.run_block(ref_state, opt, data, *block, ref_losses, dropouts[1]) == 1
        assert abs(losses[0] - ref_losses[0]) <= REL32 * ref_losses[0]
        assert state.params.dtype == np.float32 and state.carry[0].dtype == np.float32
        assert_close(state, ref_state, REL32)
        state = as_float32(ref_state)


@pytest.mark.parametrize(
    "family, layers, batch, optimizer, dtype",
    [
        ("rnn", 2, 4, "rmsprop", "float32"),
        ("lstm", 1, 8, "adam", "float64"),
        ("gru", 2, 4, "adagrad", "float32"),
    ],
)
def test_free_running_fast_runs_learn_as_the_reference(family, layers, batch, optimizer, dtype):
    """400 updates from one initial state, each engine on its own (their rounding differs, and
    training can amplify it): the mean loss of the last 100 updates agrees within 2%
    (measured: 0.17% for the float32 rnn, ~1e-15 in float64), and both learned (below 70% of
    the first loss)."""
    vocab, data = text_data(20_000)
    spec = ModelSpec(family, len(vocab), 32, layers)
    schedule = Streams(Corpus("t", vocab, data), 20, batch)
    curves = {}
    for engine, dt in (("reference", "float64"), ("fast", dtype)):
        params = Params.init(spec, seed=2, dtype=np.dtype(dt))
        opt = make_optimizer(optimizer, 0.1 if optimizer == "adagrad" else 0.01)
        state = TrainState.fresh(params, opt.slots, batch)
        losses = np.empty(400)
        dropout = reference.Dropout(0.1, 20, np.random.default_rng(5))
        block = schedule.block(0, 400)
        assert get_engine(engine).run_block(state, opt, data, *block, losses, dropout) == 400
        curves[engine] = losses
    ref, fast = (curves[e][-100:].mean() for e in ("reference", "fast"))
    assert abs(fast - ref) <= 0.02 * ref
    assert ref < 0.7 * curves["reference"][0] and fast < 0.7 * curves["fast"][0]


needs_torch = pytest.mark.skipif(not has_torch, reason="torch not installed")


@needs_torch
def test_torch_runs_resume_bit_identically(tmp_path):
    """Stopped (as by Ctrl-C) and resumed with the torch engine on the CPU: the same run
    directory as one uninterrupted run."""
    from charwise.train import Trainer
    from runs import assert_same_run, small_config, write_corpus
    from test_resume import interrupted_at

    corpus = load_corpus(write_corpus(tmp_path / "words.txt"))
    settings = dict(model="lstm", layers=2, optimizer="adam", batch=4, dropout=0.2)
    config = lambda: small_config("torch", eval_every=30, val_fraction=0.1, **settings)  # noqa: E731
    Trainer(corpus, config(), tmp_path / "whole").run(80, progress=False)
    interrupted_at(Trainer(corpus, config(), tmp_path / "part"), 37, 80)
    Trainer.resume(tmp_path / "part", corpus).run(80, progress=False)
    assert_same_run(tmp_path / "whole", tmp_path / "part")


@needs_torch
@pytest.mark.parametrize(
    "first, then, settings",
    [
        ("fast", "torch", {}),  # the exercise: the fast engine's run continued by torch
        ("torch", "fast", {}),
        ("torch", "reference", dict(model="gru", batch=3, optimizer="rmsprop")),
        ("reference", "torch", dict(model="lstm", layers=2, optimizer="adam")),
    ],
)
def test_engines_take_over_each_others_runs(first, then, settings, tmp_path):
    """A checkpoint written by one engine continues with another: the state carries over
    exactly, and the run goes on as one engine's run does, to rounding (float64)."""
    from charwise import checkpoint
    from charwise.train import Trainer
    from runs import small_config, write_corpus

    corpus = load_corpus(write_corpus(tmp_path / "words.txt"))
    config = lambda engine: small_config(engine, **settings)  # noqa: E731
    Trainer(corpus, config(first), tmp_path / "one").run(100, progress=False)
    Trainer(corpus, config(first), tmp_path / "two").run(50, progress=False)
    Trainer.resume(tmp_path / "two", corpus, engine=then).run(100, progress=False)
    one, two = (checkpoint.load(tmp_path / r / "checkpoint.npz") for r in ("one", "two"))
    assert two[1]["resumes"][-1]["changed"] == {"engine": [first, then]}
    assert two[1]["engine_used"].startswith(then)
    for name, a in one[0].items():  # 50 updates after the switch: still the same run
        assert rel(two[0][name], a) <= 1e-8, name


def test_the_torch_engine_without_torch_is_a_one_line_error(monkeypatch):
    """charwise imports and runs every other engine without torch; asking for it says how."""
    import sys

    from charwise.errors import CharwiseError

    monkeypatch.setitem(sys.modules, "torch", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "charwise.engines.torch", raising=False)
    with pytest.raises(
        CharwiseError, match=r'--engine torch needs PyTorch: pip install -e "\.\[torch\]"'
    ):
        get_engine("torch")
    assert get_engine("reference") is reference


@needs_torch
@pytest.mark.parametrize(
    "settings",
    [
        dict(dtype="bfloat16"),
        dict(dropout_rng="device"),
        dict(dtype="bfloat16", dropout_rng="device"),
    ],
    ids=["bfloat16", "dropout-rng-device", "both"],
)
def test_torch_only_options_train_and_resume_exactly(settings, tmp_path):
    """bfloat16 autocast (float32 weights) and device-drawn dropout masks: a run stopped and
    resumed equals one run; their checkpoints hold float32 arrays every engine reads."""
    from charwise import checkpoint
    from charwise.engines import torch as torch_engine
    from charwise.model import CharModel
    from charwise.train import Trainer
    from runs import assert_same_run, small_config, write_corpus
    from test_resume import interrupted_at

    if settings.get("dtype") == "bfloat16" and not torch_engine.cpu_has_bfloat16():
        pytest.skip("PyTorch's oneDNN has no bfloat16 on this CPU: its refusal is tested below")
    corpus = load_corpus(write_corpus(tmp_path / "words.txt"))
    base = dict(model="lstm", layers=2, optimizer="adam", batch=4, dropout=0.2, val_fraction=0.1)
    config = lambda: small_config("torch", eval_every=30, **base | settings)  # noqa: E731
    Trainer(corpus, config(), tmp_path / "whole").run(70, progress=False)
    interrupted_at(Trainer(corpus, config(), tmp_path / "part"), 31, 70)
    Trainer.resume(tmp_path / "part", corpus).run(70, progress=False)
    assert_same_run(tmp_path / "whole", tmp_path / "part")
    arrays, meta = checkpoint.load(tmp_path / "whole" / "checkpoint.npz")
    stored = np.float32 if settings.get("dtype") == "bfloat16" else np.float64
    assert {a.dtype for a in arrays.values()} == {np.dtype(stored)}
    assert np.isfinite(meta["smooth_loss"]) and meta["smooth_loss"] < 2 * 10 * np.log(27)
    model, _ = CharModel.load(tmp_path / "whole" / "best-val.npz")
    assert len(model.sample(30, seed=1)) == 30  # the reference engine samples it


@needs_torch
@pytest.mark.parametrize("supported", [False, True])
def test_bfloat16_on_a_cpu_without_it_is_refused_before_the_run(supported, tmp_path, monkeypatch):
    """Where oneDNN has no bfloat16 (an AVX2 CPU), PyTorch's LSTM under autocast fails deep in
    the first update: charwise refuses at the start, with the fix, and leaves no run behind."""
    from charwise.engines import torch as torch_engine
    from charwise.errors import CharwiseError
    from charwise.train import Trainer
    from runs import small_config, write_corpus

    monkeypatch.setattr(torch_engine, "cpu_has_bfloat16", lambda: supported)
    corpus = load_corpus(write_corpus(tmp_path / "words.txt"))
    config = small_config("torch", model="lstm", dtype="bfloat16", device="cpu")
    if supported:
        Trainer(corpus, config, tmp_path / "run")
        assert torch_engine.AUTOCAST
    else:
        with pytest.raises(CharwiseError, match="bfloat16 needs a GPU or a CPU with AVX-512.*"
                           "use --dtype float32"):  # fmt: skip
            Trainer(corpus, config, tmp_path / "run")
        assert not (tmp_path / "run").exists()
    torch_engine.use_autocast(False)


def test_device_dropout_and_bfloat16_need_the_torch_engine(tmp_path):
    from charwise.errors import CharwiseError
    from charwise.train import Trainer
    from runs import small_config, write_corpus

    corpus = load_corpus(write_corpus(tmp_path / "words.txt"))
    with pytest.raises(CharwiseError, match="--dropout-rng device needs --engine torch"):
        Trainer(corpus, small_config("reference", dropout=0.1, dropout_rng="device"), tmp_path)
    with pytest.raises(
        CharwiseError, match="no engine runs rnn m = 8 in bfloat16 on its own; use --engine torch"
    ):
        Trainer(corpus, small_config("auto", dtype="bfloat16"), tmp_path)


def has_gpu() -> bool:
    if not has_torch:
        return False
    import torch

    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or (mps is not None and mps.is_available())


@pytest.mark.gpu
@pytest.mark.skipif(not has_gpu(), reason="no CUDA or MPS device")
@pytest.mark.parametrize("family", ["rnn", "lstm", "gru"])
def test_on_the_gpu_the_math_is_the_reference_s(family):
    """On a CUDA device (float64): loss and gradients as the reference's."""
    import torch

    eng = get_engine("torch")
    try:
        eng.use_device("auto")
        vocab, data = text_data()
        state = random_state(family, 2, 4, "adam", len(vocab))
        X, Y = reference.chunk_arrays(data, np.array([0, 50, 99, 160]), np.array([10, 10, 6, 9]))
        lengths = [10, 10, 6, 9]
        got = eng.loss_and_grads(state.params, X, Y, state.carry, lengths)
        want = reference.loss_and_grads(state.params, X, Y, state.carry, lengths)
        tol = REL if eng.DEVICE.type == "cuda" else 1e-5  # MPS has no float64
        assert abs(got[0] - want[0]) <= tol * want[0]
        for name, g in want[1].items():
            assert rel(got[1][name], g) <= tol, name
        assert torch.device(eng.DEVICE).type != "cpu"
    finally:
        eng.use_device("cpu")
