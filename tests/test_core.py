"""Reference engine, protocol and sampling against hand-computed cases and seeded runs."""

import math

import numpy as np
import pytest

from charwise import checkpoint
from charwise.corpus import Corpus, load_corpus, python_docs_text
from charwise.engines import reference
from charwise.errors import CharwiseError
from charwise.model import CharRNN
from charwise.optim import TrainState, adagrad_step
from charwise.params import RNNParams
from charwise.train import Schedule
from charwise.vocab import Vocab


def encoded(text):
    vocab = Vocab.from_text(text)
    return vocab, vocab.encode(text)


def test_vocab_sorted_and_round_trip():
    vocab = Vocab.from_text("hello, world")
    assert vocab.chars == sorted(set("hello, world"))
    assert vocab.decode(vocab.encode("world")) == "world"
    assert Vocab.from_json(vocab.to_json()) == vocab


def test_init_order_and_scale():
    p = RNNParams.init(4, 3, sig=0.01, seed=7)
    rng = np.random.default_rng(7)
    np.testing.assert_array_equal(p.U, 0.01 * rng.standard_normal((4, 3)))
    np.testing.assert_array_equal(p.W, 0.01 * rng.standard_normal((4, 4)))
    np.testing.assert_array_equal(p.V, 0.01 * rng.standard_normal((3, 4)))
    assert not p.b.any() and not p.c.any()


def test_forward_matches_one_hot_equations():
    """Hand-written one-hot math of SPEC.md, step by step, against the engine."""
    params = RNNParams.init(3, 4, sig=0.5, seed=2)
    params.b[:] = [0.1, -0.2, 0.3]
    params.c[:] = [0.0, 0.5, -0.5, 1.0]
    x, y, h = [0, 3, 1], [3, 1, 2], np.array([0.2, -0.1, 0.4])
    L = 0.0
    for xt, yt in zip(x, y, strict=True):
        onehot = np.eye(4)[xt]
        h = np.tanh(params.W @ h + params.U @ onehot + params.b)
        o = params.V @ h + params.c
        p = np.exp(o) / np.exp(o).sum()
        L -= math.log(p[yt])
    loss, _, h_last = reference.loss_and_grads(params, np.array(x), np.array(y), [0.2, -0.1, 0.4])
    assert loss == pytest.approx(L, rel=1e-13)
    np.testing.assert_allclose(h_last, h, rtol=1e-13)


def test_softmax_is_stable_for_huge_logits():
    params = RNNParams.init(2, 3, seed=0)
    params.c[:] = [1000.0, 0.0, -1000.0]
    loss, grads, _ = reference.loss_and_grads(params, np.array([0]), np.array([2]), np.zeros(2))
    assert loss == pytest.approx(2000.0)
    assert all(np.isfinite(g).all() for g in grads.arrays())


def test_first_loss_is_tau_ln_K():
    rng = np.random.default_rng(0)
    text = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz .,;"), 2000))
    vocab, data = encoded(text)
    params = RNNParams.init(100, len(vocab), seed=1)
    loss, _, _ = reference.loss_and_grads(params, data[:25], data[1:26], np.zeros(100))
    assert loss == pytest.approx(25 * math.log(len(vocab)), rel=0.01)


def test_schedule_hand_checked():
    """N = 12, tau = 3: e = 0, 3, 6 (9 > 12 - 3 - 1 starts a new epoch)."""
    sch = Schedule(12, 3)
    assert sch.per_epoch == 3
    starts, lengths, resets = sch.block(0, 7)
    assert starts.tolist() == [0, 3, 6, 0, 3, 6, 0]
    assert lengths.tolist() == [3] * 7
    assert resets.tolist() == [True, False, False, True, False, False, True]
    assert [sch.epoch(u) for u in range(1, 8)] == [1, 1, 1, 2, 2, 2, 3]
    assert Schedule(13, 3).per_epoch == 4  # e = 9 <= 13 - 4 is allowed
    with pytest.raises(CharwiseError, match="fewer than one sequence"):
        Schedule(3, 3)


def test_reference_corpus_updates_per_epoch():
    """SPEC.md: 44,301 updates per epoch on the 1,107,542-character reference novel."""
    assert Schedule(1_107_542, 25).per_epoch == 44_301


