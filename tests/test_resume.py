"""Exact resume: a run stopped at update k and resumed to N equals the same run done in one go."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from charwise import checkpoint
from charwise.cli import main
from charwise.corpus import load_corpus
from charwise.errors import CharwiseError
from charwise.train import CHECKPOINT, Interrupted, Trainer, read_samples
from runs import ENGINES, WORDS, N, assert_same_run, small_config, write_corpus


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "words.txt")


@pytest.fixture(scope="module", params=ENGINES)
def one_go(request, corpus_file, tmp_path_factory):
    """The uninterrupted run to N updates, per engine."""
    engine = request.param
    out = tmp_path_factory.mktemp(f"one-go-{engine}")
    Trainer(load_corpus(corpus_file), small_config(engine), out).run(N, progress=False)
    return engine, out


def best_change_update(out: Path) -> int:
    """An update, past the first epoch, right after which the best model changed."""
    smooth = np.loadtxt(out / "metrics.csv", delimiter=",", skiprows=1)[:, 3]
    lows = [u for u in range(2, N) if smooth[u - 1] < smooth[: u - 1].min()]
    return next(u for u in reversed(lows) if u < N - 20)


@pytest.mark.parametrize("stop", ["start", "mid-epoch", "epoch-boundary", "after-best"])
def test_resume_is_bit_identical(stop, one_go, corpus_file, tmp_path):
    engine, reference_out = one_go
    corpus = load_corpus(corpus_file)
    per_epoch = Trainer(corpus, small_config(engine), tmp_path / "probe").schedule.per_epoch
    k = {
        "start": 0,
        "mid-epoch": per_epoch + 31,
        "epoch-boundary": per_epoch,
        "after-best": best_change_update(reference_out),
    }[stop]
    out = tmp_path / "stopped"
    Trainer(corpus, small_config(engine), out).run(k, progress=False)
    assert checkpoint.load(out / CHECKPOINT)[1]["updates"] == k
    # a different progress interval moves every block boundary after the resume
    resumed = Trainer.resume(out, corpus, print_every=13)
    assert resumed.state.updates == k
    resumed.run(N, progress=False)
    assert_same_run(reference_out, out)
    resumes = checkpoint.load(out / CHECKPOINT)[1]["resumes"]
    assert resumes == [{"update": k, "changed": {"print_every": [7, 13]}}]


def test_resume_twice_and_sample_headers(one_go, corpus_file, tmp_path):
    engine, reference_out = one_go
    out = tmp_path / "run"
    corpus = load_corpus(corpus_file)
    Trainer(corpus, small_config(engine), out).run(50, progress=False)
    Trainer.resume(out, corpus).run(141, progress=False)
    Trainer.resume(out, corpus).run(N, progress=False)
    assert_same_run(reference_out, out)
    assert [r["update"] for r in read_samples(out / "samples.txt")] == list(range(0, N, 40))


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def cli_train(corpus: Path, out: Path, updates: int, *extra: str):
    return cli(
        "train", corpus, "--out", out, "--updates", updates, "--engine", "reference",
        "--m", 8, "--seq-length", 10, "--print-every", 7, "--sample-every", 40,
        "--sample-length", 15, "--passage-length", 20, "--no-progress", "--val-fraction", 0,
        *extra,
    )  # fmt: skip


def test_cli_resume_matches_one_go(corpus_file, tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert cli_train(corpus_file, whole, N).exit_code == 0
    assert cli_train(corpus_file, part, 90).exit_code == 0
    result = cli("train", "--resume", part, "--updates", N, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "resuming at update 90" in result.output
    assert_same_run(whole, part)
    # a kill after the last checkpoint but before the final files: a resume writes them
    for name in ("final.npz", "best.npz", "best_passage.txt", "loss.png"):
        (part / name).unlink()
    result = cli("train", "--resume", part)  # no --updates: the target in the checkpoint
    assert result.exit_code == 0, result.output
    assert_same_run(whole, part)
    assert (part / "loss.png").exists()
    result = cli("train", "--resume", part, "--updates", N - 1)
    assert result.exit_code == 1 and f"already has {N} updates" in result.output


def test_cli_refusals(corpus_file, tmp_path):
    out = tmp_path / "run"
    assert cli_train(corpus_file, out, 30).exit_code == 0
    text = corpus_file.read_text(encoding="utf-8")
    shuffled = tmp_path / "shuffled.txt"
    shuffled.write_text(text[100:] + text[:100], encoding="utf-8")  # same characters
    other_vocab = tmp_path / "other.txt"
    other_vocab.write_text(text + "Z", encoding="utf-8")
    cases = {
        ("--m", "9"): "trained with --m 8",
        ("--seed", "2"): "trained with --seed 1",
        ("--dtype", "float32"): "trained with --dtype 'float64'",
        (str(shuffled),): "SHA-256 mismatch",
        (str(other_vocab),): "different vocabulary",
        ("--out", str(tmp_path / "x")): "--resume RUN_DIR is the run directory; drop --out",
    }
    for args, message in cases.items():
        result = cli("train", "--resume", out, "--updates", 60, *args)
        assert result.exit_code == 1, args
        assert message in result.output and result.output.count("\n") == 1, result.output
    result = cli_train(corpus_file, out, 30)
    assert result.exit_code == 1 and "already holds a run" in result.output
    result = cli("train", "--resume", tmp_path / "nowhere")
    assert result.exit_code == 1 and "checkpoint not found" in result.output


def test_allowed_changes_are_recorded(corpus_file, tmp_path):
    out = tmp_path / "run"
    assert cli_train(corpus_file, out, 30).exit_code == 0
    result = cli(
        "train", "--resume", out, "--updates", 60, "--eta", 0.05, "--sample-every", 25,
        "--m", 8, "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = checkpoint.load(out / CHECKPOINT)[1]
    assert meta["resumes"] == [
        {"update": 30, "changed": {"eta": [0.1, 0.05], "sample_every": [40, 25]}}
    ]
    assert meta["config"]["eta"] == 0.05 and meta["updates"] == 60
    assert [r["update"] for r in read_samples(out / "samples.txt")] == [0, 50]  # not 40


def test_resume_refuses_a_model_file(corpus_file, tmp_path):
    out = tmp_path / "run"
    corpus = load_corpus(corpus_file)
    Trainer(corpus, small_config("reference"), out).run(5, progress=False)
    (out / "best.npz").replace(out / CHECKPOINT)
    with pytest.raises(CharwiseError, match="a model, not a training checkpoint"):
        Trainer.resume(out, corpus)


def test_checkpoint_metadata_is_complete(corpus_file, tmp_path):
    out = tmp_path / "run"
    corpus = load_corpus(corpus_file)
    trainer = Trainer(corpus, small_config("reference"), out)
    trainer.run(25, progress=False)
    arrays, meta = checkpoint.load(out / CHECKPOINT)
    names = {"b", "c", "U", "W", "V", "h_prev", "best_h"}
    names |= {f"{p}_{n}" for p in ("G", "best") for n in "bcUWV"}
    assert set(arrays) == names
    assert meta["corpus_sha256"] == corpus.fingerprint()
    assert meta["vocab"] == corpus.vocab.to_json()
    assert meta["config"] == json.loads(json.dumps(small_config("reference").__dict__))
    rng = np.random.default_rng()
    rng.bit_generator.state = meta["sample_rng"]
    assert rng.random() == trainer.sample_rng.random()
    assert meta["updates"] == 25 and meta["target_updates"] == 25
    assert meta["smooth_loss"] == trainer.state.smooth_loss
    assert meta["best_update"] == trainer.state.best_update


def test_document_corpus_cli_resume_matches_one_go(tmp_path):
    """A one-document-per-line corpus (DocumentSchedule, document samples): the loader
    options are recorded, so --resume alone reloads the corpus the same way."""
    lines = tmp_path / "lines.txt"
    rng = random.Random(3)
    lines.write_text(
        "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9))) for _ in range(60))
        + "\n",
        encoding="utf-8",
    )
    whole, part = tmp_path / "whole", tmp_path / "part"
    extra = ("--lines", "--max-length", 30, "--sample-every", 25)
    assert cli_train(lines, whole, 170, *extra).exit_code == 0
    assert cli_train(lines, part, 70, *extra).exit_code == 0
    result = cli("train", "--resume", part, "--updates", 170, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "in 60 documents" in result.output
    assert_same_run(whole, part)
    source = checkpoint.load(part / CHECKPOINT)[1]["corpus"]["source"]
    assert source["format"] == "lines" and source["spec"] == str(lines.resolve())


FAMILY_RUNS = {  # beyond the exercise: every piece of state a resume must bring back
    "lstm-adam-batch4-dropout": dict(
        model="lstm", layers=2, optimizer="adam", batch=4, dropout=0.2, val_fraction=0.1
    ),
    "gru-rmsprop-random-chunks": dict(
        model="gru", optimizer="rmsprop", batch=3, chunks="random", val_fraction=0.1
    ),
    # the fast engine: each family and each optimiser once, in either dtype
    "fast-float32-lstm-adam-batch4-dropout": dict(
        model="lstm", layers=2, optimizer="adam", batch=4, dropout=0.2, val_fraction=0.1
    ),
    "fast-gru-rmsprop-random-chunks": dict(
        model="gru", optimizer="rmsprop", batch=3, chunks="random", val_fraction=0.1
    ),
    "fast-float32-rnn-adagrad-batch3-cosine": dict(
        optimizer="adagrad", batch=3, lr_schedule="cosine", warmup=5, val_fraction=0.1
    ),
}


def engine_of(name: str) -> str:
    """The engine of a FAMILY_RUNS entry, as small_config takes it."""
    return next((e for e in ("fast-float32", "fast") if name.startswith(e + "-")), "reference")


class StopAt:
    """A listener that acts as Ctrl-C arriving during update k's block."""

    def __init__(self, k: int):
        self.k = k

    def intervals(self, trainer) -> tuple[int, ...]:
        return (self.k,)

    def on_step(self, trainer, update: int) -> None:
        if update == self.k:
            trainer.stop_signal = signal.SIGINT


