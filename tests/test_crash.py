"""Crash safety: periodic checkpoints, log repair after a kill, SIGKILL at random moments."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import charwise
from charwise import checkpoint
from charwise.corpus import load_corpus
from charwise.train import CHECKPOINT, Trainer
from runs import N, assert_same_run, small_config, write_corpus

SRC = str(Path(charwise.__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "words.txt")


@pytest.fixture(scope="module")
def one_go(corpus_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one-go")
    Trainer(load_corpus(corpus_file), small_config("reference"), out).run(N, progress=False)
    return out


def test_resume_repairs_partial_lines_and_drops_later_output(corpus_file, one_go, tmp_path):
    corpus, out = load_corpus(corpus_file), tmp_path / "run"
    Trainer(corpus, small_config("reference"), out).run(90, progress=False)
    # what a kill after the checkpoint at 90 can leave: later rows and samples, partial lines
    whole_metrics = (one_go / "metrics.csv").read_bytes().split(b"\n")
    with (out / "metrics.csv").open("ab") as f:
        f.write(b"\n".join(whole_metrics[91:125]) + b"\n" + whole_metrics[125][:7])
    with (out / "samples.txt").open("a", encoding="utf-8", newline="") as f:
        f.write("--- update 120, epoch 2, loss 60.1, chars 15 ---\nabcdefghijklmno\n\n--- upd")
    (out / ".checkpoint.npz.x1.tmp").write_bytes(b"PK\x03\x04 half a zip")
    Trainer.resume(out, corpus).run(N, progress=False)
    assert_same_run(one_go, out)
    assert not list(out.glob("*.tmp"))


def test_resume_refuses_logs_shorter_than_the_checkpoint(corpus_file, tmp_path):
    corpus, out = load_corpus(corpus_file), tmp_path / "run"
    Trainer(corpus, small_config("reference"), out).run(40, progress=False)
    raw = (out / "metrics.csv").read_bytes()
    (out / "metrics.csv").write_bytes(raw[: raw.rindex(b"\n", 0, -1) + 5])  # row 40 partial
    with pytest.raises(charwise.CharwiseError, match="lacks rows of the first 40 updates"):
        Trainer.resume(out, corpus)


def saved_updates(monkeypatch) -> list[int]:
    """The update count of every checkpoint.npz written from now on."""
    seen = []
    save = checkpoint.save

    def spy(path, arrays, meta, **kw):
        if Path(path).name == CHECKPOINT:
            seen.append(meta["updates"])
        save(path, arrays, meta, **kw)

    monkeypatch.setattr(checkpoint, "save", spy)
    return seen


def test_checkpoint_every_n_updates(corpus_file, one_go, tmp_path, monkeypatch):
    seen = saved_updates(monkeypatch)
    out = tmp_path / "run"
    config = small_config("reference", checkpoint_every=30)
    Trainer(load_corpus(corpus_file), config, out).run(N, progress=False)
    assert seen == [0, *range(30, N, 30), N]
    assert_same_run(one_go, out)


def test_timed_checkpoints_change_no_numbers(corpus_file, one_go, tmp_path, monkeypatch):
    seen = saved_updates(monkeypatch)
    out = tmp_path / "run"
    config = small_config("reference", checkpoint_seconds=1e-9)  # due at every block end
    trainer = Trainer(load_corpus(corpus_file), config, out)
    trainer.run(N, progress=False)
    blocks = sorted({*range(0, N, 7), *range(0, N, 40), N})  # print_every 7, sample_every 40
    assert seen == blocks + [N]
    assert_same_run(one_go, out)


def cli_command(corpus: Path, out: Path, updates: int, resume: bool) -> list[str]:
    settings = [
        "--engine", "reference", "--m", "8", "--seq-length", "10", "--print-every", "10",
        "--sample-every", "500", "--sample-length", "30", "--passage-length", "50",
        "--checkpoint-every", "50",
    ]  # fmt: skip
    start = ["--resume", str(out)] if resume else [str(corpus), "--out", str(out), *settings]
    return [sys.executable, "-m", "charwise", "train", *start, "--updates", str(updates)]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": SRC}


def rows_written(out: Path) -> int:
    try:
        return (out / "metrics.csv").read_bytes().count(b"\n") - 1
    except OSError:
        return -1


def wait_for(condition, seconds: float = 60.0, pause: float = 0.002) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the training process made no progress"
        time.sleep(pause)


def kill_repeatedly(command, out: Path, updates: int, kills: int, seed: int) -> tuple[int, int]:
    """SIGKILL `command(resume)` at random moments (two during start-up, every fourth inside
    a checkpoint write), restarting it each time, then let it finish. Returns (resumes,
    kills inside a checkpoint write)."""
    rng = random.Random(seed)
    restarts, mid_write = 0, 0
    # the last kills leave the run a few checkpoints to aim at before it ends
    targets = sorted(rng.sample(range(1, updates - updates // 8), kills - 2))
    plan = [(0, rng.uniform(0.0, 0.6)) for _ in range(2)] + [(t, None) for t in targets]
    for i, (target, delay) in enumerate(plan):
        resume = (out / CHECKPOINT).exists()
        restarts += resume
        stale = set(out.glob(".*.tmp"))
        proc = subprocess.Popen(
            command(resume), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        if delay is not None:
            time.sleep(delay)  # during start-up, maybe before the first checkpoint exists
        else:
            wait_for(lambda t=target, p=proc: rows_written(out) >= t or p.poll() is not None)
            if i % 4 == 3:  # aim at a checkpoint write: kill while its temporary file exists
                # (looked for without pausing: a small checkpoint's temporary lives ~1 ms)
                wait_for(lambda p=proc: any(out.glob(".*.tmp")) or p.poll() is not None, pause=0)
            else:
                time.sleep(rng.uniform(0.0, 0.05))
        assert proc.poll() is None, f"finished before kill {i + 1}: {proc.stderr.read()}"
        proc.kill()
        proc.wait()
        proc.stderr.close()
        mid_write += bool(set(out.glob(".*.tmp")) - stale)  # this process died mid-save
    final = subprocess.run(command(True), env=env(), capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    return restarts + 1, mid_write


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(tmp_path):
    """20 SIGKILLs (some at start-up, some inside checkpoint writes), 20 restarts, no loss."""
    corpus = write_corpus(tmp_path / "words.txt", n_words=400, seed=1)
    updates, kills = 8000, 20
    whole = tmp_path / "whole"
    subprocess.run(cli_command(corpus, whole, updates, False), env=env(), check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    out = tmp_path / "killed"
    command = lambda resume: cli_command(corpus, out, updates, resume)  # noqa: E731
    restarts, mid_write = kill_repeatedly(command, out, updates, kills, 20261122)
    print(f"\n{kills} SIGKILLs, {restarts} resumes, {mid_write} kills inside checkpoint writes")
    assert restarts >= kills - 2 and mid_write >= 1
    assert_same_run(whole, out)
    arrays, _ = checkpoint.load(out / CHECKPOINT)
    assert all(np.isfinite(a).all() for a in arrays.values())


@pytest.mark.slow
def test_sigkill_lstm_adam_batch_dropout_loses_nothing(tmp_path):
    """The same for a 2-layer lstm with Adam, 4 streams, dropout and validation: the
    optimiser moments, every stream's state, the dropout generator and best-val survive."""
    corpus = write_corpus(tmp_path / "words.txt", n_words=400, seed=1)
    family = ["--model", "lstm", "--layers", "2", "--optimizer", "adam", "--batch", "4",
              "--dropout", "0.2", "--eval-every", "150", "--val-fraction", "0.1"]  # fmt: skip
    updates, kills = 1200, 12

    def command(out: Path, resume: bool) -> list[str]:
        args = cli_command(corpus, out, updates, resume)
        return args if resume else [*args, *family]

    whole, out = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(command(whole, False), env=env(), check=True, stdout=subprocess.DEVNULL)
    restarts, mid_write = kill_repeatedly(lambda r: command(out, r), out, updates, kills, 7)
    assert restarts >= kills - 2 and mid_write >= 1
    assert_same_run(whole, out)