def test_train_block_carries_and_resets_h_prev():
    """Replay 4 updates by hand: h_prev carries inside an epoch and is zero at its start."""
    vocab, data = encoded("abcabdabcaba")
    sch = Schedule(len(data), 3)
    state = TrainState.fresh(RNNParams.init(4, len(vocab), sig=0.3, seed=0))
    manual = state.params.copy()
    G = RNNParams.zeros_like(manual)
    h = np.zeros(4)
    smooth, losses = None, np.empty(4)
    expected = []
    for u, (s, n, reset) in enumerate(zip(*sch.block(0, 4), strict=True)):
        h = np.zeros(4) if reset else h
        L, g, h_next = reference.loss_and_grads(manual, data[s : s + n], data[s + 1 : s + n + 1], h)
        smooth = L if u == 0 else 0.999 * smooth + 0.001 * L
        adagrad_step(manual, g, G, 0.1, 1e-8, 5.0)
        expected.append(L)
        h = h_next
    assert reference.train_block(state, data, *sch.block(0, 4), 0.1, 1e-8, 5.0, losses) == 4
    assert losses.tolist() == expected
    assert state.smooth_loss == smooth and state.updates == 4
    for a, b in zip(state.params.arrays(), manual.arrays(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(state.h_prev, h)


def test_adagrad_and_clipping_hand_computed():
    p = RNNParams(*(np.array([1.0, 2.0]) for _ in range(5)))
    g = RNNParams(*(np.array([10.0, -0.5]) for _ in range(5)))
    G = RNNParams(*(np.array([0.0, 0.75]) for _ in range(5)))
    adagrad_step(p, g, G, eta=0.1, eps=1e-8, clip=5.0)
    # entry 0: g clipped to 5, G = 25, step 0.1 * 5 / sqrt(25 + 1e-8)
    # entry 1: g = -0.5, G = 0.75 + 0.25 = 1, step 0.1 * -0.5 / sqrt(1 + 1e-8)
    assert g.b.tolist() == [5.0, -0.5]
    assert G.b.tolist() == [25.0, 1.0]
    assert p.b[0] == pytest.approx(1.0 - 0.5 / math.sqrt(25 + 1e-8), abs=1e-15)
    assert p.b[1] == pytest.approx(2.0 + 0.05 / math.sqrt(1 + 1e-8), abs=1e-15)


def test_best_snapshot_is_the_lowest_smooth_loss():
    vocab, data = encoded("the cat sat on the mat. " * 20)
    sch = Schedule(len(data), 10)
    state = TrainState.fresh(RNNParams.init(8, len(vocab), seed=3))
    losses = np.empty(60)
    history = []
    for _ in range(60):
        before = state.params.copy()
        reference.train_block(state, data, *sch.block(state.updates, 1), 0.1, 1e-8, 5.0, losses)
        history.append((state.smooth_loss, before))
    best_i = int(np.argmin([s for s, _ in history]))
    assert state.best_update == best_i + 1
    assert state.best_smooth == history[best_i][0]
    np.testing.assert_array_equal(state.best.W, history[best_i][1].W)


def test_overfit_first_100_characters():
    """Loss below 1 on every chunk, then a greedy sample from h = 0 recites the text."""
    text = "The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs!"
    text = (text + " Sphinx of black quartz, judge my vow.")[:100]
    vocab, data = encoded(text)
    sch = Schedule(len(data), 25)  # 3 chunks per epoch: inputs 0..74, targets 1..75
    state = TrainState.fresh(RNNParams.init(32, len(vocab), seed=1))
    losses = np.empty(sch.per_epoch)
    for _ in range(400):
        reference.train_block(state, data, *sch.block(state.updates, 3), 0.1, 1e-8, 5.0, losses)
        if losses.max() < 1.0:
            break
    assert losses.max() < 1.0
    model = CharRNN(vocab, state.params)
    assert model.sample(74, prime=text[0], temperature=0.0) == text[:75]


def chi_square_critical(df: int, z: float = 3.09) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (z = 3.09: p = 0.001)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_sampling_matches_the_distribution():
    """With W = U = b = 0, p = softmax(c) at every step: counts pass a chi-square test."""
    vocab = Vocab("abcdef")
    params = RNNParams.init(4, 6, seed=0)
    params.U[:] = params.W[:] = 0.0
    params.c[:] = np.log([0.05, 0.1, 0.15, 0.2, 0.2, 0.3])
    p = np.exp(params.c) / np.exp(params.c).sum()
    n = 20_000
    idx = CharRNN(vocab, params).sample_indices(n, prime="a", rng=np.random.default_rng(5))
    counts = np.bincount(idx, minlength=6)
    chi2 = (((counts - n * p) ** 2) / (n * p)).sum()
    assert chi2 < chi_square_critical(5)
    # ...and a wrong distribution is rejected by the same test
    q = np.roll(p, 1)
    assert (((counts - n * q) ** 2) / (n * q)).sum() > chi_square_critical(5)


def test_sampling_seed_temperature_top_p():
    vocab = Vocab("abcdefgh")
    model = CharRNN(vocab, RNNParams.init(16, 8, sig=0.5, seed=4))
    a = model.sample(300, prime="ab", seed=11)
    assert a == model.sample(300, prime="ab", seed=11)
    assert a != model.sample(300, prime="ab", seed=12)
    assert a.startswith("ab") and len(a) == 302
    greedy = model.sample(50, prime="a", temperature=0.0, seed=1)
    cold = model.sample(50, prime="a", temperature=1e-3, seed=2)
    assert greedy == cold  # temperature -> 0 approaches argmax
    o = np.array([2.0, 1.0, 0.5, 0.0, -1.0])
    kept = reference.probabilities(o, top_p=0.7)
    p = np.exp(o) / np.exp(o).sum()
    assert np.nonzero(kept)[0].tolist() == [0, 1]  # p0 = 0.55 < 0.7 <= p0 + p1
    np.testing.assert_allclose(kept[:2], p[:2])
    assert reference.draw(kept, 0.999) == 1 and reference.draw(kept, 0.0) == 0


def test_unknown_prime_characters_are_named():
    model = CharRNN(Vocab("abc"), RNNParams.init(4, 3, seed=0))
    with pytest.raises(CharwiseError, match="'xz'"):
        model.sample(5, prime="axz")


def test_checkpoint_round_trip_bit_identical(tmp_path):
    model = CharRNN.init(Vocab("ab\ncd"), m=6, seed=9)
    model.save(tmp_path / "m.npz", extra={"G_b": np.arange(6.0)}, updates=12, note="x")
    loaded, extra = CharRNN.load(tmp_path / "m.npz")
    assert loaded.vocab == model.vocab
    for (name, a), b in zip(model.params.items(), loaded.params.arrays(), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert loaded.meta["updates"] == 12 and loaded.meta["note"] == "x"
    np.testing.assert_array_equal(extra["G_b"], np.arange(6.0))
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed away


def test_checkpoint_refuses_pickle_truncation_and_foreign_files(tmp_path):
    model = CharRNN.init(Vocab("abc"), m=3, seed=0)
    good = tmp_path / "good.npz"
    model.save(good)
    raw = good.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "text.npz").write_text("hello")
    np.savez(tmp_path / "pickled.npz", W=np.array([{"evil": 1}], dtype=object))
    np.savez(tmp_path / "foreign.npz", W=np.zeros(3))
    for name, pattern in [
        ("trunc", "truncated or corrupt"),
        ("empty", "not an .npz"),
        ("text", "not an .npz"),
        ("pickled", "pickled"),
        ("foreign", "no charwise metadata"),
        ("missing", "not found"),
    ]:
        with pytest.raises(CharwiseError, match=pattern):
            CharRNN.load(tmp_path / f"{name}.npz")
    arrays, meta = checkpoint.load(good)
    arrays["W"] = np.zeros((2, 2))
    checkpoint.save(tmp_path / "shape.npz", arrays, meta)
    with pytest.raises(CharwiseError, match="shape"):
        CharRNN.load(tmp_path / "shape.npz")


def test_corpus_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bad.txt").write_bytes(b"abc\xff\xfedef")
    with pytest.raises(CharwiseError, match="empty"):
        load_corpus(tmp_path / "empty.txt")
    with pytest.raises(CharwiseError, match="byte offset 3"):
        load_corpus(tmp_path / "bad.txt")
    assert load_corpus(tmp_path / "bad.txt", errors="replace").vocab.chars[-1] == "\ufffd"
    with pytest.raises(CharwiseError, match="not found"):
        load_corpus(tmp_path / "nope.txt")


def test_builtin_corpus_is_python_docs():
    corpus = load_corpus()
    assert corpus.name == "python-docs" and len(corpus) == len(python_docs_text()) > 100_000
    assert isinstance(corpus, Corpus) and corpus.vocab.chars == sorted(set(python_docs_text()))
