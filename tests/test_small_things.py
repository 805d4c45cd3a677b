"""What users notice: start-up messages, progress lines, sample headers, option names in
errors, finding runs and their models."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import charwise
from charwise.cli import main
from charwise.corpus import load_corpus
from charwise.engines import fast
from charwise.errors import CharwiseError
from charwise.events import Progress
from charwise.train import Trainer, read_samples
from runs import small_config, write_corpus

SRC = str(Path(charwise.__file__).resolve().parents[1])


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    return write_corpus(tmp_path / "words.txt", n_words=400)


@pytest.mark.slow
def test_the_first_start_says_it_compiles_and_later_ones_do_not(corpus_file, tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    outputs = []
    for run in ("a", "b"):
        args = ["train", corpus_file, "--out", tmp_path / run, "--updates", 300, "--no-progress"]
        done = subprocess.run([sys.executable, "-m", "charwise", *map(str, args)], env=env,
                              capture_output=True, text=True, check=True)  # fmt: skip
        outputs.append(done.stdout)
    # no compile timed yet: the estimate measured on the machine of fast.COMPILE_SECONDS
    said = "compiling the fast engine's rnn kernels (once per model family and dtype, about 15 s)"
    assert said in outputs[0]
    assert "compiling" not in outputs[1]
    speed = tmp_path / "numba" / fast.COMPILE_SPEED  # this machine's time against those
    for run, family, compiles in (("c", "gru", True), ("d", "lstm", True), ("e", "gru", False)):
        ratio = float(speed.read_text())
        args = ["train", corpus_file, "--out", tmp_path / run, "--updates", 3, "--model", family]
        done = subprocess.run([sys.executable, "-m", "charwise", *map(str, args)], env=env,
                              capture_output=True, text=True, check=True)  # fmt: skip
        # each family when first used, though another family's kernels are in the cache, with
        # the time the last whole compile on this machine implies for it
        said = f"compiling the fast engine's {family} kernels" in done.stdout
        assert said == compiles, (family, done.stdout)
        about = f"about {max(5, round(40 * ratio / 5) * 5)} s)"
        assert (about in done.stdout) == compiles, (about, done.stdout)
        if compiles:  # the ratio is that of this compile now, which the trainer timed too
            ready = float(done.stdout.split("engine ready in ")[1].split(" s")[0])
            assert 0.9 < float(speed.read_text()) * 40 / ready < 1.01, (speed.read_text(), ready)


def test_the_compile_estimate_scales_by_this_machines_last_whole_compile(tmp_path, monkeypatch):
    from charwise.models import ModelSpec

    monkeypatch.setattr(fast, "cache_folder", lambda: tmp_path)
    lstm, big = ModelSpec("lstm", 65, 128), ModelSpec("lstm", 65, 256)
    monkeypatch.setattr(fast, "_parts", lambda spec, batch=1: (2, 2) if batch > 1 else (1, 1))
    assert fast.compile_estimate(lstm) == 40 and fast.compile_estimate(big, True) == 15
    for text, ratio in (("2.5\n", 2.5), ("0.4", 0.4), ("", 1.0), ("nan", 1.0), ("1e9", 1.0)):
        (tmp_path / fast.COMPILE_SPEED).write_text(text)
        estimates = [fast.compile_estimate(big, True), fast.compile_estimate(lstm)]
        estimates.append(fast.compile_estimate(big, batch=32))  # steps in parts on threads
        assert estimates == [15 * ratio, 40 * ratio, 50 * ratio], text


def test_progress_bar_fits_80_columns(corpus_file, tmp_path, monkeypatch):
    """The bar's line at the width of a classic terminal holds all its facts."""
    from tqdm import tqdm

    corpus = load_corpus(corpus_file)
    trainer = Trainer(corpus, small_config("reference", print_every=10), tmp_path / "run")
    trainer.run(20, progress=False)
    progress = Progress()
    screen = io.StringIO()
    progress.total = 100_000
    progress.val_bits = 2.3456
    progress.bar = tqdm(total=100_000, file=screen, ncols=80,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}"
                        "{postfix}]")  # fmt: skip
    trainer.state.smooth_loss = 123.4567
    progress.on_step(trainer, 20)
    progress.bar.refresh()
    line = screen.getvalue().split("\r")[-1]
    assert len(line) <= 80 and "loss 123.46" in line and "val 2.346b" in line, line


