"""Small corpora made by the tests themselves (tests never read ../shared)."""

from __future__ import annotations

import numpy as np
import pytest

WORDS = (
    "the quick brown fox jumps over a lazy dog while seven wizards quietly hex "
    "jolly boxing frogs and every night the river runs past the old mill"
).split()


def english_like(n_chars: int, seed: int = 0) -> str:
    """Deterministic English-like text of about n_chars characters, with lines and punctuation."""
    rng = np.random.default_rng(seed)
    out, size = [], 0
    while size < n_chars:
        words = [WORDS[i] for i in rng.integers(0, len(WORDS), rng.integers(4, 12))]
        line = " ".join(words).capitalize() + rng.choice([".", "!", "?", ","]) + "\n"
        out.append(line)
        size += len(line)
    return "".join(out)[:n_chars]


@pytest.fixture
def small_text() -> str:
    return english_like(3000)


@pytest.fixture
def corpus_file(tmp_path, small_text):
    path = tmp_path / "corpus.txt"
    path.write_text(small_text, encoding="utf-8")
    return path
