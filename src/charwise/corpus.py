"""Corpora: text files, line lists, JSON/JSONL/CSV archives, folders and downloads, read into a
vocabulary and a compact encoded index array (memory-mapped for big files).

A document corpus (SPEC.md, short documents) is laid out as  E d_1 E d_2 E ... d_n E  where E is
the end-of-document character: every document is preceded by an E (the first input, as when
sampling a new document) and followed by one (its last target).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import cache, cached_property
from pathlib import Path

import numpy as np

from charwise.cleaning import Cleaner, Piece, Report, Step
from charwise.errors import CharwiseError
from charwise.settings import setting
from charwise.vocab import Vocab, codepoints

BUILTIN = "python-docs"  # the default corpus: ships with every CPython, no download, no file
END_CHAR = "\x03"  # default end-of-document character: U+0003 END OF TEXT, absent from real text
FORMATS = ("text", "lines", "json", "jsonl", "csv", "folder")
FOLDER_MODES = ("documents", "concat")
ERROR_MODES = ("strict", "replace", "ignore")
NEWLINE_MODES = ("normalize", "keep")
EXTENSIONS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
MAX_VOCAB = 1000  # a larger vocabulary is refused (K sets the cost of every update)
MMAP_THRESHOLD = 64 * 2**20  # inputs above this many bytes are encoded once to a mapped cache
BLOCK_BYTES = 2**20  # plain text is decoded and encoded in blocks of about this size
BATCH_DOCS = 10_000  # documents cleaned and encoded together
CACHE_VERSION = 3  # bump when the encoded cache layout or the cleaning changes
# Loader settings of a preset (the training settings of a preset live in the CLI).
PRESETS = {
    "tweets": {"format": "json", "drop_retweets": True, "html_unescape": True, "ascii": True}
}


@dataclass
class LoadOptions:
    """How to read and clean a corpus (the loader options of the CLI)."""

    format: str | None = setting(
        None,
        "Input format [default: from the extension: .json, .jsonl, .csv, else text; folder "
        "for a folder].",
        choices=FORMATS,
        type=str,
    )
    text_field: str = setting("text", "JSON/JSONL/CSV field that holds each document's text.")
    folder_mode: str = setting(
        "documents", "Folder: each file a document, or all files as one text.", FOLDER_MODES
    )
    drop_retweets: bool = setting(False, "Drop is_retweet / 'RT @' documents.")
    html_unescape: bool = setting(False, "Turn &amp; and other entities to text.")
    strip_urls: bool = setting(False, "Remove http(s):// and www. links.")
    ascii: bool = setting(False, "Fold accents to ASCII, drop other non-ASCII.")
    min_char_count: int = setting(0, "Drop characters occurring fewer times (0: keep all).")
    max_vocab: int = setting(MAX_VOCAB, "Largest vocabulary K accepted.")
    end_char: str = setting(
        END_CHAR, "End-of-document character, as itself or U+XXXX.", shown="U+0003"
    )
    newline: str = setting(
        "normalize",
        "normalize: CR LF and a lone CR become LF and a byte-order mark is dropped; keep: as read.",
        NEWLINE_MODES,
    )
    strip_gutenberg: bool = setting(
        False, "Keep only the book between Project Gutenberg's START and END lines."
    )
    strict: bool = setting(False, "Refuse a folder with a binary file instead of skipping it.")
    max_doc_length: int = setting(
        0, "Documents longer than this are cut (0: none); --max-length sets it.", cli=False
    )
    encoding: str = setting("utf-8", "Text encoding.")
    errors: str = setting("strict", "What to do with undecodable bytes.", ERROR_MODES)
    mmap_threshold: int = setting(
        MMAP_THRESHOLD, "Inputs larger than this (bytes) are memory-mapped.", cli=False
    )

    def check(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise CharwiseError(f"unknown --format {self.format!r}; choose {', '.join(FORMATS)}")
        if self.folder_mode not in ("documents", "concat"):
            raise CharwiseError("--folder-mode must be documents or concat")
        if len(self.end_char) != 1:
            raise CharwiseError(f"--end-char must be one character, not {self.end_char!r}")
        if not 1 <= self.max_vocab <= 2**16:
            raise CharwiseError("--max-vocab must be between 1 and 65536")
        if self.max_doc_length < 0:
            raise CharwiseError("--max-length must be at least 1")
        try:
            if not getattr(codecs.lookup(self.encoding), "_is_text_encoding", True):
                raise LookupError  # a codec that is no text encoding (rot13, base64), as str.decode
        except LookupError:
            raise CharwiseError(
                f"unknown encoding {self.encoding!r}; try --encoding utf-8"
            ) from None


@dataclass
class Corpus:
    """An encoded corpus: data[i] is the vocabulary index of the i-th character."""

    name: str
    vocab: Vocab
    data: np.ndarray
    starts: np.ndarray | None = None  # document corpora: data index of each document's 1st char
    report: Report | None = None  # what cleaning removed (None when nothing was read from files)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def documents(self) -> bool:
        return self.starts is not None

    def document(self, i: int) -> str:
        """The text of document i (without its end character)."""
        end = self.starts[i + 1] - 1 if i + 1 < len(self.starts) else len(self.data) - 1
        return self.vocab.decode(self.data[self.starts[i] : end])

    @cached_property
    def _fingerprint(self) -> str:
        digest = hashlib.sha256("".join(self.vocab.chars).encode())
        if isinstance(self.data, np.memmap):  # read the file: mapped pages would stay resident
            left = self.data.nbytes
            with open(self.data.filename, "rb") as f:
                f.seek(self.data.offset)
                while left > 0:
                    block = f.read(min(left, BLOCK_BYTES))
                    digest.update(block)
                    left -= len(block)
        else:
            for i in range(0, len(self.data), BLOCK_BYTES):
                digest.update(np.ascontiguousarray(self.data[i : i + BLOCK_BYTES]).tobytes())
        return digest.hexdigest()

    def fingerprint(self) -> str:
        """SHA-256 of the vocabulary and the encoded characters (identifies the training data)."""
        return self._fingerprint

    def head(self, n: int) -> str:
        return self.vocab.decode(self.data[:n])

    def runs(self) -> list[tuple[int, int]]:
        """The stretches data[a:b] read from a zero state: the text, or each document."""
        return document_runs(self.starts, len(self.data))

    def split(self, fraction: float) -> tuple[Corpus, Corpus | None]:
        """(training part, held-out part) (SPEC.md, validation): the last `fraction` of the
        characters (at least two), or of the documents (at least one), rounded up; no
        held-out part for fraction 0. A training part too short for a chunk is refused by the
        schedule."""
        if fraction <= 0:
            return self, None
        n = len(self.data)
        if not self.documents:  # at least 2 held-out characters: one prediction
            cut = max(0, n - max(2, math.ceil(fraction * n)))
            train = Corpus(self.name, self.vocab, self.data[:cut], None, self.report)
            return train, Corpus(f"{self.name} (held out)", self.vocab, self.data[cut:])
        docs = len(self.starts)
        k = docs - max(1, math.ceil(fraction * docs))  # documents kept for training
        if k < 1:
            raise CharwiseError(
                f"corpus {self.name} has {docs} document(s): none left for training after "
                f"holding out --val-fraction {fraction:g}; use more documents or --val-fraction 0"
            )
        cut = int(self.starts[k])
        train = Corpus(self.name, self.vocab, self.data[:cut], self.starts[:k], self.report)
        held = self.starts[k:].astype(np.int64) - (cut - 1)
        return train, Corpus(f"{self.name} (held out)", self.vocab, self.data[cut - 1 :], held)


def document_runs(starts, n: int) -> list[tuple[int, int]]:
    """The runs data[a:b] that are read from a zero state: the whole text when starts is None,
    else each document's: its preceding end character, its text and its end character."""
    if starts is None:
        return [(0, n)]
    bounds = [*(np.asarray(starts, dtype=np.int64) - 1).tolist(), n - 1]
    return [(a, b + 1) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def python_docs_text() -> str:
    """The prose of the Python documentation topics (pydoc_data), sorted by key."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def _open(path: Path):
    """A file opened for binary reading, with one-line errors for the ways it can fail."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise CharwiseError(f"corpus not found: {path}; give a text file or '{BUILTIN}'") from None
    except IsADirectoryError:
        raise CharwiseError(f"corpus {path} is a folder; use --format folder") from None
    except OSError as exc:
        raise CharwiseError(f"cannot read corpus {path}: {exc.strerror}") from None


def _decode_error(path: Path, exc: UnicodeDecodeError, offset: int) -> CharwiseError:
    return CharwiseError(
        f"{path} is not valid {exc.encoding} at byte offset {offset}; "
        "pass its real --encoding (e.g. latin-1) or --errors replace"
    )


def text_blocks(path: str | Path, encoding: str = "utf-8", errors: str = "strict") -> Iterator[str]:
    """A text file decoded in blocks that end at a newline (no URL or entity is cut in two)."""
    path = Path(path)
    try:
        decoder = codecs.getincrementaldecoder(encoding)(errors)
    except LookupError:
        raise CharwiseError(f"unknown encoding {encoding!r}; try --encoding utf-8") from None
    offset, carry = 0, ""  # bytes read so far; text after the last newline
    with _open(path) as f:
        while True:
            raw = f.read(BLOCK_BYTES)
            pending = len(decoder.getstate()[0])  # bytes held back from the previous block
            try:
                text = carry + decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as exc:
                raise _decode_error(path, exc, offset - pending + exc.start) from None
            if "\0" in text:
                raise CharwiseError(
                    f"{path} looks binary (a NUL character near byte offset {offset}); give "
                    "a text file, or its real --encoding if it is UTF-16/32"
                )
            offset += len(raw)
            cut = len(text) if not raw else text.rfind("\n") + 1
            if cut:
                yield text[:cut]
            carry = text[cut:]
            if not raw:
                return


def read_text(path: str | Path, encoding: str = "utf-8", errors: str = "strict") -> str:
    """A whole text file, with one-line errors for the ways it can be unreadable."""
    return "".join(text_blocks(path, encoding, errors))


# ---- formats: each gives batches of (text, is_retweet) pieces --------------------------------
def _batched(read: Callable[[], list[Piece]]) -> Callable[[], Iterator[list[Piece]]]:
    """Batches of the pieces `read` gives; read once, on first use (not when cached)."""
    read = cache(read)
    return lambda: (read()[i : i + BATCH_DOCS] for i in range(0, len(read()), BATCH_DOCS))


def _record_piece(obj, where: str, field: str) -> Piece:
    """A JSON value as a document: a string, or an object with a text field."""
    if isinstance(obj, str):
        return obj, False
    if isinstance(obj, dict) and field in obj and not isinstance(obj[field], str):
        kind = type(obj[field]).__name__
        raise CharwiseError(f"{where}: field {field!r} holds {kind}, not text; fix the record")
    if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
        keys = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise CharwiseError(
            f"{where} has no text field {field!r} (it has: {keys}); choose one with --text-field"
        )
    return obj[field], _truthy(obj.get("is_retweet"))


def _truthy(value) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


def _parse_json(text: str, where: str, hint: str = "", one_line: bool = False):
    """json.loads with one-line errors: the position of a syntax error (the column only for
    one_line, a JSON Lines line), or too deep a nesting."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        at = f"column {exc.colno}" if one_line else f"line {exc.lineno}, column {exc.colno}"
        raise CharwiseError(f"{where} is not valid JSON ({at}: {exc.msg}){hint}") from None
    except RecursionError:
        raise CharwiseError(
            f"{where} is not valid JSON for charwise: arrays or objects nested too deeply"
        ) from None


def _json_pieces(path: Path, opts: LoadOptions) -> list[Piece]:
    items = _parse_json(
        read_text(path, opts.encoding, opts.errors),
        str(path),
        "; for one object per line use --format jsonl",
    )
    if not isinstance(items, list):
        raise CharwiseError(f"{path} holds a JSON {type(items).__name__}, not an array of records")
    return [
        _record_piece(obj, f"{path} record {i}", opts.text_field) for i, obj in enumerate(items)
    ]


def _jsonl_pieces(path: Path, opts: LoadOptions) -> list[Piece]:
    pieces = []
    for n, line in enumerate(read_text(path, opts.encoding, opts.errors).splitlines(), 1):
        if line.strip():
            obj = _parse_json(line, f"{path} line {n}", one_line=True)
            pieces.append(_record_piece(obj, f"{path} line {n}", opts.text_field))
    return pieces


def _csv_pieces(path: Path, opts: LoadOptions) -> list[Piece]:
    text = read_text(path, opts.encoding, opts.errors)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if opts.text_field not in (reader.fieldnames or []):
        columns = ", ".join(reader.fieldnames or [])
        raise CharwiseError(
            f"{path} has no column {opts.text_field!r} (columns: {columns}); "
            "choose one with --text-field"
        )
    return [(row[opts.text_field] or "", _truthy(row.get("is_retweet"))) for row in reader]


def _line_batches(path: Path, opts: LoadOptions) -> Iterator[list[Piece]]:
    for block in text_blocks(path, opts.encoding, opts.errors):
        lines = block.split("\n")
        if block.endswith("\n"):
            lines.pop()
        yield [(line.removesuffix("\r"), False) for line in lines]


def _folder_files(path: Path) -> list[Path]:
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise CharwiseError(f"folder {path} holds no files; put text files in it")
    return files


def _is_text(path: Path, opts: LoadOptions) -> bool:
    """Whether a file reads as text: no NUL character, and it decodes (with --errors strict)."""
    try:
        for _ in text_blocks(path, opts.encoding, opts.errors):
            pass
    except CharwiseError:
        return False
    return True


def _text_files(path: Path, opts: LoadOptions) -> tuple[list[Path], list[Path]]:
    """A folder's text files and its binary files (refused with --strict)."""
    files = _folder_files(path)
    binary = [f for f in files if not _is_text(f, opts)]
    if binary and opts.strict:
        raise CharwiseError(
            f"{binary[0]} in folder {path} is not {opts.encoding} text (and {len(binary) - 1} "
            "more); remove them, or drop --strict to skip binary files"
        )
    if len(binary) == len(files):
        raise CharwiseError(f"folder {path} holds no text files; put text files in it")
    return [f for f in files if f not in binary], binary


def _folder_batches(path: Path, opts: LoadOptions) -> Iterator[list[Piece]]:
    """documents: each file one document; concat: the files one after the other, newline-joined."""
    files, _ = _text_files(path, opts)
    if opts.folder_mode == "documents":
        for i in range(0, len(files), BATCH_DOCS):
            batch = files[i : i + BATCH_DOCS]
            yield [(read_text(f, opts.encoding, opts.errors).rstrip("\n"), False) for f in batch]
        return
    last = "\n"
    for f in files:
        for block in text_blocks(f, opts.encoding, opts.errors):
            yield [(block if last == "\n" else "\n" + block, False)]
            last = block[-1]


def _source(path: Path, fmt: str, opts: LoadOptions):
    """(documents?, a function giving batches of pieces) for a file in a format."""
    if fmt == "text" and opts.strip_gutenberg:  # the markers need the whole text
        return False, _batched(lambda: [(read_text(path, opts.encoding, opts.errors), False)])
    if fmt == "text":
        return False, lambda: (
            [(block, False)] for block in text_blocks(path, opts.encoding, opts.errors)
        )
    if fmt == "lines":
        return True, lambda: _line_batches(path, opts)
    if fmt == "folder":
        return opts.folder_mode == "documents", lambda: _folder_batches(path, opts)
    read = {"json": _json_pieces, "jsonl": _jsonl_pieces, "csv": _csv_pieces}[fmt]
    return True, _batched(lambda: read(path, opts))


# ---- encoding: two streaming passes (count, then encode) -----------------------------------
def encode_pieces(
    name: str,
    batches: Callable[[], Iterator[list[Piece]]],
    documents: bool,
    opts: LoadOptions,
    out: Path | None = None,
) -> Corpus:
    """Clean and encode pieces into a Corpus; the array is written to `out` when given.

    Pass 1 cleans and counts characters (the vocabulary, rare characters, the length); pass 2
    cleans again and encodes block by block, so memory holds one block of text at a time.
    """
    if opts.drop_retweets and not documents:
        raise CharwiseError("--drop-retweets needs a document corpus (JSON, JSONL, CSV, lines)")
    cleaner = Cleaner(
        opts.drop_retweets,
        opts.html_unescape,
        opts.strip_urls,
        opts.ascii,
        newlines=opts.newline == "normalize",
        gutenberg=opts.strip_gutenberg,
        max_length=opts.max_doc_length if documents else 0,
    )
    counts = np.zeros(0x110000, dtype=np.int64)
    n_docs = 0  # documents not empty after the cleaning steps
    for batch in batches():
        texts = cleaner.clean(batch, record=True)
        n_docs += sum(1 for t in texts if t)
        counts += np.bincount(codepoints("".join(texts)), minlength=len(counts))
    steps = cleaner.report.steps
    for step in steps:
        step.K, step.chars = len(step.chars), set()
    end = opts.end_char if documents else None
    if end is not None and counts[ord(end)]:
        raise CharwiseError(
            f"the end-of-document character {end!r} occurs {counts[ord(end)]} times in {name}; "
            "choose another with --end-char"
        )
    rare = (counts > 0) & (counts < opts.min_char_count)
    if opts.min_char_count > 0:
        steps.append(Step("min-char-count", int(counts[rare].sum()), 0, K=steps[-1].K - rare.sum()))
    kept = np.flatnonzero((counts > 0) & ~rare)
    chars = [chr(c) for c in kept.tolist()] + ([end] if end is not None else [])
    if len(chars) > opts.max_vocab:
        raise CharwiseError(
            f"{name} has K = {len(chars)} distinct characters, more than --max-vocab "
            f"{opts.max_vocab}; fold to ASCII with --ascii, drop rare characters with "
            "--min-char-count N, or raise --max-vocab"
        )
    if not kept.size:
        raise CharwiseError(f"corpus {name} is empty after cleaning; give a file with text in it")
    vocab = Vocab(chars, end=end)
    drop = {int(c): None for c in np.flatnonzero(rare).tolist()}
    if documents:
        steps.append(Step("empty-docs", K=steps[-1].K))
    upper = int(counts[kept].sum()) + (n_docs + 1 if documents else 0)  # length at most
    sink = _Sink(upper, vocab.dtype, out)
    offsets = np.dtype(np.int32 if upper < 2**31 else np.int64)  # document starts, compact
    starts = _Sink(n_docs, offsets, out and out.with_name("starts.bin")) if documents else None
    if documents:
        sink.write(vocab.encode(end))
    for batch in batches():
        texts = cleaner.clean(batch)
        if drop:
            texts = [t.translate(drop) for t in texts]
        if documents:
            kept_texts = [t for t in texts if t]
            steps[-1].docs_removed += len(texts) - len(kept_texts)
            lengths = np.fromiter(map(len, kept_texts), dtype=np.int64, count=len(kept_texts))
            starts.write((sink.n + np.cumsum(lengths + 1) - lengths - 1).astype(offsets))
            texts = ["".join(t + end for t in kept_texts)]
        for text in texts:
            sink.write(vocab.encode(text))
    doc_starts = starts.close() if documents else None
    if documents and not len(doc_starts):
        raise CharwiseError(f"corpus {name} has no documents left after cleaning")
    return Corpus(name, vocab, sink.close(), doc_starts, cleaner.report)


class _Sink:
    """Where encoded blocks go: a preallocated array, or a file that is memory-mapped at the end."""

    def __init__(self, upper: int, dtype: np.dtype, out: Path | None):
        self.n, self.dtype, self.out = 0, dtype, out
        self.array = np.empty(upper, dtype=dtype) if out is None else None
        self.file = open(out, "wb") if out is not None else None

    def write(self, block: np.ndarray) -> None:
        if self.file is not None:
            self.file.write(block.tobytes())
        else:
            self.array[self.n : self.n + len(block)] = block
        self.n += len(block)

    def close(self) -> np.ndarray:
        if self.file is None:
            return self.array[: self.n]
        self.file.close()
        return np.memmap(self.out, dtype=self.dtype, mode="r", shape=(self.n,))


# ---- loading -------------------------------------------------------------------------------
def load_corpus(
    spec: str | Path = BUILTIN, encoding: str = "utf-8", errors: str = "strict", **options
) -> Corpus:
    """The built-in corpus, a download (tinyshakespeare, gutenberg:ID) or a file or folder.

    `options` are LoadOptions fields (format, cleaning, vocabulary cap, end character).
    """
    from charwise import datasets

    opts = LoadOptions(encoding=encoding, errors=errors, **options)
    opts.check()
    spec = str(spec)
    if spec == BUILTIN:
        text = python_docs_text()
        return encode_pieces(BUILTIN, lambda: iter([[(text, False)]]), False, opts)
    if datasets.is_dataset(spec):
        name, path = spec, datasets.fetch(spec)
    else:
        name, path = Path(spec).name, Path(spec)
        if not path.exists():
            raise CharwiseError(
                f"corpus not found: {path}; give a file, a folder, '{BUILTIN}', "
                "'tinyshakespeare' or 'gutenberg:ID'"
            )
    fmt = opts.format or (
        "folder" if path.is_dir() else EXTENSIONS.get(path.suffix.lower(), "text")
    )
    if (fmt == "folder") != path.is_dir():
        hint = "use --format folder" if path.is_dir() else "give a folder or another --format"
        raise CharwiseError(f"{path} is {'a' if path.is_dir() else 'not a'} folder; {hint}")
    documents, batches = _source(path, fmt, opts)
    files, skipped = _text_files(path, opts) if path.is_dir() else ([path], [])
    stats = [f.stat() for f in files]
    if sum(s.st_size for s in stats) <= opts.mmap_threshold:
        corpus = encode_pieces(name, batches, documents, opts)
    else:
        corpus = _mapped(name, path, fmt, files, stats, documents, batches, opts)
    corpus.report.skipped = [str(f.relative_to(path)) for f in skipped]
    return corpus


def _mapped(name, path, fmt, files, stats, documents, batches, opts) -> Corpus:
    """A big corpus encoded once into the cache, keyed by its files and the options."""
    from charwise import datasets

    fields = asdict(opts) | {"format": fmt, "path": str(path.resolve()), "version": CACHE_VERSION}
    fields |= {
        "files": [[str(f), s.st_size, s.st_mtime_ns] for f, s in zip(files, stats, strict=True)]
    }
    fields.pop("mmap_threshold")
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]
    return _cached(name, datasets.cache_dir() / "encoded" / key, documents, batches, opts)