@pytest.mark.slow
@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_with_a_checkpoint_and_resume_hint(sig, status, tmp_path):
    corpus = write_corpus(tmp_path / "words.txt", n_words=400, seed=1)
    out = tmp_path / "stopped"
    proc = subprocess.Popen(
        cli_command(corpus, out, 10**6, False),
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: rows_written(out) >= 300 or proc.poll() is not None)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    stopped = checkpoint.load(out / CHECKPOINT)[1]["updates"]
    name = signal.Signals(sig).name
    assert f"stopped by {name} at update {stopped}; checkpoint saved" in err
    assert f"Continue with: charwise train --resume {out}" in err
    assert rows_written(out) == stopped >= 300  # nothing trained after the checkpoint
    # the stopped run, resumed, equals a run that was never stopped
    target = stopped + 77
    done = subprocess.run(cli_command(corpus, out, target, True), env=env(), capture_output=True)
    assert done.returncode == 0, done.stderr
    whole = tmp_path / "whole"
    subprocess.run(cli_command(corpus, whole, target, False), env=env(), check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    assert_same_run(whole, out)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(corpus_file, one_go, tmp_path):
    corpus, out = load_corpus(corpus_file), tmp_path / "run"
    trainer = Trainer(corpus, small_config("reference", eta=1e308), out)
    with np.errstate(all="ignore"):
        with pytest.raises(charwise.CharwiseError) as err:
            trainer.run(N, progress=False)
    message = str(err.value)
    assert message.startswith("training diverged at update 2 (loss nan or a gradient")
    assert "checkpoint (update 0) is kept" in message and "--eta 1e+307" in message
    assert "\n" not in message
    # the kept checkpoint is the untouched start: resumed with a sane eta it is the normal run
    Trainer.resume(out, corpus, eta=0.1).run(N, progress=False)
    assert_same_run(one_go, out)


def test_huge_learning_rate_trips_the_smooth_loss_rule(corpus_file, tmp_path):
    corpus, out = load_corpus(corpus_file), tmp_path / "run"
    Trainer(corpus, small_config("reference"), out).run(90, progress=False)
    before = (out / CHECKPOINT).read_bytes()
    with pytest.raises(charwise.CharwiseError) as err:
        Trainer.resume(out, corpus, eta=1e6).run(N, progress=False)
    message = str(err.value)
    assert message.startswith("training diverged at update 92 (smooth loss ")
    assert "rose above 2 x tau ln K" in message and "(update 90) is kept" in message
    assert f"charwise train --resume {out} --eta 100000" in message
    assert (out / CHECKPOINT).read_bytes() == before


def test_slow_blow_up_stops_after_periodic_checkpoints(corpus_file, tmp_path):
    corpus, out = load_corpus(corpus_file), tmp_path / "run"
    # eta 20 blows up within ~40 updates on every BLAS we met; eta 10 only on some machines
    # (training is chaotic: the last bits of a BLAS's sums decide when a marginal run diverges)
    trainer = Trainer(corpus, small_config("reference", eta=20.0, checkpoint_every=20), out)
    with pytest.raises(charwise.CharwiseError, match="rose above 2 x tau ln K") as err:
        trainer.run(10 * N, progress=False)
    update = int(str(err.value).split("update ")[1].split(" ")[0])
    arrays, meta = checkpoint.load(out / CHECKPOINT)
    smooth = np.loadtxt(out / "metrics.csv", delimiter=",", skiprows=1)[:, 3]
    assert smooth[update - 1] > 2 * smooth[0] >= smooth[: update - 1].max()
    assert meta["updates"] == (update - 1) // 20 * 20 > 0
    assert meta["smooth_loss"] == smooth[meta["updates"] - 1] <= 2 * smooth[0]
    assert all(np.isfinite(a).all() for a in arrays.values())


def test_a_non_finite_state_is_never_saved(corpus_file, tmp_path):
    corpus, out = load_corpus(corpus_file), tmp_path / "run"
    trainer = Trainer(corpus, small_config("reference"), out)
    trainer.run(20, progress=False)
    before = (out / CHECKPOINT).read_bytes()
    trainer.state.G.W[1, 2] = np.inf
    with pytest.raises(charwise.CharwiseError, match=r"non-finite values \(G_W\) at update 20"):
        trainer.save_checkpoint()
    assert (out / CHECKPOINT).read_bytes() == before


def test_cli_divergence_is_one_line(corpus_file, tmp_path):
    from click.testing import CliRunner

    from charwise.cli import main

    out = tmp_path / "run"
    args = ["train", str(corpus_file), "--out", str(out), "--engine", "reference", "--m", "8"]
    result = CliRunner().invoke(main, [*args, "--eta", "1e6", "--updates", "50", "--no-progress"])
    assert result.exit_code == 1
    last = result.stderr.strip()
    assert last.startswith("charwise: error: training diverged at update 2 (smooth loss")
    assert last.endswith(f"charwise train --resume {out} --eta 100000")


def test_short_first_document_is_not_divergence(tmp_path):
    """A 1-character first document makes update 1's loss tiny; the bar is tau ln K, not it."""
    lines = ["A"] + [f"line {i} of a corpus, with words to learn. " * 3 for i in range(80)]
    path = tmp_path / "names.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    corpus = load_corpus(path, format="lines")
    trainer = Trainer(corpus, small_config("reference", seq_length=25, eta=0.01), tmp_path / "run")
    state = trainer.run(300, progress=False)
    assert state.updates == 300 and trainer.first_loss < 10  # update 1 saw two targets only
    smooth = np.loadtxt(tmp_path / "run" / "metrics.csv", delimiter=",", skiprows=1)[:, 3]
    assert smooth.max() > 2 * trainer.first_loss  # the old yardstick would have stopped it
