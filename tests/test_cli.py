"""The charwise command end to end on a small corpus, including its error paths."""

import numpy as np
import pytest
from click.testing import CliRunner

from charwise.cli import main
from charwise.model import CharRNN
from charwise.train import read_samples


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


TRAIN = ["--engine", "reference", "--no-progress", "--m", 16, "--seq-length", 10]


def test_train_writes_every_artefact(tmp_path, corpus_file):
    out = tmp_path / "run"
    args = ["train", corpus_file, *TRAIN, "--updates", 250, "--sample-every", 100]
    res = run(*args, "--print-every", 50, "--sample-length", 40, "--out", out)
    assert res.exit_code == 0, res.output + res.stderr
    for name in ["metrics.csv", "samples.txt", "loss.png", "final.npz", "best.npz"]:
        assert (out / name).stat().st_size > 0, name
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0] == "update,epoch,loss,smooth_loss" and len(rows) == 251
    first = rows[1].split(",")
    assert first[0] == "1" and first[2] == first[3]  # smooth loss starts at the first loss
    samples = read_samples(out / "samples.txt")
    assert [s["update"] for s in samples] == [0, 100, 200]
    assert all(len(s["text"]) == 40 for s in samples)
    assert len((out / "best_passage.txt").read_text()) == 1000
    final, _ = CharRNN.load(out / "final.npz")
    best, extra = CharRNN.load(out / "best.npz")
    assert final.meta["updates"] == 250 and best.meta["updates"] == best.meta["best_update"]
    smooth = np.loadtxt(out / "metrics.csv", delimiter=",", skiprows=1)[:, 3]
    assert best.meta["smooth_loss"] == smooth.min()
    assert "update 50 " in res.output and "done: 250 updates" in res.output


def test_sample_and_gradcheck_commands(tmp_path, corpus_file):
    out = tmp_path / "run"
    assert run("train", corpus_file, *TRAIN, "--updates", 30, "--out", out).exit_code == 0
    a = run("sample", out / "best.npz", "--length", 80, "--prime", "The ", "--seed", 3)
    b = run("sample", out / "best.npz", "--length", 80, "--prime", "The ", "--seed", 3)
    assert a.exit_code == 0 and a.output == b.output and a.output.startswith("The ")
    assert len(a.output) == len("The ") + 80 + 1
    g = run("gradcheck", corpus_file, "--m", 5, "--seed", 2)
    assert g.exit_code == 0 and "PASS" in g.output and g.output.count("\n") == 7
    strict = run("gradcheck", corpus_file, "--threshold", 1e-15)
    assert strict.exit_code == 1 and "FAIL" in strict.stderr
    info = run("info", corpus_file)
    assert info.exit_code == 0 and "updates per epoch at seq length 25: 119" in info.output


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda p: ["train", p / "missing.txt"], "corpus not found"),
        (lambda p: ["train", p / "empty.txt"], "is empty"),
        (lambda p: ["train", p / "short.txt"], "fewer than one sequence"),
        (lambda p: ["info", p / "latin1.txt"], "byte offset"),
        (lambda p: ["sample", p / "junk.npz"], "not a charwise checkpoint"),
        (lambda p: ["sample", p / "run" / "best.npz", "--prime", "\u00e9\u00e8"], "not in the"),
        (lambda p: ["train", p / "corpus.txt", "--eta", "-1"], "must be positive"),
        (lambda p: ["train", p / "corpus.txt", "--updates", "-5"], "--updates must be positive"),
        (lambda p: ["sample", p / "run" / "best.npz", "--length", "-5"], "--length must be"),
        (lambda p: ["gradcheck", p / "corpus.txt", "--h", "0"], "--h must be positive"),
        (lambda p: ["gradcheck", p / "corpus.txt", "--m", "0"], "--m must be positive"),
        (lambda p: ["info", p / "corpus.txt", "--seq-length", "0"], "--seq-length must be"),
    ],
)
def test_errors_are_one_line(tmp_path, corpus_file, make_args, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("abc")
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9".encode("latin-1"))
    (tmp_path / "junk.npz").write_bytes(b"\x00" * 100)
    run("train", corpus_file, *TRAIN, "--updates", 5, "--out", tmp_path / "run")
    res = run(*make_args(tmp_path))
    assert res.exit_code == 1
    assert message in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.output


def test_python_dash_m_equals_the_command():
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "charwise", "--help"], capture_output=True, text=True
    )
    assert res.returncode == 0 and "gradcheck" in res.stdout and "train" in res.stdout


