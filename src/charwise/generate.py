"""Text one character at a time together with what the model knew when it chose each: the
surprisal of the character (-log2 p under the model itself, temperature 1, no top-p), the
entropy of that distribution in bits, and its five most probable characters. The dashboard
colours text by it; the draws are CharModel.sample_indices's with the reference math, so a
seed gives the text `charwise sample --seed` gives."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from charwise.engines.reference import _run, draw, log_softmax, probabilities
from charwise.errors import CharwiseError

TOP = 5  # candidates shown for each character
LN2 = math.log(2.0)


def sample_length(model, length: int | None, prime: str | None) -> int:
    """Characters to draw when `length` is not given: a document model's trained cap (a primed
    document ends within it, prime included), else 1000."""
    cap = model.meta.get("config", {}).get("max_length", 200)
    if length is not None:
        return length
    if model.vocab.end is None:
        return 1000
    return max(0, cap - len(prime)) if prime else cap


def facts(model, logits: np.ndarray, targets: np.ndarray) -> list[dict]:
    """For each row of logits (T, K) and the character that followed: {c, s, h, top}."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64))
    p = np.exp(logp)
    entropy = -(p * logp).sum(axis=1) / LN2
    top = np.argsort(-p, axis=1, kind="stable")[:, :TOP]
    chars = model.vocab.chars
    return [
        {
            "c": chars[x],
            "s": float(-logp[t, x] / LN2),
            "h": float(entropy[t]),
            "top": [[chars[i], float(p[t, i])] for i in top[t]],
        }
        for t, x in enumerate(np.asarray(targets).tolist())
    ]


def check(model, temperature: float, top_p: float, prime: str | None) -> None:
    """One-line errors for settings no draw can use (before any text is streamed)."""
    if not temperature >= 0 or not 0.0 < top_p <= 1.0:
        raise CharwiseError("need temperature >= 0 and 0 < top-p <= 1")
    model.vocab.encode(prime or "")  # names characters the model does not know


def stream(
    model,
    n: int,
    prime: str | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    rng: np.random.Generator | None = None,
) -> Iterator[dict]:
    """Up to n characters as facts(), drawn one at a time; a document model stops at its end
    character (not yielded)."""
    check(model, temperature, top_p, prime)
    rng = np.random.default_rng() if rng is None else rng
    params = model.params.astype(np.float64)
    primed = model.start_indices(prime)
    state = params.spec.zero_state()
    if len(primed) > 1:
        state, _ = _run(params, primed[:-1], state)
    uniforms, x, end = rng.random(n), int(primed[-1]), model.vocab.end_index
    for i in range(n):
        state, O = _run(params, [x], state)
        x = draw(probabilities(O[0], temperature, top_p), uniforms[i])
        if x == end:
            return
        yield facts(model, O[:1], [x])[0]


def texts(model, count: int, length: int | None, prime: str | None, seed: int | None, **kw):
    """What `charwise sample` writes, as a stream: {"prime": text} before a primed text, the
    characters' facts, {"doc": True} between texts."""
    rng = np.random.default_rng(seed)
    for k in range(count):
        if k:
            yield {"doc": True}
        if prime:
            yield {"prime": prime}
        yield from stream(model, sample_length(model, length, prime), prime, rng=rng, **kw)


def score(model, text: str) -> list[dict]:
    """facts() for every character of text, read from the model's start character (a document
    model's end character, else a newline) and a zero state."""
    model.vocab.encode(text)  # names characters the model does not know
    if not text:
        return []
    params = model.params.astype(np.float64)
    x = model.vocab.encode(model.default_start() + text)
    _, O = _run(params, x[:-1], params.spec.zero_state())
    return facts(model, O, x[1:])
