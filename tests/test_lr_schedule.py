"""Learning-rate schedules (warm-up, cosine and linear decay) and early stopping on the
validation loss: the factors by hand, the update they make, every engine alike, exact resume."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import numpy as np
import pytest

from charwise import rundir, train
from charwise.corpus import load_corpus
from charwise.engines import pick
from charwise.engines.reference import loss_and_grads
from charwise.errors import CharwiseError
from charwise.models import ModelSpec
from charwise.optim import EPS, LRSchedule
from charwise.train import Trainer, decay_end
from runs import assert_same_run, small_config, write_corpus

try:
    import torch  # noqa: F401

    has_torch = True
except ImportError:
    has_torch = False


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return load_corpus(write_corpus(tmp_path_factory.mktemp("lr") / "words.txt"))


def test_the_factors_by_hand():
    warm = LRSchedule("constant", warmup=4)
    assert [warm.factor(t) for t in (1, 2, 4, 5, 1000)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    cos = LRSchedule("cosine", warmup=10, min_lr=0.1, total=110)
    assert cos.factor(10) == 1.0 and cos.factor(11) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 100))
    )
    assert cos.factor(60) == pytest.approx(0.55) and cos.factor(110) == pytest.approx(0.1)
    assert cos.factor(500) == pytest.approx(0.1)  # after the decay: r
    lin = LRSchedule("linear", min_lr=0.0, total=200)
    assert [lin.factor(t) for t in (1, 100, 150, 200, 201)] == pytest.approx(
        [1 - 1 / 200, 0.5, 0.25, 0.0, 0.0]
    )


def test_a_warm_up_update_by_hand(corpus, tmp_path):
    """Update 1 of AdaGrad with --warmup 4: theta -= (eta / 4) g / sqrt(g^2 + eps)."""
    cfg = small_config("reference", warmup=4, eta=0.1)
    trainer = Trainer(corpus, cfg, tmp_path / "run")
    before = trainer.state.params.copy()
    x = trainer.data[:10]
    y = trainer.data[1:11]
    _, grads, _ = loss_and_grads(before, x, y, np.zeros(cfg.m))
    trainer.run(1, progress=False)
    for name, g in grads.items():
        g = np.clip(g, -5, 5)
        expected = before[name] - 0.025 * g / np.sqrt(g * g + EPS)
        np.testing.assert_allclose(trainer.state.params[name], expected, rtol=1e-12, atol=1e-15)


def test_the_fast_engine_runs_a_schedule_in_either_dtype():
    spec = ModelSpec("rnn", K=20, m=8)
    for dtype in ("float64", "float32"):
        assert pick("auto", spec, "adagrad", 1, 0.0, dtype, scheduled=True) == "fast"


@pytest.mark.parametrize("engine", ["fast", "torch"] if has_torch else ["fast"])
def test_every_engine_follows_the_same_schedule(corpus, tmp_path, engine):
    kw = dict(lr_schedule="cosine", warmup=5, decay_updates=40, optimizer="adam", batch=2)
    runs = {}
    for name in ("reference", engine):
        trainer = Trainer(corpus, small_config(name, model="gru", **kw), tmp_path / name)
        trainer.run(40, progress=False)
        runs[name] = trainer.state.params
    for name, p in runs["reference"].items():
        np.testing.assert_allclose(runs[engine][name], p, rtol=1e-8, atol=1e-12)


def test_a_decay_needs_a_length(corpus, tmp_path):
    cfg = small_config("reference", lr_schedule="cosine")
    with pytest.raises(CharwiseError, match="--decay-updates"):
        Trainer(corpus, cfg, tmp_path / "run").run(minutes=0.01, progress=False)
    trainer = Trainer(corpus, cfg, tmp_path / "ok")
    trainer.run(30, progress=False)
    assert trainer.config.decay_updates == 30  # recorded: a resume keeps it
    resumed = Trainer.resume(tmp_path / "ok", corpus)
    assert resumed.config.decay_updates == 30 and resumed.optimizer.schedule.total == 30
    assert resumed.optimizer.lr(45) == pytest.approx(cfg.eta * 0.1)  # past the decay: min


def test_a_run_for_minutes_alone_fits_its_decay_to_them(corpus, tmp_path, monkeypatch, capsys):
    """T = W + round(v (60 minutes - s)) at the end of the warm-up, recorded: the run is the
    run of --updates with that --decay-updates, and a resume keeps it."""
    assert decay_end(200, 4.0, 550.0) == 2400 and decay_end(10, 1e-3, 5.0) == 11
    clock = iter(range(10**6))  # a stand-in clock: every block takes 0.25 s of training
    monkeypatch.setattr(train, "time", SimpleNamespace(
        perf_counter=lambda: next(clock) * 0.25, monotonic=time.monotonic,
    ))  # fmt: skip
    kw = dict(lr_schedule="cosine", warmup=5, optimizer="adam", batch=2, model="gru")
    fitted = Trainer(corpus, small_config("reference", **kw), tmp_path / "fitted")
    fitted.run(minutes=0.05, progress=False)  # 3 s: the warm-up in 0.25 s, 20 updates/s
    assert fitted.config.decay_updates == 5 + round(20 * 2.75) == 60
    assert "decay ends at update 60" in capsys.readouterr().out
    done = fitted.state.updates
    assert done > 60  # past the decay: blocks end at multiples of print_every, 0.25 s each
    resumed = Trainer.resume(tmp_path / "fitted", corpus)
    assert resumed.config.decay_updates == 60 and resumed.optimizer.schedule.total == 60
    fixed = Trainer(corpus, small_config("reference", decay_updates=60, **kw), tmp_path / "b")
    fixed.run(done, progress=False)
    for name, p in fixed.state.params.items():
        assert np.array_equal(fitted.state.params[name], p), name


def test_a_fitted_decay_that_the_run_ends_far_from_is_reported(
    corpus, tmp_path, monkeypatch, capsys
):
    """Training slower (faster) after the warm-up, the run ends more than 5% of T before
    (after) T: a line says where, how far, and the rate it ended at; a run that ends near T
    says nothing."""
    kw = dict(lr_schedule="cosine", warmup=5, optimizer="adam", batch=2, model="gru")
    # seconds an update after the warm-up (1/16 in it); then the updates the run ends within:
    # 3.75 s are reached at 0.3125 + (u - 5) x seconds, then the block in progress ends
    cases = {
        "slower": (1 / 8, 33, 56, "before"),
        "steady": (1 / 16, 60, 63, None),
        "faster": (1 / 32, 115, 200, "after"),
    }
    for name, (seconds, low, high, where) in cases.items():
        held = {}  # the trainer, once made

        def clock(seconds=seconds, held=held):  # a stand-in clock of the updates made
            u = held["trainer"].state.updates if held else 0
            return 0.0625 * min(u, 5) + seconds * max(u - 5, 0)

        monkeypatch.setattr(train, "time", SimpleNamespace(
            perf_counter=clock, monotonic=time.monotonic,
        ))  # fmt: skip
        trainer = held["trainer"] = Trainer(
            corpus, small_config("reference", **kw), tmp_path / name
        )
        capsys.readouterr()
        trainer.run(minutes=0.0625, progress=False)  # 3.75 s: T = 5 + 16 x 3.4375 = 60
        T, done = trainer.config.decay_updates, trainer.state.updates
        out = capsys.readouterr().out
        assert T == 60 and "decay ends at update 60" in out
        assert low <= done <= high, (name, done)
        assert ("the end of its fitted decay" in out) is (where is not None)
        if where is not None:
            line = (
                f"the run ended at update {done:,}, {abs(T - done) / T:.0%} {where} the end of "
                f"its fitted decay ({T:,}): it trained {name} than in the warm-up, and its last "
                f"rate was {trainer.optimizer.schedule.factor(done):.2f} x eta"
            )
            assert line in out


def test_resume_with_a_schedule_is_bit_identical(corpus, tmp_path):
    kw = dict(lr_schedule="linear", warmup=20, decay_updates=260, min_lr=0.2, model="lstm")
    Trainer(corpus, small_config("reference", **kw), tmp_path / "one").run(260, progress=False)
    Trainer(corpus, small_config("reference", **kw), tmp_path / "two").run(97, progress=False)
    Trainer.resume(tmp_path / "two", corpus).run(260, progress=False)
    assert_same_run(tmp_path / "one", tmp_path / "two")


def test_early_stopping_on_the_validation_loss(corpus, tmp_path):
    # AdaGrad at eta 3 on this small corpus: validation gets worse soon after its best
    cfg = small_config("reference", val_fraction=0.2, eval_every=10, eta=3.0, patience=3)
    out = tmp_path / "run"
    trainer = Trainer(corpus, cfg, out)
    trainer.run(2000, progress=False)
    evals = rundir.read_eval(out)
    best = int(np.argmin(evals["val_nats"]))
    assert trainer.state.updates < 2000 and trainer.early_stopped
    assert len(evals["update"]) == best + 1 + 3  # stopped at the 3rd validation after the best
    assert trainer.state.updates == evals["update"][-1]
    assert (out / rundir.FINAL).exists() and rundir.describe(out)["status"] == "finished"
    events = [(e["event"], e["update"]) for e in rundir.read_events(out)]
    assert events.count(("early-stop", trainer.state.updates)) == 1
    assert events.index(("early-stop", trainer.state.updates)) < events.index(
        ("finish", trainer.state.updates)
    )
    # a resume keeps it stopped; with more patience, it trains on
    again = Trainer.resume(out, corpus)
    assert again.early_stopped
    del again  # frees the run for the next resume
    more = Trainer.resume(out, corpus, patience=50)
    assert not more.early_stopped
    more.run(trainer.state.updates + 20, progress=False)
    assert more.state.updates == trainer.state.updates + 20