def load_recorded(meta: dict, where) -> Corpus:
    """The corpus a run or model recorded (its load_corpus() arguments), checked against the
    SHA-256 it recorded; one-line errors when it is missing, foreign or changed."""
    from dataclasses import fields

    corpus = meta.get("corpus")
    source = corpus.get("source") if isinstance(corpus, dict) else None
    known = {f.name for f in fields(LoadOptions)} | {"spec"}
    if not isinstance(source, dict) or "spec" not in source or not source.keys() <= known:
        raise CharwiseError(f"{where} does not record its corpus in a way this charwise reads; "
                            "pass the CORPUS again")  # fmt: skip
    recorded = load_corpus(**source)
    if recorded.fingerprint() != meta.get("corpus_sha256"):
        raise CharwiseError(
            f"corpus {recorded.name} differs from the one {where} was trained on (SHA-256 "
            "mismatch); pass the run's own corpus"
        )
    return recorded


def source_of(spec: str | Path, loader: dict) -> dict:
    """The load_corpus() arguments that read this corpus again (an absolute path for a file),
    recorded in checkpoints so that a resume reads the corpus by itself."""
    from charwise import datasets

    spec = str(spec)
    named = spec == BUILTIN or datasets.is_dataset(spec)
    return {"spec": spec if named else str(Path(spec).resolve()), **loader}


