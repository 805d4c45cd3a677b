"""Analytic gradients of the reference engine against centered differences (SPEC.md)."""

import numpy as np
import pytest

from charwise import gradcheck as gc
from charwise.corpus import Corpus
from charwise.engines import reference
from charwise.params import RNNParams
from charwise.vocab import Vocab


def case(seed, m, T, K=30, sig=0.01):
    rng = np.random.default_rng([seed, m, T])
    d = rng.integers(0, K, T + 1)
    return RNNParams.init(m, K, sig=sig, seed=seed), d[:T], d[1:], rng


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("m", [1, 5, 16])
@pytest.mark.parametrize("T", [1, 3, 25])
def test_protocol_gradcheck_below_1e6(seed, m, T):
    """The check of SPEC.md (sig 0.01, h 1e-4, h0 = 0): every relative error < 1e-6."""
    params, x, y, _ = case(seed, m, T)
    rows = gc.gradcheck(params, x, y)
    assert [r.name for r in rows] == ["b", "c", "U", "W", "V"]
    for row in rows:
        assert row.max_rel < 1e-6, row


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("m", [1, 5, 16])
@pytest.mark.parametrize("T", [1, 3, 25])
def test_gradcheck_nonzero_h0_large_weights(seed, m, T):
    """Non-zero h0, saturating weights and biases: every entry agrees to 1e-6 of the largest.

    Entry-wise relative error is the wrong yardstick here: the O(h^2) truncation error of a
    centered difference is ~1e-11 in absolute terms, so entries that happen to be ~1e-7
    show relative errors ~1e-4 while the gradients agree to the last resolvable digit.
    """
    params, x, y, rng = case(seed, m, T, sig=0.3)
    params.b[:] = 0.3 * rng.standard_normal(m)
    params.c[:] = 0.3 * rng.standard_normal(params.K)
    h0 = rng.uniform(-0.9, 0.9, m)
    _, analytic, _ = reference.loss_and_grads(params, x, y, h0)
    numeric = gc.numerical_grads(params, x, y, h0)
    for (name, ga), gn in zip(analytic.items(), numeric.arrays(), strict=True):
        assert np.abs(ga - gn).max() <= 1e-6 * np.abs(ga).max(), name
    rows = gc.gradcheck(params, x, y, h0)
    assert all(np.isfinite(r.max_rel) for r in rows)


def test_gradcheck_catches_a_wrong_gradient(monkeypatch):
    """A planted 0.1% error in the W gradient must show up in the table, and only there."""
    params, x, y, _ = case(0, 5, 25, sig=0.3)
    true_fn = reference.loss_and_grads

    def buggy(p, x, y, h0):
        L, g, h = true_fn(p, x, y, h0)
        g.W *= 1.001  # a 0.1% error in one parameter's gradient
        return L, g, h

    monkeypatch.setattr(reference, "loss_and_grads", buggy)
    rows = {r.name: r for r in gc.gradcheck(params, x, y)}
    assert rows["W"].max_rel > 1e-4
    assert rows["U"].max_rel < 1e-6


def test_gradcheck_corpus_uses_first_characters():
    text = "hello world, hello charwise! " * 3
    vocab = Vocab.from_text(text)
    corpus = Corpus("t", vocab, vocab.encode(text))
    rows = gc.gradcheck_corpus(corpus, m=5, seq_length=25, seed=3)
    data = corpus.data.astype(np.int64)
    expected = gc.gradcheck(RNNParams.init(5, len(vocab), seed=3), data[:25], data[1:26])
    assert rows == expected
    assert "max rel error" in gc.format_table(rows)