def interrupted_at(trainer: Trainer, k: int, updates: int) -> None:
    trainer.listeners.append(StopAt(k))
    with pytest.raises(Interrupted):
        trainer.run(updates, progress=False)
    assert checkpoint.load(trainer.out / CHECKPOINT)[1]["updates"] == k


@pytest.mark.parametrize("name", FAMILY_RUNS)
def test_family_runs_resume_bit_identically(name, corpus_file, tmp_path):
    """Stopped (as by Ctrl-C) at updates 37 and 71 and resumed: the same run directory as
    one uninterrupted run, validation log and best-val model included."""
    corpus = load_corpus(corpus_file)
    settings = FAMILY_RUNS[name]
    config = lambda: small_config(engine_of(name), eval_every=30, **settings)  # noqa: E731
    whole, part = tmp_path / "whole", tmp_path / "part"
    Trainer(corpus, config(), whole).run(100, progress=False)
    interrupted_at(Trainer(corpus, config(), part), 37, 100)
    interrupted_at(Trainer.resume(part, corpus, print_every=11), 71, 100)
    Trainer.resume(part, corpus).run(100, progress=False)
    assert_same_run(whole, part)
    meta = checkpoint.load(part / CHECKPOINT)[1]
    assert meta["optimizer"]["name"] == FAMILY_RUNS[name]["optimizer"]
    assert (meta["dropout_rng"] is not None) == ("dropout" in FAMILY_RUNS[name])
    assert meta["schedule"]["kind"] == FAMILY_RUNS[name].get("chunks", "streams")
    assert (part / "eval.csv").read_text().count("\n") == 1 + 4  # 30, 60, 90 and the end