def test_gradcheck_command_for_every_family(corpus_file):
    for family, names in (("lstm", ["b", "b2"]), ("gru", ["b", "bhn", "b2", "bhn2"])):
        res = run("gradcheck", corpus_file, "--model", family, "--layers", 2, "--batch", 3)
        assert res.exit_code == 0 and "PASS" in res.output, res.output
        rows = [line.split()[0] for line in res.output.splitlines()[1:-1]]
        assert rows == [*names, "c", "U", "W", "U2", "W2", "V"]


def test_first_line_names_model_engine_and_held_out_text(tmp_path, corpus_file):
    res = run("train", corpus_file, "--no-progress", "--updates", 5, "--out", tmp_path / "a")
    assert res.exit_code == 0
    first = res.output.splitlines()[0]
    assert first.startswith("training rnn m = 100 (fast engine) on corpus.txt: 3,000 characters")
    assert "(150 held out)" in first
    res = run("train", corpus_file, "--no-progress", "--updates", 5, "--model", "gru", "--out",
              tmp_path / "b", "--layers", 2, "--m", 8, "--val-fraction", 0)  # fmt: skip
    assert res.exit_code == 0 and "2-layer gru m = 8 (fast engine)" in res.output
    assert "held out" not in res.output.splitlines()[0]
    info = run("info", corpus_file, "--val-fraction", 0.1)
    assert "held out with --val-fraction 0.1: 300 characters" in info.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "transformer"], "Invalid value for '--model'"),
        (["--dropout", "1"], "--dropout must be below 1.0"),
        (["--val-fraction", "-0.1"], "--val-fraction must be at least 0.0"),
        (["--batch", "0"], "--batch must be positive"),
        (["--eta", "nan"], "--eta must be a finite number"),
        (["--engine", "reference", "--dtype", "float32"], "the reference engine is float64 only"),
        (["--dtype", "bfloat16", "--model", "gru"], "no engine runs gru m = 100 in bfloat16"),
    ],
)
def test_model_option_errors_are_one_line(tmp_path, corpus_file, args, message):
    res = run("train", corpus_file, "--out", tmp_path / "x", "--no-progress", *args)
    assert res.exit_code != 0 and message in res.stderr, res.stderr
    assert "Traceback" not in res.output


def test_recipe_fills_the_settings_left_at_their_defaults(tmp_path, corpus_file):
    """--recipe gru: the family's defaults for the options not given; given ones win, a
    --preset's win too; a --model of another family, and a resume, are one-line errors."""
    import json

    from charwise import checkpoint
    from charwise.config import RECIPES

    given = {"m": 8, "batch": 2, "seq_length": 12, "dtype": "float64", "engine": "reference"}
    args = [f"--{k.replace('_', '-')}={v}" for k, v in given.items()] + ["--no-progress"]
    res = run(
        "train", corpus_file, "--recipe", "gru", "--updates", 2, *args, "--out", tmp_path / "a"
    )
    assert res.exit_code == 0, res.output
    assert "2-layer gru m = 8 (reference engine)" in res.output.splitlines()[0]
    config = checkpoint.load(tmp_path / "a" / "checkpoint.npz")[1]["config"]
    want = RECIPES["gru"] | given
    assert {k: config[k] for k in want} == want
    assert want["optimizer"] == "adam" and want["layers"] == 2  # not the exercise's defaults
    tweets = tmp_path / "t.json"
    tweets.write_text(json.dumps([{"text": f"tweet {i} and more"} for i in range(40)]))
    res = run("train", tweets, "--preset", "tweets", "--recipe", "lstm", "--updates", 1, *args[:2],
              *args[3:], "--out", tmp_path / "b")  # fmt: skip
    assert res.exit_code == 0, res.output
    config = checkpoint.load(tmp_path / "b" / "checkpoint.npz")[1]["config"]
    assert config["model"] == "lstm" and config["eta"] == RECIPES["lstm"]["eta"]
    assert config["seq_length"] == 10  # the preset's, not the recipe's 100
    res = run("train", corpus_file, "--recipe", "gru", "--model", "lstm", "--out", tmp_path / "c")
    assert res.exit_code != 0 and "--recipe gru is for --model gru; drop --model lstm" in res.stderr
    res = run("train", "--resume", tmp_path / "a", "--recipe", "gru", "--updates", 3)
    assert res.exit_code != 0 and "drop --recipe" in res.stderr
