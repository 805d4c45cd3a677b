"""Corpora: read text into a vocabulary and an encoded index array."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charwise.errors import CharwiseError
from charwise.vocab import Vocab

BUILTIN = "python-docs"  # the default corpus: ships with every CPython, no download, no file


@dataclass
class Corpus:
    """An encoded corpus: data[i] is the vocabulary index of the i-th character."""

    name: str
    vocab: Vocab
    data: np.ndarray

    def __len__(self) -> int:
        return len(self.data)

    def fingerprint(self) -> str:
        """SHA-256 of the vocabulary and the encoded characters (identifies the training data)."""
        digest = hashlib.sha256("".join(self.vocab.chars).encode())
        digest.update(np.ascontiguousarray(self.data).tobytes())
        return digest.hexdigest()

    def head(self, n: int) -> str:
        return self.vocab.decode(self.data[:n])


def python_docs_text() -> str:
    """The prose of the Python documentation topics (pydoc_data), sorted by key."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def read_text(path: str | Path, encoding: str = "utf-8", errors: str = "strict") -> str:
    """A whole text file, with one-line errors for the ways it can be unreadable."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CharwiseError(f"corpus not found: {path}; give a text file or '{BUILTIN}'") from None
    except IsADirectoryError:
        raise CharwiseError(f"corpus {path} is a folder; give a text file") from None
    except OSError as exc:
        raise CharwiseError(f"cannot read corpus {path}: {exc.strerror}") from None
    try:
        text = raw.decode(encoding, errors=errors)
    except LookupError:
        raise CharwiseError(f"unknown encoding {encoding!r}; try --encoding utf-8") from None
    except UnicodeDecodeError as exc:
        raise CharwiseError(
            f"{path} is not valid {exc.encoding} at byte offset {exc.start}; "
            "pass its real --encoding (e.g. latin-1) or --errors replace"
        ) from None
    if "\0" in text:
        raise CharwiseError(
            f"{path} looks binary (a NUL character at offset {text.index(chr(0))}); "
            "give a text file, or its real --encoding if it is UTF-16/32"
        )
    return text


def load_corpus(spec: str | Path = BUILTIN, encoding: str = "utf-8", errors: str = "strict"):
    """The built-in corpus by name, or a text file by path."""
    if str(spec) == BUILTIN:
        name, text = BUILTIN, python_docs_text()
    else:
        name, text = Path(spec).name, read_text(spec, encoding, errors)
    if not text:
        raise CharwiseError(f"corpus {name} is empty; give a file with some text in it")
    vocab = Vocab.from_text(text)
    return Corpus(name=name, vocab=vocab, data=vocab.encode(text))
