"""Sweeps on Ray Tune: the sweep file's checks, a real sweep on a local Ray instance with ASHA,
and an interrupted sweep resumed."""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import charwise
from charwise import rundir
from charwise.cli import main
from charwise.errors import CharwiseError
from charwise.sweep import parse_sweep
from conftest import english_like

has_ray = importlib.util.find_spec("ray") is not None
if not has_ray and os.environ.get("CHARWISE_REQUIRE_RAY"):
    raise RuntimeError("CHARWISE_REQUIRE_RAY is set but ray is not installed")
needs_ray = pytest.mark.skipif(not has_ray, reason='ray not installed (pip install -e ".[sweep]")')
SRC = str(Path(charwise.__file__).resolve().parents[1])

GOOD = {
    "corpus": "tinyshakespeare",
    "metric": "val_bits_per_char",
    "samples": 2,
    "scheduler": "asha",
    "concurrent": 2,
    "resources": {"cpus": 1, "gpus": 0},
    "train": {"minutes": 2, "eval_every": 2000, "val_fraction": 0.1},
    "space": {
        "model": {"grid": ["rnn", "lstm", "gru"]},
        "m": {"grid": [128, 256]},
        "eta": {"loguniform": [1e-3, 1e-2]},
    },
}


def edited(path: str, value):
    """GOOD with the key at path ("a.b.c") set to value (None: removed)."""
    import copy

    raw = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    table = raw
    for key in parents:
        table = table.setdefault(key, {})
    if value is None:
        table.pop(last)
    else:
        table[last] = value
    return raw


def test_the_issue_s_example_parses():
    sweep = parse_sweep(GOOD)
    assert sweep.minutes == 2 and sweep.updates is None and sweep.samples == 2
    assert sweep.space["eta"] == ("loguniform", [1e-3, 1e-2])
    assert sweep.train == {"eval_every": 2000, "val_fraction": 0.1}


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("colour", "red", "unknown key 'colour'"),
        ("train.learning_rate", 0.1, "unknown key train.learning_rate"),
        ("space.depth", {"grid": [1, 2]}, "unknown key space.depth"),
        ("resources.tpus", 1, "unknown key resources.tpus"),
        ("load.colour", True, "unknown key load.colour"),
        ("metric", "accuracy", "metric must be one of val_bits_per_char"),
        ("scheduler", "hyperband", "scheduler must be asha or none"),
        ("samples", 0, "samples must be at least 1"),
        ("concurrent", "two", "concurrent must be int"),
        ("resources.cpus", 0, "resources.cpus must be positive"),
        ("train.minutes", None, "give each trial a budget"),
        ("corpus", None, "corpus is missing"),
        ("space.m", {"grid": []}, "space.m.grid must be a non-empty list"),
        ("space.m", {"grid": [128], "choice": [1]}, "space.m must be one of"),
        (
            "space.eta",
            {"loguniform": [0, 1e-2]},
            "space.eta.loguniform must be [low, high] with 0 < low",
        ),
        (
            "space.eta",
            {"uniform": [0.5, 0.1]},
            "space.eta.uniform must be [low, high] with low < high",
        ),
        ("space.m", {"randint": [64.5, 128]}, "space.m.randint must be [low, high]"),
        ("space.model", {"grid": ["rnn", "transformer"]}, "--model must be one of rnn, lstm, gru"),
        ("space.m", {"grid": [0, 128]}, "--m must be positive (got 0)"),
        ("train.m", 128, "space.m is also fixed in [train]"),
        ("train.val_fraction", 0, "train.val_fraction must be positive"),
    ],
)
def test_bad_sweep_files_are_one_line_errors_naming_the_key(path, value, message):
    with pytest.raises(CharwiseError, match=re.escape(message)) as err:
        parse_sweep(edited(path, value))
    assert "\n" not in str(err.value)


