"""Helpers shared by the resume and crash tests: a small corpus, settings, run comparison."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from charwise import checkpoint
from charwise.train import CHECKPOINT, TrainConfig

N = 260  # updates of every run here: 2.6 epochs of the corpus below at seq length 10
WORDS = "the cat sat on a mat while dogs ran far away, quickly! Then: rest.".split()


ENGINES = ["reference", "fast", "fast-float32"]  # "fast-float32": the fast engine in float32


def write_corpus(path: Path, n_words: int = 190, seed: int = 0) -> Path:
    rng = random.Random(seed)
    path.write_text(" ".join(rng.choice(WORDS) for _ in range(n_words)) + "\n", encoding="utf-8")
    return path


def small_config(engine: str, **kw) -> TrainConfig:
    """Small, quick settings of the exercise (no held-out text); engine "fast-float32" means
    the fast engine in float32."""
    engine, _, dtype = engine.partition("-")
    settings = dict(m=8, seq_length=10, print_every=7, sample_every=40, sample_length=15)
    settings |= dict(passage_length=20, checkpoint_seconds=0, engine=engine)
    settings |= dict(dtype=dtype or "float64", val_fraction=0.0)
    return TrainConfig(**(settings | kw))


def run_dir_contents(out: Path) -> dict:
    """Everything that must match between two runs: arrays, logs, passage, meta facts (and
    the validation log and model of runs with held-out text)."""
    got = {}
    validated = (out / "eval.csv").exists()
    for name in (CHECKPOINT, "final.npz", "best.npz") + (("best-val.npz",) if validated else ()):
        arrays, meta = checkpoint.load(out / name)
        got |= {f"{name}:{k}": v for k, v in arrays.items()}
        for k in ("train_seconds", "resumes", "config"):
            meta.pop(k, None)
        got[f"{name}:meta"] = meta
    for name in ("metrics.csv", "samples.txt", "best_passage.txt"):
        got[name] = (out / name).read_bytes()
    if validated:  # every column but the wall time
        rows = (out / "eval.csv").read_text().splitlines()
        got["eval.csv"] = [row.rsplit(",", 1)[0] for row in rows]
    return got


def assert_same_run(a: Path, b: Path) -> None:
    ga, gb = run_dir_contents(a), run_dir_contents(b)
    assert ga.keys() == gb.keys()
    for key, va in ga.items():
        if isinstance(va, np.ndarray):
            assert va.dtype == gb[key].dtype and np.array_equal(va, gb[key]), key
        else:
            assert va == gb[key], key
