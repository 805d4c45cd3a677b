"""Bad input and interruptions: one line, an actionable fix, exit 1 (or 130), nothing lost."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import charwise
from charwise import checkpoint
from charwise.cli import main
from runs import write_corpus

SRC = str(Path(charwise.__file__).resolve().parents[1])
SMALL = ["--engine", "reference", "--m", 8, "--seq-length", 10, "--no-progress"]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    return write_corpus(tmp_path / "words.txt", n_words=400)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--passage-length", -1], "--passage-length must be at least 0 (got -1)"),
        (["--seed", -1], "--seed must be at least 0 (got -1)"),
        (["--checkpoint-seconds", "nan"], "--checkpoint-seconds must be a finite number"),
        (["--eta", "inf"], "--eta must be a finite number (got inf)"),
        (["--layers", 0], "--layers must be positive (got 0)"),
    ],
)
def test_settings_are_checked_before_training(args, message, corpus_file, tmp_path):
    out = tmp_path / "run"
    one_line_error(cli("train", corpus_file, "--out", out, *SMALL, *args), message)
    assert not out.exists()  # nothing was created, nothing trained


def test_sampling_refuses_a_nan_temperature(corpus_file, tmp_path):
    out = tmp_path / "run"
    assert cli("train", corpus_file, "--out", out, "--updates", 10, *SMALL).exit_code == 0
    for engine in ("fast", "reference"):
        result = cli("sample", out, "--temperature", "nan", "--engine", engine)
        one_line_error(result, "need --temperature >= 0")


def test_resume_with_corpus_options_but_no_corpus_is_refused(corpus_file, tmp_path):
    out = tmp_path / "run"
    assert cli("train", corpus_file, "--out", out, "--updates", 10, *SMALL).exit_code == 0
    result = cli("train", "--resume", out, "--ascii")
    one_line_error(result, "--resume reads the corpus as the run recorded it; drop --ascii")
    assert cli("train", "--resume", out, "--updates", 20).exit_code == 0


@pytest.mark.parametrize(
    "name, body, message",
    [
        ("deep.json", "[" * 100_000 + "]" * 100_000, "is not valid JSON for charwise: arrays"),
        ("comma.json", '[{"text": "a"},]', "is not valid JSON (line 1, column 16: Expecting"),
        ("deep.jsonl", '{"text": "a"}\n' + "[" * 100_000, "line 2 is not valid JSON"),
        ("broken.jsonl", '{"text": "a"}\n{"text": \n', "line 2 is not valid JSON (column 10"),
    ],
)
def test_malformed_json_archives(name, body, message, tmp_path):
    path = tmp_path / name
    path.write_text(body)
    one_line_error(cli("info", path), message)


def test_plot_refuses_what_it_cannot_write(corpus_file, tmp_path):
    out = tmp_path / "run"
    assert cli("train", corpus_file, "--out", out, "--updates", 10, *SMALL).exit_code == 0
    one_line_error(cli("plot", out, "--out", tmp_path / "nowhere" / "a.png"), "does not exist")
    one_line_error(cli("plot", out, "--out", tmp_path / "a.docx"), "cannot write a figure as")
    one_line_error(cli("plot", out, "--out", tmp_path), "is a folder; give a file name")
    ok = cli("plot", out, "--out", tmp_path / "a.svg")
    assert ok.exit_code == 0 and (tmp_path / "a.svg").read_text().lstrip().startswith("<?xml")


def test_a_full_disk_keeps_the_checkpoint_and_says_how_to_continue(
    corpus_file, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    assert cli("train", corpus_file, "--out", out, "--updates", 30, *SMALL).exit_code == 0
    before = (out / "checkpoint.npz").read_bytes()
    real = np.savez

    def full(*args, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full)
    result = cli("train", "--resume", out, "--updates", 60, "--checkpoint-seconds", 1e-9)
    one_line_error(result, "No space left on device")
    assert f"charwise train --resume {out}" in result.stderr
    assert (out / "checkpoint.npz").read_bytes() == before
    assert not list(out.glob(".*.tmp"))
    monkeypatch.setattr(np, "savez", real)
    assert cli("train", "--resume", out, "--updates", 60).exit_code == 0
    assert checkpoint.load(out / "checkpoint.npz")[1]["updates"] == 60


def command(*args) -> list[str]:
    return [sys.executable, "-m", "charwise", *map(str, args)]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": SRC}


@pytest.mark.slow
def test_ctrl_c_during_start_up_exits_130(corpus_file, tmp_path):
    proc = subprocess.Popen(
        command("train", corpus_file, "--out", tmp_path / "run", *SMALL),
        env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(0.15)  # importing: long before the first checkpoint
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:  # a loaded machine: still in the interpreter's own start
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Aborted" not in err and "Traceback" not in err
    assert "interrupted" in err or "stopped by SIGINT" in err


def test_the_exit_after_a_ctrl_c_is_130_even_when_it_ended_a_string_eval(tmp_path):
    # CPython under `python -m` kills itself with SIGINT at exit (status -2, whatever sys.exit
    # said) once a KeyboardInterrupt has ended a string exec/eval, caught or not: a Ctrl-C in
    # a namedtuple's or dataclass's generated code while charwise imports. This is that case.
    (tmp_path / "ctrl_c_in_eval.py").write_text(
        "import sys\n"
        "from charwise.errors import exit_interrupted\n"
        "try:\n"
        "    exec('raise KeyboardInterrupt', {})\n"
        "except KeyboardInterrupt:\n"
        "    print('kept', end='')\n"
        "    exit_interrupted(int(sys.argv[1]))\n"
    )
    for status in (130, 143):
        done = subprocess.run(
            [sys.executable, "-m", "ctrl_c_in_eval", str(status)],
            env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{SRC}"},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert (done.returncode, done.stdout) == (status, "kept"), done.stderr


def interrupted(args: list, out: Path, ctrl_c: int) -> tuple[int, str]:
    """Run charwise with args, Ctrl-C it ctrl_c times at once once it trains: (status, stderr)."""
    proc = subprocess.Popen(
        command(*args), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    while not (out / "metrics.csv").exists() or (out / "metrics.csv").stat().st_size < 2000:
        time.sleep(0.01)
    for _ in range(ctrl_c):  # a second one arrives while the first one's checkpoint is saved
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


@pytest.mark.slow
def test_two_quick_ctrl_c_exit_130_with_the_resume_hint(corpus_file, tmp_path):
    out = tmp_path / "run"
    args = ["train", corpus_file, "--out", out, "--updates", 10**6, *SMALL]
    status, err = interrupted([*args, "--checkpoint-every", 1], out, ctrl_c=2)
    assert status == 130, err
    assert "Aborted" not in err and f"charwise train --resume {out}" in err
    updates = checkpoint.load(out / "checkpoint.npz")[1]["updates"]  # intact, loadable
    assert updates > 0 and not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_a_stopped_report_is_finished_by_report_resume(corpus_file, tmp_path):
    out = tmp_path / "report"
    args = ["report", corpus_file, "--out", out, "--updates", 10**6, *SMALL, "--overfit-cap", 10]
    status, err = interrupted(args, out, ctrl_c=1)
    assert status == 130 and f"charwise report --resume {out}" in err, err
    one_line_error(cli("report", "--from", out), "finish it with charwise report --resume")
    stopped = checkpoint.load(out / "checkpoint.npz")[1]["updates"]
    result = cli("report", "--resume", out, "--updates", 5)
    one_line_error(result, "--resume reads the report's own settings; drop --updates")
    # a nearer target than 10**6 for the test: report --resume reads it from report.json
    data = json.loads((out / "report.json").read_text())
    data["target"]["updates"] = stopped + 40
    (out / "report.json").write_text(json.dumps(data))
    done = cli("report", "--resume", out, "--no-progress")
    assert done.exit_code == 0, done.output
    assert (out / "report.md").exists()
    assert checkpoint.load(out / "final.npz")[1]["updates"] == stopped + 40


def test_a_model_too_big_for_memory_is_refused_before_allocating(corpus_file, tmp_path):
    start = time.perf_counter()
    result = cli("train", corpus_file, "--out", tmp_path / "run", "--m", 200_000)
    one_line_error(result, "rnn m = 200000 with --batch 1 --seq-length 25 needs about")
    assert "GiB is available; use a smaller --m" in result.stderr
    assert time.perf_counter() - start < 10 and not (tmp_path / "run").exists()
    # the same for sizes read from a checkpoint's metadata, checked before anything is built
    out = tmp_path / "small"
    assert cli("train", corpus_file, "--out", out, "--updates", 5, *SMALL).exit_code == 0
    arrays, meta = checkpoint.load(out / "checkpoint.npz")
    meta["config"]["m"] = 200_000
    checkpoint.save(out / "checkpoint.npz", arrays, meta, kind="checkpoint")
    one_line_error(cli("train", "--resume", out, "--updates", 9), "needs about")


MEMORY_PEAK = """
import io, json, resource, sys, zipfile
import numpy as np
from charwise import checkpoint
n, path = 2**26, sys.argv[1]  # 256 MiB of float32 zeros, deflated to a small file
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False,
                                               "shape": (n,)})
    with zf.open("b.npy", "w", force_zip64=True) as f:
        f.write(head.getvalue())
        for _ in range(16):
            f.write(bytes(n // 4))
    meta = {"format": "charwise-checkpoint", "version": 3, "kind": "model"}
    m = io.BytesIO()
    np.lib.format.write_array(m, np.frombuffer(json.dumps(meta).encode(), np.uint8))
    zf.writestr("__meta__.npy", m.getvalue())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
arrays, _ = checkpoint.load(path)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(arrays["b"].nbytes, (after - before) * 1024)
"""


@pytest.mark.slow
def test_a_checkpoint_is_read_with_one_copy_in_memory(tmp_path):
    """A crafted 256 MiB array (a small deflated file) costs its own size, not a multiple."""
    script = tmp_path / "peak.py"
    script.write_text(MEMORY_PEAK)
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "big.npz")], env=env(),
                         capture_output=True, text=True, check=True)  # fmt: skip
    size, grown = map(int, run.stdout.split())
    assert size == 2**28 and grown < 1.25 * size, (size, grown)