def test_a_sweep_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    toml = tmp_path / "s.toml"
    toml.write_text('corpus = "x.txt"\n[train]\nupdates = 10\n')
    result = CliRunner().invoke(main, ["sweep", str(toml), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert 'charwise sweep needs Ray Tune: pip install -e ".[sweep]"' in result.stderr


def write_sweep(tmp_path: Path, text: str) -> Path:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(english_like(20_000, seed=4), encoding="utf-8")
    path = tmp_path / "sweep.toml"
    path.write_text(text.replace("CORPUS", str(corpus)))
    return path


ASHA_SWEEP = """
corpus = "CORPUS"
scheduler = "asha"
concurrent = 2
[train]
updates = 800
eval_every = 100
val_fraction = 0.1
seq_length = 20
engine = "reference"
optimizer = "adam"
[space]
m = { grid = [16, 24] }
eta = { grid = [3e-3, 1e-5] }
"""


def results_csv(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


@needs_ray
@pytest.mark.slow
def test_a_real_sweep_with_asha(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["sweep", str(write_sweep(tmp_path, ASHA_SWEEP)),
                                       "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output + result.stderr
    rows = results_csv(out)
    assert len(rows) == 4 and {r["status"] for r in rows} <= {"finished", "stopped early"}
    assert any(r["status"] == "stopped early" for r in rows)  # the eta 1e-5 ones lag
    assert any(r["status"] == "finished" for r in rows)  # the best one runs to its end
    assert rows[0]["eta"] == "0.003"  # sorted by the metric: a learning trial first
    for row in rows:
        run = out / "trials" / row["trial"]
        evals = rundir.read_eval(run)  # every trial is an ordinary run directory
        best = int(evals["val_bits"].argmin())
        assert float(row["val_bits_per_char"]) == evals["val_bits"][best]
        assert int(row["best_update"]) == evals["update"][best]
        assert rundir.describe(run)["status"] == (
            "finished" if row["status"] == "finished" else "stopped"
        )
        if row["status"] == "finished":
            assert int(row["updates"]) == 800 and (run / "final.npz").exists()
        else:  # stopped at a rung, possibly the last one: before its final files
            assert int(row["updates"]) <= 800 and not (run / "final.npz").exists()
    listing = CliRunner().invoke(main, ["runs", str(out / "trials")])
    assert listing.exit_code == 0 and len(listing.output.splitlines()) == 5
    md = (out / "sweep.md").read_text()
    assert "charwise train" in md and "--eta 0.003" in md and "best-val.npz" in md
    assert (out / "sweep.html").read_text().count("<tr>") >= 5


RESUME_SWEEP = """
corpus = "CORPUS"
scheduler = "none"
concurrent = 1
[train]
updates = 1500
eval_every = 500
val_fraction = 0.1
seq_length = 20
engine = "reference"
[space]
m = { grid = [8, 12, 16, 20] }
"""


def sweep_command(*args) -> list[str]:
    return [sys.executable, "-m", "charwise", "sweep", *map(str, args)]


@needs_ray
@pytest.mark.slow
def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC}
    plan = write_sweep(tmp_path, RESUME_SWEEP)
    whole = tmp_path / "whole"
    subprocess.run(sweep_command(plan, "--out", whole), env=env, check=True,
                   capture_output=True)  # fmt: skip
    out = tmp_path / "stopped"
    proc = subprocess.Popen(sweep_command(plan, "--out", out), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while len(list(out.glob("trials/*/final.npz"))) < 1:
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and f"charwise sweep --resume {out}" in err, err
    finished = {p.parent.name: p.parent.joinpath("metrics.csv").read_bytes()
                for p in out.glob("trials/*/final.npz")}  # fmt: skip
    assert 1 <= len(finished) < 4
    resumed = subprocess.run(sweep_command("--resume", out), env=env, capture_output=True,
                             text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    for name, metrics in finished.items():  # not run again
        assert (out / "trials" / name / "metrics.csv").read_bytes() == metrics
    by_m = lambda folder: {r["m"]: r for r in results_csv(folder)}  # noqa: E731
    a, b = by_m(whole), by_m(out)
    assert a.keys() == b.keys() == {"8", "12", "16", "20"}
    for m in a:  # every trial ran to its end in both: the same numbers
        assert a[m]["status"] == b[m]["status"] == "finished"
        ea = rundir.read_eval(whole / "trials" / a[m]["trial"])
        eb = rundir.read_eval(out / "trials" / b[m]["trial"])
        assert np.array_equal(ea["val_nats"], eb["val_nats"]), m