def test_log_lines_at_most_every_percent(corpus_file, tmp_path, capsys):
    corpus = load_corpus(corpus_file)
    config = small_config("reference", print_every=10, sample_every=10**6)
    Trainer(corpus, config, tmp_path / "run").run(5000, progress=False)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("update ")]
    printed = [int(ln.split()[1]) for ln in lines]
    assert printed == list(range(50, 5001, 50))  # every 1% (50 updates), not every 10


def test_sample_headers_are_short(corpus_file, tmp_path):
    corpus = load_corpus(corpus_file)
    Trainer(corpus, small_config("reference"), tmp_path / "run").run(45, progress=False)
    text = (tmp_path / "run" / "samples.txt").read_text()
    assert text.startswith("--- update 0, epoch 1, loss -, chars 15 ---\n")
    second = next(line for line in text.splitlines() if line.startswith("--- update 40,"))
    loss = second.split("loss ")[1].split(",")[0]
    assert second.startswith("--- update 40, epoch 1, loss ") and len(loss.split(".")[1]) == 4
    samples = read_samples(tmp_path / "run" / "samples.txt")
    assert [s["update"] for s in samples] == [0, 40] and samples[1]["smooth_loss"] > 0


def test_errors_name_options_not_fields(corpus_file, tmp_path):
    corpus = load_corpus(corpus_file)
    Trainer(corpus, small_config("reference"), tmp_path / "run").run(5, progress=False)
    with pytest.raises(CharwiseError) as err:
        Trainer.resume(tmp_path / "run", corpus, seq_length=12)
    message = str(err.value)
    assert "--seq-length 10" in message and "--print-every" in message
    assert "seq_length" not in message and "print_every" not in message
    help_text = cli("train", "--help").output
    assert "SPEC.md" not in help_text


def test_runs_lists_status_and_sample_latest(corpus_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["--engine", "reference", "--m", 8, "--no-progress", "--val-fraction", 0.1]
    assert cli("train", corpus_file, "--out", "runs/done", "--updates", 30, *common).exit_code == 0
    corpus = load_corpus(corpus_file)
    stopped = Trainer.resume(Path("runs/done"), corpus)
    del stopped  # a resume that did not run leaves the run as it was
    assert cli("train", corpus_file, "--out", "runs/later", "--updates", 60, *common).exit_code == 0
    (Path("runs/later") / "final.npz").unlink()  # as if killed after its last checkpoint
    listing = cli("runs").output.splitlines()
    assert listing[0].split()[:3] == ["run", "model", "opt"]
    rows = {line.split()[0]: line for line in listing[1:]}
    assert "finished" in rows["done"] and "stopped" in rows["later"]
    assert "rnn 8" in rows["done"] and " 30 " in rows["done"]
    latest = cli("sample", "--latest", "--length", 20, "--seed", 1)
    from_dir = cli("sample", "runs/later", "--length", 20, "--seed", 1)
    assert latest.exit_code == 0 and latest.output == from_dir.output
    assert cli("sample").exit_code == 1


def test_primed_documents_keep_the_trained_length_cap(tmp_path):
    lines = [f"tweet number {i} says something about the weather today" for i in range(60)]
    path = tmp_path / "tweets.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    args = ["train", path, "--lines", "--max-length", 30, "--updates", 20, "--m", 8,
            "--engine", "reference", "--out", out, "--no-progress"]  # fmt: skip
    assert cli(*args).exit_code == 0
    result = cli("sample", out, "--prime", "tweet ", "--count", 20, "--seed", 2)
    docs = result.output.rstrip("\n").split("\n---\n")
    assert len(docs) == 20 and all(d.startswith("tweet ") and len(d) <= 30 for d in docs)
    longer = cli("sample", out, "--prime", "tweet ", "--length", 50, "--seed", 2)
    assert longer.exit_code == 0  # an explicit --length is the user's


def test_plot_reads_a_run_stopped_before_its_end(corpus_file, tmp_path):
    corpus = load_corpus(corpus_file)
    for name in ("a", "b"):
        Trainer(corpus, small_config("reference", eta=0.05 if name == "a" else 0.1),
                tmp_path / name).run(30, progress=False)  # fmt: skip
    (tmp_path / "b" / "final.npz").unlink()  # killed after its last checkpoint
    result = cli("plot", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "cmp.png")
    assert result.exit_code == 0 and "eta=0.05" in result.output and "eta=0.1" in result.output
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"


