"""Validation (SPEC.md): the held-out split, the measure by hand, eval.csv and best-val.npz,
`charwise eval`, and --minutes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner

from charwise import checkpoint
from charwise.cli import main
from charwise.config import TrainConfig
from charwise.corpus import Corpus, load_corpus
from charwise.engines import fast, reference
from charwise.errors import CharwiseError
from charwise.evaluate import score
from charwise.model import CharModel
from charwise.params import RNNParams
from charwise.rundir import read_eval
from charwise.train import Trainer
from charwise.vocab import Vocab
from conftest import english_like


def text_corpus(text: str) -> Corpus:
    vocab = Vocab.from_text(text)
    return Corpus("t", vocab, vocab.encode(text))


def test_text_split_boundaries():
    corpus = text_corpus(english_like(1000))
    train, held = corpus.split(0.1)
    assert len(train) == 900 and len(held) == 100
    np.testing.assert_array_equal(np.concatenate([train.data, held.data]), corpus.data)
    assert train.vocab == held.vocab == corpus.vocab
    assert len(corpus.split(0.0001)[1]) == 2  # rounded up to one predicted character
    assert corpus.split(0)[1] is None and corpus.split(0)[0] is corpus


def test_document_split_boundaries(tmp_path):
    docs = [f"line {i}" for i in range(10)]
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(docs) + "\n", encoding="utf-8")
    corpus = load_corpus(path, format="lines")
    train, held = corpus.split(0.25)  # ceil(2.5) = 3 documents held out
    assert [train.document(i) for i in range(len(train.starts))] == docs[:7]
    assert [held.document(i) for i in range(len(held.starts))] == docs[7:]
    end = corpus.vocab.end_index
    assert train.data[0] == end and train.data[-1] == end  # E d1 E ... d7 E
    assert held.data[0] == end and held.data[-1] == end  # E d8 E d9 E d10 E
    assert len(train) + len(held) == len(corpus) + 1  # the E between them is in both
    assert len(corpus.split(0.01)[1].starts) == 1  # at least one document
    (tmp_path / "one.txt").write_text("only\n", encoding="utf-8")
    one = load_corpus(tmp_path / "one.txt", format="lines")
    with pytest.raises(CharwiseError, match="none left for training"):
        one.split(0.05)


def hand_nats(params: RNNParams, runs: list[list[int]]) -> float:
    """Mean -log p over the runs, each from h = 0, with one-hot vectors as in the exercise."""
    K = params.K
    total, count = 0.0, 0
    for run in runs:
        h = np.zeros(params.m)
        for x, y in zip(run[:-1], run[1:], strict=True):
            h = np.tanh(params.W @ h + params.U @ np.eye(K)[x] + params.b)
            o = params.V @ h + params.c
            total -= math.log(np.exp(o)[y] / np.exp(o).sum())
            count += 1
    return total / count


def test_evaluation_by_hand():
    params = RNNParams.init(3, 4, sig=0.7, seed=2)
    params.b[:] = [0.1, -0.3, 0.2]
    params.c[:] = [0.4, 0.0, -0.2, 0.1]
    data = np.array([0, 3, 1, 1, 2, 0, 3, 2, 2, 1], dtype=np.uint8)
    want = hand_nats(params, [data.tolist()])
    for engine in (reference, fast):
        total, count = engine.evaluate(params, data)
        assert count == 9 and total / count == pytest.approx(want, rel=1e-12)
    runs = [(0, 4), (3, 10)]  # documents: each from a zero state
    want = hand_nats(params, [data[0:4].tolist(), data[3:10].tolist()])
    for engine in (reference, fast):
        total, count = engine.evaluate(params, data, runs)
        assert count == 3 + 6 and total / count == pytest.approx(want, rel=1e-12)


def test_pieces_carry_the_state(monkeypatch):
    """A held-out text longer than one evaluation piece is still read as one."""
    text = english_like(3000)
    corpus = text_corpus(text)
    model = CharModel.init(corpus.vocab, "gru", m=6, seed=3)
    whole = reference.evaluate(model.params, corpus.data)
    monkeypatch.setattr(reference, "EVAL_PIECE", 7)
    pieces = reference.evaluate(model.params, corpus.data)
    assert pieces[1] == whole[1] == 2999
    assert pieces[0] == pytest.approx(whole[0], rel=1e-13)


@pytest.fixture(scope="module")
def validated_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("val")
    corpus_file = tmp / "corpus.txt"
    corpus_file.write_text(english_like(6000, seed=2), encoding="utf-8")
    out = tmp / "run"
    args = ["train", corpus_file, "--out", out, "--model", "lstm", "--m", 12, "--optimizer",
            "adam", "--batch", 4, "--seq-length", 20, "--updates", 240, "--eval-every", 50,
            "--val-fraction", 0.1, "--no-progress", "--sample-every", 100]  # fmt: skip
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return corpus_file, out, result.output


def test_eval_log_and_best_val_model(validated_run):
    corpus_file, out, output = validated_run
    evals = read_eval(out)
    assert evals["update"].tolist() == [50, 100, 150, 200, 240]  # every 50 and at the end
    np.testing.assert_allclose(evals["val_bits"], evals["val_nats"] / math.log(2), rtol=1e-15)
    best = int(evals["val_nats"].argmin())
    model, _ = CharModel.load(out / "best-val.npz")
    assert model.meta["updates"] == evals["update"][best]
    assert model.meta["val_nats"] == evals["val_nats"][best]
    # its score on the held-out text, measured again from the file, is that row's
    again = score(out / "best-val.npz")
    assert again["nats"] == pytest.approx(evals["val_nats"][best], rel=1e-12)
    assert again["chars"] == 599  # 600 held-out characters, 599 predicted
    assert "(600 held out)" in output and "best validation" in output
    assert "2-layer" not in output and "lstm m = 12 (fast engine)" in output


def test_eval_command(validated_run, tmp_path):
    corpus_file, out, _ = validated_run
    run = CliRunner().invoke(main, ["eval", str(out)])
    assert run.exit_code == 0, run.output
    assert "best-val.npz on corpus.txt (held out): 599 characters scored" in run.output
    whole = CliRunner().invoke(main, ["eval", str(out / "final.npz"), str(corpus_file)])
    assert whole.exit_code == 0 and "5,999 characters scored" in whole.output
    nats = float(whole.output.split("scored, ")[1].split(" nats")[0])
    model, _ = CharModel.load(out / "final.npz")
    corpus = load_corpus(corpus_file)
    total, count = reference.evaluate(model.params, corpus.data)
    assert nats == pytest.approx(total / count, abs=5e-5)
    other = tmp_path / "other.txt"
    other.write_text("Zebra QUIZ", encoding="utf-8")
    bad = CliRunner().invoke(main, ["eval", str(out), str(other)])
    assert bad.exit_code == 1 and "characters the model never saw" in bad.stderr


def test_minutes_stop_at_a_block_end_with_the_final_files(tmp_path):
    corpus = text_corpus(english_like(4000, seed=5))
    config = TrainConfig(m=8, engine="reference", print_every=10**6, sample_every=10**6)
    trainer = Trainer(corpus, config, tmp_path / "run", progress=False)
    state = trainer.run(minutes=0.002)  # 0.12 s of training
    assert 0 < state.updates < 100_000 and trainer.elapsed >= 0.12
    for name in ("final.npz", "best.npz", "best-val.npz", "best_passage.txt", "loss.png"):
        assert (tmp_path / "run" / name).exists(), name
    assert read_eval(tmp_path / "run")["update"].tolist() == [state.updates]
    meta = checkpoint.load(tmp_path / "run" / "checkpoint.npz")[1]
    assert meta["target_minutes"] == 0.002 and meta["updates"] == state.updates


def test_no_held_out_text_no_validation(tmp_path):
    corpus = text_corpus(english_like(2000))
    trainer = Trainer(corpus, TrainConfig(m=6, val_fraction=0, engine="reference"), tmp_path)
    trainer.run(20, progress=False)
    assert not (tmp_path / "eval.csv").exists() and not (tmp_path / "best-val.npz").exists()


def test_best_val_passage_and_sampling_an_lstm(validated_run):
    corpus_file, out, _ = validated_run
    model, _ = CharModel.load(out / "best-val.npz")
    indices = model.sample_indices(1000, rng=np.random.default_rng((1, 5)))
    assert (out / "best-val_passage.txt").read_text(encoding="utf-8") == model.vocab.decode(indices)
    # `charwise sample RUN` samples the recommended model: prime, temperature, top-p, count
    args = ["sample", str(out), "--length", "60", "--prime", "The ", "--seed", "3"]
    a = CliRunner().invoke(main, [*args, "--temperature", "0.7", "--top-p", "0.9", "--count", "2"])
    b = CliRunner().invoke(main, [*args, "--temperature", "0.7", "--top-p", "0.9", "--count", "2"])
    assert a.exit_code == 0 and a.output == b.output
    texts = a.output.rstrip("\n").split("\n---\n")
    assert len(texts) == 2 and all(t.startswith("The ") and len(t) == 64 for t in texts)
    primed = model.sample(60, prime="The ", seed=3, temperature=0.7, top_p=0.9)
    assert texts[0] == primed
    greedy = model.sample(40, prime="the", temperature=0)
    assert greedy == model.sample(40, prime="the", temperature=0, seed=99)


def test_document_models_of_every_family_sample_documents(tmp_path):
    lines = [f"tweet {i} about the {w}" for i, w in enumerate(["cat", "dog", "sun"] * 12)]
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for family in ("lstm", "gru"):
        out = tmp_path / family
        args = ["train", str(path), "--lines", "--model", family, "--m", "8", "--batch", "3",
                "--seq-length", "6", "--updates", "40", "--out", str(out), "--no-progress",
                "--max-length", "30"]  # fmt: skip
        assert CliRunner().invoke(main, args).exit_code == 0
        res = CliRunner().invoke(main, ["sample", str(out), "--count", "4", "--seed", "1"])
        docs = res.output.rstrip("\n").split("\n---\n")
        assert res.exit_code == 0 and len(docs) == 4 and all(len(d) <= 30 for d in docs)
        assert "\x03" not in res.output
        passage = (out / "best-val_passage.txt").read_text(encoding="utf-8")
        assert len(passage.split("\n---\n")) == 10  # --passage-docs documents
