"""Downloads against a local HTTP server on 127.0.0.1: checksum, cache reuse, offline message."""

import dataclasses
import functools
import hashlib
import http.server
import socket
import threading

import pytest

from charwise import datasets
from charwise.corpus import load_corpus
from charwise.errors import CharwiseError

SHAKESPEARE_PATH = "karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
BOOK = (
    "The Project Gutenberg eBook of Tests\r\nLicence words.\r\n"
    "*** START OF THE PROJECT GUTENBERG EBOOK TESTS ***\r\n\r\n"
    "Call me Tester.\r\nThe end.\r\n\r\n"
    "*** END OF THE PROJECT GUTENBERG EBOOK TESTS ***\r\nMore licence.\r\n"
)


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serves tmp_path/www on 127.0.0.1; the cache goes to tmp_path/cache."""
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root))
    )
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv(datasets.BASE_ENV, f"http://127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    yield root
    httpd.shutdown()
    httpd.server_close()


def serve(root, rel, raw: bytes):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)


def pin(monkeypatch, raw: bytes):
    """Pin tinyshakespeare to the SHA-256 of the bytes the test serves."""
    pinned = dataclasses.replace(
        datasets.TINYSHAKESPEARE, sha256=hashlib.sha256(raw).hexdigest(), size=len(raw)
    )
    monkeypatch.setattr(datasets, "TINYSHAKESPEARE", pinned)


def go_offline(monkeypatch):
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(datasets.BASE_ENV, f"http://127.0.0.1:{port}")


def test_checksum_match_downloads_once_and_reuses_cache(server, monkeypatch, tmp_path):
    raw = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"
    serve(server, SHAKESPEARE_PATH, raw)
    pin(monkeypatch, raw)
    c = load_corpus("tinyshakespeare")
    assert c.name == "tinyshakespeare" and c.head(len(c)) == raw.decode()
    cached = tmp_path / "cache" / "charwise" / "tinyshakespeare" / "input.txt"
    assert cached.read_bytes() == raw
    (server / SHAKESPEARE_PATH).unlink()
    go_offline(monkeypatch)
    assert load_corpus("tinyshakespeare").head(len(c)) == raw.decode()  # no network needed


def test_checksum_mismatch_is_refused_and_not_kept(server, monkeypatch, tmp_path):
    serve(server, SHAKESPEARE_PATH, b"tampered\n")
    pin(monkeypatch, b"the real thing\n")
    with pytest.raises(CharwiseError, match="has SHA-256 .* expected .*not kept"):
        load_corpus("tinyshakespeare")
    assert not (tmp_path / "cache" / "charwise" / "tinyshakespeare" / "input.txt").exists()


def test_real_pin_refuses_other_bytes(server):
    serve(server, SHAKESPEARE_PATH, b"not shakespeare\n")
    with pytest.raises(CharwiseError, match=datasets.TINYSHAKESPEARE.sha256):
        load_corpus("tinyshakespeare")


def test_offline_message_names_the_path(server, monkeypatch, tmp_path):
    go_offline(monkeypatch)
    with pytest.raises(CharwiseError) as info:
        load_corpus("tinyshakespeare")
    message = str(info.value)
    expected = tmp_path / "cache" / "charwise" / "tinyshakespeare" / "input.txt"
    assert "cannot download tinyshakespeare" in message and str(expected) in message
    assert "\n" not in message


def test_gutenberg_header_and_licence_stripped(server, monkeypatch):
    serve(server, "cache/epub/123/pg123.txt", BOOK.encode())
    c = load_corpus("gutenberg:123")
    assert c.name == "gutenberg:123" and c.head(len(c)) == "Call me Tester.\nThe end.\n"
    go_offline(monkeypatch)
    assert load_corpus("gutenberg:123").head(len(c)) == "Call me Tester.\nThe end.\n"


def test_gutenberg_missing_book_and_bad_id(server):
    with pytest.raises(
        CharwiseError, match=r"cannot download gutenberg-9 .*\(HTTP 404 .*check the name"
    ):
        load_corpus("gutenberg:9")
    with pytest.raises(CharwiseError, match="numeric ebook ID"):
        load_corpus("gutenberg:moby")
