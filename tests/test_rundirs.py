"""Run directories that cannot be corrupted or abused: one process per directory, new folders
that never collide, no write through a symbolic link, files with the user's umask."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import charwise
from charwise import safeio
from charwise.cli import main, run_dir
from charwise.corpus import load_corpus
from charwise.errors import CharwiseError
from charwise.train import Trainer
from runs import small_config, write_corpus

SRC = str(Path(charwise.__file__).resolve().parents[1])


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def train_command(corpus: Path, out: Path, updates: int) -> list[str]:
    return [sys.executable, "-m", "charwise", "train", str(corpus), "--out", str(out),
            "--updates", str(updates), "--engine", "reference", "--m", "32", "--no-progress",
            "--print-every", "1000"]  # fmt: skip


def test_two_runs_into_one_folder_one_is_refused_with_the_owner_pid(tmp_path):
    corpus = write_corpus(tmp_path / "words.txt", n_words=400)
    out = tmp_path / "shared"
    env = {**os.environ, "PYTHONPATH": SRC}
    procs = [
        subprocess.Popen(
            train_command(corpus, out, 4000),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    results = [(p, p.communicate(timeout=120)[1]) for p in procs]
    winners = [p for p, _ in results if p.returncode == 0]
    losers = [(p, err) for p, err in results if p.returncode != 0]
    assert len(winners) == 1 and len(losers) == 1, results
    loser, err = losers[0]
    assert loser.returncode == 1 and err.count("\n") == 1
    assert f"is in use by another charwise process (pid {winners[0].pid})" in err
    metrics = (out / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 4001  # one run's rows only, in order
    assert [int(r.split(",")[0]) for r in metrics[1:]] == list(range(1, 4001))


def test_a_held_folder_refuses_resume_too(tmp_path):
    corpus = load_corpus(write_corpus(tmp_path / "words.txt"))
    out = tmp_path / "run"
    Trainer(corpus, small_config("reference"), out).run(20, progress=False)
    holder = Trainer.resume(out, corpus)  # holds the folder until it runs or is dropped
    with pytest.raises(
        CharwiseError, match=f"in use by another charwise process \\(pid {os.getpid()}"
    ):
        Trainer.resume(out, corpus)
    holder.run(40, progress=False)
    Trainer.resume(out, corpus).run(50, progress=False)  # released at the end of run()


def test_a_run_seen_stopped_shows_its_last_checkpoint(tmp_path, monkeypatch):
    """A process writes its last checkpoint, then lets go of the lock; describe() catching that
    moment between its reads must not show the run stopped with the checkpoint before."""
    from charwise import checkpoint, rundir

    corpus = load_corpus(write_corpus(tmp_path / "words.txt"))
    out = tmp_path / "run"
    Trainer(corpus, small_config("reference"), out).run(20, progress=False)
    holder = Trainer.resume(out, corpus)  # holds the lock, as a running process does
    read_meta, reads = checkpoint.read_meta, []

    def read_then_the_run_ends(path):
        meta = read_meta(path)
        if not reads:  # the run's last checkpoint lands and it lets go, just after this read
            reads.append(meta["updates"])
            holder.run(40, progress=False)
        return meta

    monkeypatch.setattr(checkpoint, "read_meta", read_then_the_run_ends)
    seen = rundir.describe(out)
    assert reads == [20] and checkpoint.read_meta(out / "checkpoint.npz")["updates"] == 40
    assert not rundir.is_running(out)
    assert (seen["status"], seen["updates"]) == ("running", 20)  # true when it looked
    assert (rundir.describe(out)["status"], rundir.describe(out)["updates"]) == ("finished", 40)


def test_new_folders_never_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt: "20261130-120000")  # the same second
    corpus = write_corpus(tmp_path / "words.txt")
    for _ in range(3):
        result = cli("train", corpus, "--engine", "reference", "--m", 8, "--updates", 20,
                     "--no-progress")  # fmt: skip
        assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert names == ["words-20261130-120000", "words-20261130-120000-2", "words-20261130-120000-3"]
    assert all((tmp_path / "runs" / n / "final.npz").exists() for n in names)
    bad = cli("train", corpus, "--model", "lstm", "--dtype", "bfloat16", "--no-progress")
    assert bad.exit_code == 1  # a refused run leaves no empty folder behind
    assert len(list((tmp_path / "runs").iterdir())) == 3
    assert run_dir(None, load_corpus(corpus)).name == "words-20261130-120000-4"


def test_links_in_a_run_folder_are_refused_and_never_followed(tmp_path):
    corpus_file = write_corpus(tmp_path / "words.txt")
    out = tmp_path / "run"
    common = ["--engine", "reference", "--m", 8, "--no-progress", "--val-fraction", 0]
    assert cli("report", corpus_file, "--out", out, "--updates", 30, "--overfit-cap", 5,
               *common).exit_code == 0  # fmt: skip
    victims = {}
    for name in ("samples.txt", "best_passage.txt", "report.md"):
        victim = tmp_path / f"victim-{name}"
        victim.write_text("precious\n")
        victims[name] = victim
        (out / name).unlink()
        (out / name).symlink_to(victim)
    result = cli("train", "--resume", out, "--updates", 60)
    assert result.exit_code == 1 and "is a symbolic link" in result.stderr
    assert result.stderr.count("\n") == 1
    result = cli("report", "--from", out)
    assert result.exit_code == 1 and "is a symbolic link" in result.stderr
    assert all(v.read_text() == "precious\n" for v in victims.values())
    with pytest.raises(CharwiseError, match="is a symbolic link"):
        safeio.append(out / "samples.txt", b"x")
    with pytest.raises(CharwiseError, match="is a symbolic link"):
        safeio.truncate(out / "best_passage.txt", 0)
    safeio.write_text(out / "report.md", "new")  # a whole-file write replaces the link itself
    assert not (out / "report.md").is_symlink() and victims["report.md"].read_text() == "precious\n"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_every_file_follows_the_umask(umask, mode, tmp_path):
    corpus = load_corpus(write_corpus(tmp_path / "words.txt"))
    old = os.umask(umask)
    try:
        Trainer(corpus, small_config("reference", val_fraction=0.1), tmp_path / "run").run(
            30, progress=False
        )
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "run").iterdir() if p.name != ".lock"]
    assert {p.suffix for p in files} >= {".npz", ".csv", ".txt", ".png"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path.name
