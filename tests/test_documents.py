"""Short-document corpora: per-document chunks, h_prev resets, sampling that stops."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from charwise.corpus import END_CHAR, load_corpus
from charwise.engines import reference
from charwise.model import DOC_SEPARATOR, CharRNN
from charwise.optim import CLIP, EPS, TrainState, adagrad_step
from charwise.params import RNNParams
from charwise.train import DocumentSchedule, Schedule, TrainConfig, Trainer

SRC = Path(__file__).resolve().parents[1] / "src"


def lines_corpus(tmp_path, text):
    path = tmp_path / "docs.txt"
    path.write_text(text, encoding="utf-8")
    return load_corpus(path, format="lines")


def test_layout_and_chunks_by_hand(tmp_path):
    c = lines_corpus(tmp_path, "abc\nde\n")
    # E a b c E d e E with E = U+0003 sorted first: E=0, a=1, b=2, c=3, d=4, e=5
    assert c.vocab.chars == [END_CHAR, "a", "b", "c", "d", "e"]
    assert c.data.tolist() == [0, 1, 2, 3, 0, 4, 5, 0]
    assert c.starts.tolist() == [1, 5]
    assert [c.document(0), c.document(1)] == ["abc", "de"]
    s = Schedule.for_corpus(c, 2)
    assert isinstance(s, DocumentSchedule) and s.per_epoch == 4
    starts, lengths, resets = s.block(0, 4)
    # doc 1: inputs E a -> a b, b c -> c E ; doc 2: E d -> d e, e -> E
    assert starts.tolist() == [0, 2, 4, 6]
    assert lengths.tolist() == [2, 2, 2, 1]
    assert resets.tolist() == [True, False, True, False]
    starts, lengths, resets = s.block(3, 3)  # wraps into the next epoch
    assert starts.tolist() == [6, 0, 2] and resets.tolist() == [False, True, False]
    assert s.epoch(4) == 1 and s.epoch(5) == 2


def test_every_transition_once_and_no_chunk_crosses_a_boundary(tmp_path):
    rng = np.random.default_rng(0)
    docs = ["".join(rng.choice(list("xyz"), size=n)) for n in rng.integers(1, 40, size=50)]
    c = lines_corpus(tmp_path, "\n".join(docs))
    end = c.vocab.end_index
    for tau in (1, 3, 10, 25):
        schedule = Schedule.for_corpus(c, tau)
        starts, lengths, resets = schedule.block(0, schedule.per_epoch)
        targets = np.concatenate(
            [np.arange(s + 1, s + n + 1) for s, n in zip(starts, lengths, strict=True)]
        )
        assert sorted(targets.tolist()) == list(range(1, len(c)))  # each target exactly once
        assert lengths.max() <= tau and lengths.min() >= 1
        for s, n, r in zip(starts, lengths, resets, strict=True):
            inputs = c.data[s : s + n]
            assert (inputs[0] == end) == r  # a reset exactly where a document begins
            assert end not in inputs[1:].tolist()  # never reads past a document's end


def test_h_prev_resets_at_each_document_start(tmp_path):
    """Trainer with the document schedule against a hand-written loop over the 4 chunks."""
    c = lines_corpus(tmp_path, "abc\nde\n")
    config = TrainConfig(m=4, seq_length=2, engine="reference", sample_every=10**6, val_fraction=0)
    trainer = Trainer(c, config, tmp_path / "run")
    trainer.run(4, progress=False)

    params = RNNParams.init(4, len(c.vocab), seed=config.seed)
    G, h = RNNParams.zeros_like(params), np.zeros(4)
    data = c.data.astype(np.int64)
    losses = []
    for s, n, reset in [(0, 2, True), (2, 2, False), (4, 2, True), (6, 1, False)]:
        if reset:
            h = np.zeros(4)
        L, grads, h = reference.loss_and_grads(params, data[s : s + n], data[s + 1 : s + n + 1], h)
        adagrad_step(params, grads, G, config.eta, EPS, CLIP)
        losses.append(L)
    for a, b in zip(trainer.state.params.arrays(), params.arrays(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(trainer.state.h_prev, h, rtol=1e-12)
    metrics = np.loadtxt(tmp_path / "run" / "metrics.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(metrics[:, 2], losses, rtol=1e-12)
    # the run's sample events and passage are documents, separated, without end characters
    passage = (tmp_path / "run" / "best_passage.txt").read_text(encoding="utf-8")
    assert len(passage.split(DOC_SEPARATOR)) == config.passage_docs
    assert END_CHAR not in passage


def test_first_chunk_matches_a_fresh_state(tmp_path):
    """Without the reset the second document would start from the first one's last h."""
    c = lines_corpus(tmp_path, "abc\nde\n")
    params = RNNParams.init(3, len(c.vocab), seed=2)
    state = TrainState.fresh(params.copy())
    s, n, r = Schedule.for_corpus(c, 2).block(0, 4)
    losses = np.empty(4)
    reference.train_block(state, c.data, s, n, r, 0.0, EPS, CLIP, losses)  # eta 0: params fixed
    x, y = c.data[4:6].astype(np.int64), c.data[5:7].astype(np.int64)
    assert losses[2] == reference.loss(params, x, y, np.zeros(3))
    h_after_doc1 = reference.advance(params, np.zeros(3), c.data[0:4].astype(np.int64))
    assert losses[2] != reference.loss(params, x, y, h_after_doc1)