def _cached(name: str, folder: Path, documents: bool, batches, opts: LoadOptions) -> Corpus:
    """The corpus encoded once into folder (data.bin, starts.bin, meta.json), memory-mapped."""
    if not (folder / "meta.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
        try:
            corpus = encode_pieces(name, batches, documents, opts, out=tmp / "data.bin")
            meta = {
                "vocab": corpus.vocab.to_json(),
                "n": len(corpus),
                "dtype": corpus.vocab.dtype.name,
                "docs": len(corpus.starts) if corpus.documents else None,
                "starts_dtype": corpus.starts.dtype.name if corpus.documents else None,
                "report": corpus.report.to_json(),
            }
            (tmp / "meta.json").write_text(json.dumps(meta))
            del corpus
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "meta.json").exists():  # not another process that finished first
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    meta = json.loads((folder / "meta.json").read_text())
    data = np.memmap(folder / "data.bin", dtype=meta["dtype"], mode="r", shape=(meta["n"],))
    starts = None
    if meta["docs"] is not None:
        starts = np.memmap(
            folder / "starts.bin", dtype=meta["starts_dtype"], mode="r", shape=(meta["docs"],)
        )
    report = Report.from_json(meta["report"])
    return Corpus(name, Vocab.from_json(meta["vocab"]), data, starts, report)
