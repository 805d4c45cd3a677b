"""Downloadable classics: tinyshakespeare and Project Gutenberg books, fetched once into the
user cache, checked against a pinned SHA-256 where one is known, and reused offline."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from charwise.errors import CharwiseError

BASE_ENV = "CHARWISE_DOWNLOAD_BASE"  # replaces every dataset's base URL (mirrors, tests)
TIMEOUT = 30.0  # seconds to wait for a server before giving up
GUTENBERG_PREFIX = "gutenberg:"
# Project Gutenberg wraps every book in a header and a licence between these marker lines.
GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
GUTENBERG_END = re.compile(r"^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)


@dataclass(frozen=True)
class Dataset:
    """A file at base + path, cached as cache_dir()/file, optionally pinned by SHA-256."""

    name: str
    base: str  # scheme and host, e.g. https://www.gutenberg.org
    path: str  # the rest of the URL, starting with /
    file: str  # relative path in the cache
    sha256: str | None = None  # pinned checksum; None: not known in advance
    size: int | None = None  # expected bytes, for the message when the checksum differs

    def url(self) -> str:
        return os.environ.get(BASE_ENV, self.base).rstrip("/") + self.path


TINYSHAKESPEARE = Dataset(
    name="tinyshakespeare",
    base="https://raw.githubusercontent.com",
    path="/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    file="tinyshakespeare/input.txt",
    sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    size=1_115_394,
)


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/charwise, or ~/.cache/charwise."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "charwise"


def is_dataset(spec: str) -> bool:
    return spec == TINYSHAKESPEARE.name or spec.startswith(GUTENBERG_PREFIX)


def dataset(spec: str) -> Dataset:
    """The Dataset named by a corpus spec: tinyshakespeare or gutenberg:ID."""
    if spec == TINYSHAKESPEARE.name:
        return TINYSHAKESPEARE
    book = spec.removeprefix(GUTENBERG_PREFIX)
    if not book.isdigit():
        raise CharwiseError(f"bad book {spec!r}; write gutenberg:ID with the numeric ebook ID")
    return Dataset(
        name=f"gutenberg-{book}",
        base="https://www.gutenberg.org",
        path=f"/cache/epub/{book}/pg{book}.txt",
        file=f"gutenberg/pg{book}.txt",
    )


def fetch(spec: str) -> Path:
    """The local text file of a dataset: downloaded once, verified, Gutenberg header stripped."""
    ds = dataset(spec)
    path = cache_dir() / ds.file
    if not path.exists():
        download(ds, path)
    elif ds.sha256 and sha256_file(path) != ds.sha256:
        raise CharwiseError(
            f"cached {ds.name} at {path} does not match its pinned SHA-256; delete it to download "
            "it again"
        )
    if not spec.startswith(GUTENBERG_PREFIX):
        return path
    body = path.with_suffix(".body.txt")
    if not body.exists():
        _write_atomic(body, strip_gutenberg(path.read_bytes().decode("utf-8-sig")).encode())
    return body


def download(ds: Dataset, path: Path) -> None:
    """Fetch ds into path (atomically); refuse a file whose SHA-256 differs from the pin."""
    url = ds.url()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        raise CharwiseError(
            f"cannot download {ds.name} from {url} (HTTP {exc.code} {exc.reason}); check the "
            f"name, or place the file by hand at {path}"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CharwiseError(
            f"cannot download {ds.name} from {url} ({reason}); with no network, place the file "
            f"by hand at {path}"
        ) from None
    digest = hashlib.sha256(raw).hexdigest()
    if ds.sha256 and digest != ds.sha256:
        raise CharwiseError(
            f"download of {ds.name} from {url} has SHA-256 {digest} ({len(raw)} bytes), expected "
            f"{ds.sha256} ({ds.size} bytes); not kept; retry, or place a verified copy at {path}"
        )
    _write_atomic(path, raw)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def strip_gutenberg(text: str) -> str:
    """The book between Project Gutenberg's START and END marker lines (all of it if unmarked)."""
    start = GUTENBERG_START.search(text)
    begin = start.end() if start else 0
    end = GUTENBERG_END.search(text, begin)
    body = text[begin : end.start() if end else len(text)]
    return body.replace("\r\n", "\n").strip() + "\n"


def _write_atomic(path: Path, raw: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
