"""Validation (SPEC.md): nats and bits per character of a model on held-out text, and the same
measure on (a fixed sample of) the training text."""

from __future__ import annotations

import math

import numpy as np

from charwise.errors import CharwiseError

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


def in_vocab(corpus, vocab) -> np.ndarray:
    """The corpus data as indices of another vocabulary (a model's); unknown characters are an
    error that names them."""
    table = np.array([vocab.index.get(ch, -1) for ch in corpus.vocab.chars], dtype=np.int64)
    unknown = [ch for ch, i in zip(corpus.vocab.chars, table.tolist(), strict=True) if i < 0]
    if unknown:
        raise CharwiseError(
            f"{corpus.name} has characters the model never saw: {''.join(unknown[:20])!r}; "
            "evaluate on text in the model's vocabulary"
        )
    return table[np.asarray(corpus.data)]


def score(path, corpus=None, engine: str = "auto", device: str | None = None) -> dict:
    """Nats and bits per character of the model in `path` on `corpus` (each document from a
    zero state), or without a corpus on the held-out part of the corpus it was trained on."""
    from charwise.corpus import load_corpus
    from charwise.model import CharModel

    model, _ = CharModel.load(path)
    if corpus is None:
        meta = model.meta
        source = (
            meta.get("corpus", {}).get("source") if isinstance(meta.get("corpus"), dict) else None
        )
        if not isinstance(source, dict):
            raise CharwiseError(f"{path} does not record its corpus; give the CORPUS to score")
        whole = load_corpus(**source)
        if whole.fingerprint() != meta.get("corpus_sha256"):
            raise CharwiseError(
                f"the corpus recorded in {path} has changed since training; give a CORPUS"
            )
        fraction = meta.get("config", {}).get("val_fraction", 0.0)
        _, corpus = whole.split(fraction)
        if corpus is None:
            raise CharwiseError(
                f"{path} was trained on all of its corpus (--val-fraction 0); give a CORPUS"
            )
    data = in_vocab(corpus, model.vocab)
    total, count = model.engine(engine, device).evaluate(model.params, data, corpus.runs())
    if not count:
        raise CharwiseError(f"{corpus.name} is too short to score: it predicts no character")
    return {
        "corpus": corpus.name,
        "chars": count,
        "nats": total / count,
        "bits": bits(total / count),
    }