def test_sampling_defaults_to_the_fastest_engine(corpus_file):
    from charwise.engines import fast, reference
    from charwise.model import CharModel

    corpus = load_corpus(corpus_file)
    assert CharModel.init(corpus.vocab, m=8).engine() is fast
    assert CharModel.init(corpus.vocab, "lstm", m=8).engine() is fast  # its compiled cells
    assert CharModel.init(corpus.vocab, "lstm", m=8).engine("reference") is reference
    assert "[default: auto]" in cli("sample", "--help").output


def test_a_large_gradient_check_says_how_much_work_it_is(corpus_file):
    result = cli("gradcheck", corpus_file, "--m", 150, "--seq-length", 2)
    assert result.exit_code == 0
    # b, c, U, W, V of m = 150 and K = 27
    assert result.stderr == "checking 30,777 entries, two forward passes each\n"
    small = cli("gradcheck", corpus_file)
    assert small.stderr == "" and small.output.count("\n") == 7


def test_kernels_compiled_from_other_sources_are_removed_before_they_load(tmp_path):
    """numba stamps a function's cache entry with its own file alone, so kernels.py's block
    compiled around an older matvec.py would load after matvec.py changed: where the engine's
    sources differ from the record of those the folder's kernels came from, the engine's compiled
    files are removed (no other package's: numba's folder may be shared) and the record renewed;
    with the same sources, nothing is removed."""
    from charwise.engines import numerics

    ours = [
        tmp_path / "engines_1a2b" / n
        for n in ("kernels._block-7.py311.nbi", "matvec._pass-6.py311.1.nbc")
    ]
    theirs = [
        tmp_path / "engines_1a2b" / "mine.f-1.py311.nbi",
        tmp_path / "lib_9f" / "kernels.g-2.py311.nbi",
    ]
    for f in ours + theirs:
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(b"compiled")
    (tmp_path / numerics.SOURCES).write_text("sources before an upgrade\n")
    numerics.drop_stale_kernels(tmp_path, "these sources\n")
    assert [f.exists() for f in ours + theirs] == [False, False, True, True]
    assert (tmp_path / numerics.SOURCES).read_text() == "these sources\n"
    for f in ours:
        f.write_bytes(b"compiled from these sources")
    numerics.drop_stale_kernels(tmp_path, "these sources\n")
    assert all(f.exists() for f in ours)
    assert (
        numerics.cache_folder().joinpath(numerics.SOURCES).read_text() == numerics.sources_stamp()
    )


def test_a_first_compile_is_timed_once_per_family_and_source(tmp_path, monkeypatch):
    """warm_up keeps the time of a family's first compile since the engine's sources changed
    (a mark left by other sources does not count), not of a compile that found its family's
    kernels of another dtype in the cache, nor of a warm-up that loaded them (its warm-up's
    clock is a stand-in: whether numba's cache holds the kernels here depends on what ran)."""
    from types import SimpleNamespace

    from charwise.models import ModelSpec

    spec = ModelSpec("rnn", 65, 100)
    monkeypatch.setattr(fast, "cache_folder", lambda: tmp_path)
    monkeypatch.setattr(fast, "_compile_aside", lambda dtype, spec: None)
    speed = tmp_path / fast.COMPILE_SPEED
    (tmp_path / "charwise-ready-exercise-float32.txt").write_text("sources before an upgrade\n")
    for marked, seconds, timed in ((False, 30.0, True), (False, 4.0, False), (True, 30.0, False)):
        monkeypatch.setattr(fast, "WARM", set())
        monkeypatch.setattr(
            fast, "time", SimpleNamespace(perf_counter=iter([0.0, seconds]).__next__)
        )
        speed.unlink(missing_ok=True)
        (tmp_path / "charwise-ready-exercise-float64.txt").unlink(missing_ok=True)
        if marked:  # this family's kernels of another dtype compiled from these sources
            (tmp_path / "charwise-ready-exercise-float32.txt").write_text(fast.sources_stamp())
        fast.warm_up("float64", spec, exercise=True)
        assert fast.cached(spec, True, "float64")
        assert speed.is_file() == timed, (marked, seconds)
        if timed:  # 30 s against the exercise's 15
            assert speed.read_text() == "2.000\n"