def biased_model(tmp_path, favourite: str) -> CharRNN:
    """A document model whose output bias makes `favourite` (almost) certain."""
    c = lines_corpus(tmp_path, "ab\nba\n")
    model = CharRNN.init(c.vocab, m=3, seed=1)
    model.params.c[c.vocab.index[favourite]] = 50.0
    return model


def test_sampling_stops_at_end_char(tmp_path):
    model = biased_model(tmp_path, END_CHAR)
    rng = np.random.default_rng(0)
    indices = model.sample_indices(100, rng=rng)
    assert indices.tolist() == [model.vocab.end_index]
    assert model.sample_documents(3, 100, rng=rng) == ["", "", ""]


def test_sampling_stops_at_length_cap(tmp_path):
    model = biased_model(tmp_path, "a")
    docs = model.sample_documents(2, 17, rng=np.random.default_rng(0))
    assert docs == ["a" * 17, "a" * 17]


def test_mixed_documents_end_at_end_char_or_cap(tmp_path):
    c = lines_corpus(tmp_path, "ab\nba\n")
    model = CharRNN.init(c.vocab, m=3, seed=1)  # near-uniform: E has probability ~1/3
    docs = model.sample_documents(50, 5, rng=np.random.default_rng(3))
    assert all(len(d) <= 5 and END_CHAR not in d for d in docs)
    assert any(len(d) < 5 for d in docs) and any(len(d) == 5 for d in docs)


def test_cli_sample_count_uses_trained_max_length(tmp_path):
    c = lines_corpus(tmp_path, "ab\nba\n")
    model = CharRNN.init(c.vocab, m=3, seed=1)
    model.params.c[c.vocab.index["a"]] = 50.0  # never ends: every document hits the cap
    model.save(tmp_path / "m.npz", config={"max_length": 7})
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    cmd = [sys.executable, "-m", "charwise", "sample", str(tmp_path / "m.npz")]
    out = subprocess.run(cmd + ["--count", "4", "--seed", "1"], env=env, capture_output=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().rstrip("\n").split(DOC_SEPARATOR) == ["a" * 7] * 4


def test_cli_train_with_tweets_preset(tmp_path):
    """The preset sets seq length 10 and a 140-char cap, remembered by the checkpoint."""
    import json

    from charwise import checkpoint

    tweets = [{"text": f"tweet number {i} &amp; more", "is_retweet": i % 3 == 0} for i in range(30)]
    path = tmp_path / "archive.txt"  # not .json: the preset sets the format
    path.write_text(json.dumps(tweets))
    env = {**os.environ, "PYTHONPATH": str(SRC), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "charwise", "train", str(path), "--preset", "tweets"]
    cmd += ["--updates", "30", "--engine", "reference", "--no-progress", "--m", "8"]
    cmd += ["--sample-every", "10", "--out", str(tmp_path / "run")]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "in 20 documents" in out.stdout
    _, meta = checkpoint.load(tmp_path / "run" / "best.npz")
    assert meta["config"]["seq_length"] == 10 and meta["config"]["max_length"] == 140
    assert meta["corpus"]["documents"] == 20
    samples = (tmp_path / "run" / "samples.txt").read_text(encoding="utf-8")
    assert samples.count("--- update ") == 4  # before update 1 and after 10, 20, 30
    assert samples.count(DOC_SEPARATOR) == 4 * 2  # three documents per sample event


def test_prime_of_a_document_model_follows_its_end_char(tmp_path):
    """A prime starts a new document: read after E from h = 0, as in training."""
    c = lines_corpus(tmp_path, "ab\nba\n")
    model = CharRNN.init(c.vocab, m=3, seed=4)
    got = model.sample_indices(6, prime="ab", rng=np.random.default_rng(5))
    h = reference.advance(model.params, np.zeros(3), c.vocab.encode(END_CHAR + "a"))
    uniforms = np.random.default_rng(5).random(6)
    x0 = c.vocab.index["b"]
    expected = reference.sample(model.params, h, x0, 6, uniforms, stop=c.vocab.end_index)
    assert got.tolist() == expected.tolist()
