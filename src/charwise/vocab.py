"""Vocab: the sorted distinct characters of a corpus and the index maps built from them."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from charwise.errors import CharwiseError


def codepoints(text: str) -> np.ndarray:
    """The code points of text as a uint32 array (lone surrogates from JSON kept as they are)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


class Vocab:
    """A sorted character list; index i is the i-th character (identical on every machine)."""

    def __init__(self, chars: Iterable[str], end: str | None = None):
        chars = sorted(set(chars))
        if any(len(ch) != 1 for ch in chars):
            raise CharwiseError("vocabulary entries must be single characters")
        if end is not None and end not in chars:
            raise CharwiseError(f"end-of-document character {end!r} is not in the vocabulary")
        self.chars: list[str] = chars
        self.end = end
        self.index = {ch: i for i, ch in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str, end: str | None = None) -> Vocab:
        return cls(set(text), end=end)

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and (self.chars, self.end) == (other.chars, other.end)

    @property
    def end_index(self) -> int:
        """Index of the end-of-document character, or -1 when there is none."""
        return -1 if self.end is None else self.index[self.end]

    def encode(self, text: str) -> np.ndarray:
        """Characters to indices; unknown characters are an error that names them."""
        cps = codepoints(text)
        table = self._lookup()
        indices = table[np.minimum(cps, len(table) - 1)]
        if (indices < 0).any():
            unknown = np.unique(cps[indices < 0])[:20]
            shown = "".join(chr(c) for c in unknown.tolist())
            raise CharwiseError(
                f"characters not in the model's vocabulary: {shown!r}; "
                "use only characters the model was trained on"
            )
        return indices.astype(self.dtype)

    @property
    def dtype(self) -> np.dtype:
        """The compact index type: one byte per character up to K = 256, else two."""
        return np.dtype(np.uint8 if len(self.chars) <= 256 else np.uint16)

    def _lookup(self) -> np.ndarray:
        """Index by code point, -1 where unknown: a vectorised encode, no dict per character."""
        if getattr(self, "_table", None) is None:
            cps = [ord(ch) for ch in self.chars]
            self._table = np.full(max(cps, default=0) + 2, -1, dtype=np.int32)
            self._table[cps] = np.arange(len(cps), dtype=np.int32)
        return self._table

    def decode(self, indices: Iterable[int]) -> str:
        return "".join(self.chars[int(i)] for i in indices)

    def to_json(self) -> dict:
        return {"chars": "".join(self.chars), "end": self.end}

    @classmethod
    def from_json(cls, obj: dict) -> Vocab:
        try:
            chars, end = obj["chars"], obj.get("end")
            vocab = cls(chars, end=end)
        except (KeyError, TypeError, AttributeError) as exc:
            raise CharwiseError(f"invalid vocabulary in model metadata ({exc})") from None
        if "".join(vocab.chars) != chars:
            raise CharwiseError("invalid vocabulary in model metadata: not sorted distinct chars")
        return vocab
