"""Model families, layers, dropout, mini-batches and optimisers (SPEC.md, "Beyond the
exercise") against hand-computed cases, centered differences and PyTorch autograd."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from charwise import gradcheck as gc
from charwise.corpus import Corpus
from charwise.engines import reference
from charwise.models import ModelSpec
from charwise.optim import AdaGrad, Adam, RMSProp
from charwise.params import Params, RNNParams
from charwise.vocab import Vocab
from conftest import english_like

FAMILIES = ["rnn", "lstm", "gru"]
REL = 1e-10  # float64: two implementations of the same math agree to ~1e-15
has_torch = importlib.util.find_spec("torch") is not None
if not has_torch and os.environ.get("CHARWISE_REQUIRE_TORCH"):  # CI: never skip the oracle
    raise RuntimeError("CHARWISE_REQUIRE_TORCH is set but torch is not installed")
needs_torch = pytest.mark.skipif(not has_torch, reason="torch not installed (pip install torch)")


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def trained_like(family: str, layers: int, K: int = 7, m: int = 5, seed: int = 3) -> Params:
    """Parameters with every array non-zero (biases too), so every gradient is exercised."""
    params = Params.init(ModelSpec(family, K, m, layers), seed, sig=0.3)
    rng = np.random.default_rng(seed)
    for a in params.arrays():
        a += 0.2 * rng.standard_normal(a.shape)
    return params


def batch(spec: ModelSpec, T: int, B: int, seed: int = 0):
    """Random inputs and targets (T, B) and a non-zero carried state."""
    rng = np.random.default_rng(seed)
    X, Y = rng.integers(0, spec.K, (T, B)), rng.integers(0, spec.K, (T, B))
    state = tuple(rng.uniform(-0.8, 0.8, (spec.layers, B, spec.m)) for _ in spec.state_names)
    return X, Y, state


# ---- initialisation --------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["lstm", "gru"])
def test_init_draws_each_layer_then_V_uniformly(family):
    m, K = 4, 6
    params = Params.init(ModelSpec(family, K, m, layers=2), seed=5)
    G = {"lstm": 4, "gru": 3}[family]
    rng, s = np.random.default_rng(5), 1 / np.sqrt(m)
    for U, W, n_in in (("U", "W", K), ("U2", "W2", m)):
        np.testing.assert_array_equal(params[U], rng.uniform(-s, s, (G * m, n_in)))
        np.testing.assert_array_equal(params[W], rng.uniform(-s, s, (G * m, m)))
    np.testing.assert_array_equal(params["V"], rng.uniform(-s, s, (K, m)))
    forget = np.zeros(G * m)
    if family == "lstm":
        forget[m : 2 * m] = 1.0  # the forget gate's bias starts at 1
    np.testing.assert_array_equal(params["b"], forget)
    np.testing.assert_array_equal(params["b2"], forget)
    assert not params["c"].any() and (family != "gru" or not params["bhn"].any())
    names = ["b", "b2", "c", "U", "W", "U2", "W2", "V"]
    if family == "gru":
        names = ["b", "bhn", "b2", "bhn2", "c", "U", "W", "U2", "W2", "V"]
    assert params.names() == names


def test_one_layer_rnn_is_the_exercise():
    exercise = RNNParams.init(6, 9, sig=0.01, seed=4)
    general = Params.init(ModelSpec("rnn", 9, 6), seed=4, sig=0.01)
    assert general.names() == ["b", "c", "U", "W", "V"]
    for a, b in zip(exercise.arrays(), general.arrays(), strict=True):
        np.testing.assert_array_equal(a, b)


# ---- gradients -------------------------------------------------------------------------------
@needs_torch
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("dropout", [False, True])
def test_loss_and_every_gradient_equal_torch_autograd(family, layers, B, dropout):
    """The seed exercise's second check: the same network in torch (nn.RNN/LSTM/GRU per
    layer, nn.Linear), from a non-zero carried state, differentiated by autograd."""
    import torch_oracle

    params = trained_like(family, layers)
    X, Y, state = batch(params.spec, 6, B)
    masks = None
    if dropout:
        rng = np.random.default_rng(9)
        masks = [(rng.random((B, 6, 5)) >= 0.3) / 0.7 for _ in range(layers)]
    L, grads, _ = reference.loss_and_grads(params, X, Y, state, None, masks)
    modules, linear = torch_oracle.layers(params), torch_oracle.output(params)
    L_torch = torch_oracle.loss(params, modules, linear, X, Y, state, masks)
    L_torch.backward()
    assert abs(L - L_torch.item()) <= REL * L_torch.item()
    expected = torch_oracle.grads(params, modules, linear)
    assert sorted(expected) == sorted(grads.names())
    for name, g in grads.items():
        assert rel(g, expected[name]) <= REL, f"d{name}: {rel(g, expected[name]):.2e}"


@pytest.mark.parametrize("family", FAMILIES)
def test_carried_state_equals_reading_the_chunk_on(family):
    """The state a chunk leaves behind is the state after its last character (and the next
    chunk from it gives the same loss as the two read as one)."""
    params = trained_like(family, 2)
    X, Y, state = batch(params.spec, 8, 2)
    L_whole, _, last_whole = reference.loss_and_grads(params, X, Y, state)
    L_a, _, mid = reference.loss_and_grads(params, X[:5], Y[:5], state)
    L_b, _, last = reference.loss_and_grads(params, X[5:], Y[5:], mid)
    assert L_a + L_b == pytest.approx(L_whole, rel=1e-13)
    for a, b in zip(last, last_whole, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13)


@pytest.mark.parametrize("family", FAMILIES)
def test_identical_streams_give_the_one_stream_loss_and_gradients(family):
    """L = (1/B) sum_b L_b: B copies of one stream are that stream."""
    params = trained_like(family, 2)
    X, Y, state = batch(params.spec, 7, 1)
    L1, g1, _ = reference.loss_and_grads(params, X, Y, state)
    tile = lambda a: np.repeat(a, 4, axis=1)  # noqa: E731
    L4, g4, last = reference.loss_and_grads(params, tile(X), tile(Y), tuple(map(tile, state)))
    assert L4 == pytest.approx(L1, rel=1e-13)
    for name, g in g1.items():
        np.testing.assert_allclose(g4[name], g, rtol=1e-12, atol=1e-15)
    assert all(s.shape[1] == 4 for s in last)


def test_shorter_streams_are_padded_without_effect():
    """A document chunk shorter than the batch's longest adds only its own steps, and carries
    the state after its own last character."""
    params = trained_like("lstm", 1)
    X, Y, state = batch(params.spec, 6, 2)
    L, grads, last = reference.loss_and_grads(params, X, Y, state, lengths=[6, 3])
    first = tuple(s[:, :1] for s in state)
    second = tuple(s[:, 1:] for s in state)
    L0, g0, last0 = reference.loss_and_grads(params, X[:, :1], Y[:, :1], first)
    L1, g1, last1 = reference.loss_and_grads(params, X[:3, 1:], Y[:3, 1:], second)
    assert L == pytest.approx((L0 + L1) / 2, rel=1e-13)
    for name, g in grads.items():
        np.testing.assert_allclose(g, (g0[name] + g1[name]) / 2, rtol=1e-11, atol=1e-15)
    for s, s0, s1 in zip(last, last0, last1, strict=True):
        np.testing.assert_allclose(s, np.concatenate([s0, s1], axis=1), rtol=1e-13)


@pytest.mark.parametrize("family", FAMILIES)
def test_centered_differences_for_every_family(family):
    """Two layers, three streams, a non-zero state: every entry to 1e-6 of the largest."""
    params = trained_like(family, 2)
    X, Y, state = batch(params.spec, 5, 3)
    _, analytic, _ = reference.loss_and_grads(params, X, Y, state)
    numeric = gc.numerical_grads(params, X, Y, state)
    for (name, ga), gn in zip(analytic.items(), numeric.arrays(), strict=True):
        assert np.abs(ga - gn).max() <= 1e-6 * np.abs(ga).max(), name


@pytest.mark.parametrize("family", FAMILIES)
def test_gradcheck_with_a_fixed_dropout_mask(family):
    params = trained_like(family, 2)
    X, Y, state = batch(params.spec, 5, 2)
    rng = np.random.default_rng(4)
    masks = [(rng.random((2, 5, 5)) >= 0.5) / 0.5 for _ in range(2)]
    assert any((mk == 0).any() for mk in masks)
    _, analytic, _ = reference.loss_and_grads(params, X, Y, state, None, masks)
    numeric = gc.numerical_grads(params, X, Y, state, masks=masks)
    for (name, ga), gn in zip(analytic.items(), numeric.arrays(), strict=True):
        assert np.abs(ga - gn).max() <= 1e-6 * np.abs(ga).max(), name
    _, plain, _ = reference.loss_and_grads(params, X, Y, state)
    assert rel(plain["V"], analytic["V"]) > 1e-3  # the mask changes the gradient


@pytest.mark.parametrize("family", ["lstm", "gru"])
def test_gradcheck_protocol_two_layers_three_streams(family):
    """`charwise gradcheck --model F --layers 2 --batch 3`: every relative error < 1e-6."""
    text = english_like(2000)
    vocab = Vocab.from_text(text)
    corpus = Corpus("t", vocab, vocab.encode(text))
    rows = gc.gradcheck_corpus(corpus, m=5, seq_length=10, model=family, layers=2, batch=3)
    assert {r.name for r in rows} >= {"b2", "U2", "W2"}
    assert all(r.max_rel < 1e-6 for r in rows), gc.format_table(rows)


# ---- dropout ---------------------------------------------------------------------------------
def test_dropout_masks_are_spec_draws():
    rng = np.random.default_rng((7, 2))
    dropout = reference.Dropout(0.3, 20, np.random.default_rng((7, 2)))
    spec = ModelSpec("lstm", 5, 40, layers=3)
    masks = dropout.masks(spec, 16)
    assert len(masks) == 3 and all(mk.shape == (16, 20, 40) for mk in masks)
    for mk in masks:  # layer 2, layer 3, then the output, each one draw in that order
        np.testing.assert_array_equal(mk, (rng.random((16, 20, 40)) >= 0.3) / 0.7)
    values = np.concatenate([mk.ravel() for mk in masks])
    assert set(np.unique(values).tolist()) == {0.0, 1 / 0.7}
    kept = (values > 0).mean()  # 38,400 Bernoulli(0.7) draws: sd 0.0023
    assert abs(kept - 0.7) < 0.01 and abs(values.mean() - 1.0) < 0.015


# ---- optimisers ------------------------------------------------------------------------------
def steps(optimizer, seed: int = 0, n: int = 3):
    """n steps of `optimizer` on a small model with gradients inside the clip range."""
    params = trained_like("gru", 1)
    state = optimizer.init_state(params)
    rng = np.random.default_rng(seed)
    history = [params.copy()]
    grads = []
    for t in range(1, n + 1):
        g = Params._make({k: rng.uniform(-3, 3, a.shape) for k, a in params.items()}, params.spec)
        grads.append(g.copy())
        optimizer.step(params, g, state, t)
        history.append(params.copy())
    return history, grads


def test_optimisers_hand_computed():
    p0, g = np.array([1.0, -2.0]), np.array([7.0, -0.5])  # 7 is clipped to 5
    spec = ModelSpec("rnn", 1, 1)
    for optimizer, expected in [
        (AdaGrad(0.1), p0 - 0.1 * np.array([5.0, -0.5]) / np.sqrt(np.array([25.0, 0.25]) + 1e-8)),
        (
            RMSProp(0.01, alpha=0.95),
            p0 - 0.01 * np.array([5.0, -0.5]) / (np.sqrt(0.05 * np.array([25.0, 0.25])) + 1e-8),
        ),
        (Adam(0.002), p0 - 0.002 * np.array([5.0, -0.5]) / (np.abs([5.0, -0.5]) + 1e-8)),
    ]:
        params = Params._make({"w": p0.copy()}, spec)
        state = optimizer.init_state(params)
        optimizer.step(params, Params._make({"w": g.copy()}, spec), state, 1)
        np.testing.assert_allclose(params["w"], expected, rtol=1e-15)


@needs_torch
@pytest.mark.parametrize(
    "ours, theirs",
    [
        (AdaGrad(0.1), ("Adagrad", dict(lr=0.1, eps=0.0, initial_accumulator_value=1e-8))),
        (RMSProp(2e-3), ("RMSprop", dict(lr=2e-3, alpha=0.95, eps=1e-8))),
        (Adam(2e-3), ("Adam", dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8))),
    ],
    ids=["adagrad", "rmsprop", "adam"],
)
def test_optimiser_steps_equal_torch_optim(ours, theirs):
    import torch

    history, grads = steps(ours)
    tensors = {k: torch.tensor(a.copy(), requires_grad=True) for k, a in history[0].items()}
    name, kwargs = theirs
    opt = getattr(torch.optim, name)(list(tensors.values()), **kwargs)
    for t, g in enumerate(grads, start=1):
        before = {k: tensor.detach().numpy().copy() for k, tensor in tensors.items()}
        for k, tensor in tensors.items():
            tensor.grad = torch.tensor(g[k])
        opt.step()
        for k, tensor in tensors.items():  # the step itself, not just the new values
            step, ours_step = tensor.detach().numpy() - before[k], history[t][k] - history[t - 1][k]
            assert rel(ours_step, step) <= REL, (name, t, k, rel(ours_step, step))
