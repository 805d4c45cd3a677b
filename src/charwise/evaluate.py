"""Validation (SPEC.md): nats and bits per character of a model on held-out text, and the same
measure on (a fixed sample of) the training text."""

from __future__ import annotations

import math

import numpy as np

TRAIN_SAMPLE = 100_000  # characters of training text measured beside the validation text
WINDOW = 10_000  # a long training text is measured on windows of this many characters


def nats_per_char(engine, params, data: np.ndarray, runs) -> tuple[float, int]:
    """Mean -log p over the characters the runs predict (each run read from a zero state)."""
    total, count = engine.evaluate(params, data, runs)
    return total / max(count, 1), count


def bits(nats: float) -> float:
    return nats / math.log(2)


def train_runs(corpus, seed: int) -> list[tuple[int, int]]:
    """The runs of training text measured as "train nats/char": all of it up to TRAIN_SAMPLE
    characters; beyond, a fixed sample drawn with default_rng((seed, 4)): text windows of
    WINDOW characters, or whole documents, about TRAIN_SAMPLE characters in all."""
    runs = corpus.runs()
    n = len(corpus)
    if n <= TRAIN_SAMPLE:
        return runs
    rng = np.random.default_rng((seed, 4))
    if not corpus.documents:
        starts = np.sort(rng.choice(n // WINDOW, TRAIN_SAMPLE // WINDOW, replace=False))
        return [(int(s) * WINDOW, int(s) * WINDOW + WINDOW) for s in starts]
    chosen, size = [], 0
    for i in rng.permutation(len(runs)).tolist():
        if size >= TRAIN_SAMPLE:
            break
        chosen.append(runs[i])
        size += runs[i][1] - runs[i][0]
    return sorted(chosen)
