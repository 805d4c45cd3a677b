"""CharRNN: a vocabulary and its parameters; sampling, saving and loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from charwise import checkpoint
from charwise.engines import get_engine
from charwise.errors import CharwiseError
from charwise.params import NAMES, RNNParams
from charwise.vocab import Vocab

DOC_SEPARATOR = "\n---\n"  # between documents (or passages) printed together


class CharRNN:
    """A character-level vanilla RNN (SPEC.md) together with the vocabulary it reads."""

    def __init__(self, vocab: Vocab, params: RNNParams, meta: dict | None = None):
        self.vocab = vocab
        self.params = params
        self.meta = dict(meta or {})  # hyper-parameters and training facts, saved with it

    @classmethod
    def init(cls, vocab: Vocab, m: int = 100, sig: float = 0.01, seed: int = 1, dtype=np.float64):
        params = RNNParams.init(m, len(vocab), sig=sig, seed=seed, dtype=dtype)
        return cls(vocab, params, {"m": m, "sig": sig, "seed": seed})

    def default_start(self) -> str:
        """The character fed first when there is no prime: end-of-document, newline, or [0]."""
        if self.vocab.end is not None:
            return self.vocab.end
        return "\n" if "\n" in self.vocab.index else self.vocab.chars[0]

    def sample_indices(
        self,
        n: int,
        prime: str | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        rng: np.random.Generator | None = None,
        engine: str = "reference",
        h0: np.ndarray | None = None,
        stop: bool = True,
    ) -> np.ndarray:
        """n indices (fewer if stopped at the end-of-document char) after reading `prime`."""
        if temperature < 0 or not 0.0 < top_p <= 1.0:
            raise CharwiseError("need --temperature >= 0 and 0 < --top-p <= 1")
        eng = get_engine(engine)
        rng = np.random.default_rng() if rng is None else rng
        start = self.default_start() if not prime else (self.vocab.end or "") + prime
        primed = self.vocab.encode(start)  # a document model reads its end char first
        h = np.zeros(self.params.m) if h0 is None else np.asarray(h0, dtype=np.float64)
        h = eng.advance(self.params, h, primed[:-1]) if len(primed) > 1 else h
        uniforms = rng.random(n)
        end = self.vocab.end_index if stop else -1
        return eng.sample(self.params, h, int(primed[-1]), n, uniforms, temperature, top_p, end)

    def sample_documents(self, count: int, max_length: int, **kw) -> list[str]:
        """count documents, each from h = 0 and the end character, ended by it or max_length."""
        docs = []
        for _ in range(count):
            indices = self.sample_indices(max_length, **kw)
            if len(indices) and indices[-1] == self.vocab.end_index:
                indices = indices[:-1]
            docs.append(self.vocab.decode(indices))
        return docs

    def sample(self, n: int, prime: str | None = None, seed: int | None = None, **kw) -> str:
        """Text: the prime (if any) followed by n generated characters."""
        indices = self.sample_indices(n, prime, rng=np.random.default_rng(seed), **kw)
        return (prime or "") + self.vocab.decode(indices)

    def save(self, path: str | Path, extra: dict[str, np.ndarray] | None = None, **meta) -> None:
        arrays = dict(self.params.items()) | (extra or {})
        checkpoint.save(path, arrays, {**self.meta, **meta, "vocab": self.vocab.to_json()})

    @classmethod
    def load(cls, path: str | Path) -> tuple[CharRNN, dict[str, np.ndarray]]:
        """The model and any extra arrays stored with it (training state)."""
        arrays, meta = checkpoint.load(path)
        vocab = Vocab.from_json(meta.get("vocab"))
        missing = [name for name in NAMES if name not in arrays]
        if missing:
            raise CharwiseError(f"{path} lacks parameter arrays {missing}; it is not a model")
        params = RNNParams(*(arrays.pop(name) for name in NAMES))
        m, K = params.m, len(vocab)
        expected = {"b": (m,), "c": (K,), "U": (m, K), "W": (m, m), "V": (K, m)}
        for name, a in params.items():
            if a.shape != expected[name] or a.dtype not in (np.float32, np.float64):
                raise CharwiseError(
                    f"{path}: parameter {name} has shape {a.shape} and dtype {a.dtype}, expected "
                    f"{expected[name]} float for m={m}, K={K}; the file is corrupt"
                )
            if not np.isfinite(a).all():
                raise CharwiseError(f"{path}: parameter {name} holds NaN or infinity")
        return cls(vocab, params, meta), arrays
