"""Corpus formats, cleaning counts, Unicode, vocabulary cap, invalid UTF-8, mapped cache."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from charwise import corpus as corpus_module
from charwise.corpus import END_CHAR, load_corpus
from charwise.errors import CharwiseError
from charwise.train import Schedule

SRC = Path(__file__).resolve().parents[1] / "src"

TWEETS = [
    {"text": "Hi &amp; bye", "is_retweet": False, "created_at": "x"},
    {"text": "RT @x: yo", "is_retweet": False},  # a retweet by its prefix
    {"text": "café http://t.co/x", "is_retweet": False},
    {"text": "plain retweet", "is_retweet": True},  # a retweet by its flag
]


def docs(c):
    return [c.document(i) for i in range(len(c.starts))]


def steps(c):
    return {s.name: (s.chars_removed, s.docs_removed, s.K) for s in c.report.steps}


@pytest.fixture
def tweets_json(tmp_path):
    path = tmp_path / "tweets.json"
    path.write_text(json.dumps(TWEETS), encoding="utf-8")
    return path


def test_json_plain(tweets_json):
    c = load_corpus(tweets_json)
    assert docs(c) == [t["text"] for t in TWEETS]
    assert c.vocab.end == END_CHAR and c.data[0] == c.data[-1] == c.vocab.end_index
    assert len(c) == sum(len(t["text"]) + 1 for t in TWEETS) + 1


def test_json_every_cleaning_step_counted(tweets_json):
    c = load_corpus(
        tweets_json, drop_retweets=True, html_unescape=True, strip_urls=True, ascii=True
    )
    assert docs(c) == ["Hi & bye", "cafe "]
    read_K = len(set("".join(t["text"] for t in TWEETS)))
    got = steps(c)
    assert got["read"] == (0, 0, read_K)
    kept = "Hi &amp; bye" + "café http://t.co/x"
    assert got["drop-retweets"] == (len("RT @x: yo") + len("plain retweet"), 2, len(set(kept)))
    kept = "Hi & bye" + "café http://t.co/x"
    assert got["html-unescape"] == (len("amp;"), 0, len(set(kept)))
    assert got["strip-urls"] == (len("http://t.co/x"), 0, len(set("Hi & bye" + "café ")))
    assert got["ascii"] == (0, 0, len(set("Hi & bye" + "cafe ")))  # é folded to e
    assert c.report.folded == 1 and not c.report.dropped
    assert len(c.vocab) == len(set("Hi & byecafe ")) + 1  # + the end character


def test_preset_tweets_on_the_command_line(tweets_json):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    cmd = [sys.executable, "-m", "charwise", "info", str(tweets_json), "--preset", "tweets"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "documents   2 " in out.stdout
    assert "drop-retweets" in out.stdout and "updates per epoch at seq length 10:" in out.stdout
    assert "strip-urls" not in out.stdout  # not part of the preset


def test_jsonl_and_text_field(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"body": "one"}\n\n{"body": "two", "is_retweet": true}\n"three"\n')
    c = load_corpus(path, text_field="body", drop_retweets=True)
    assert docs(c) == ["one", "three"] and steps(c)["drop-retweets"][:2] == (3, 1)
    with pytest.raises(CharwiseError, match=r"no text field 'text'.*--text-field"):
        load_corpus(path)
    (tmp_path / "n.jsonl").write_text('{"text": 5}\n')
    with pytest.raises(CharwiseError, match=r"line 1: field 'text' holds int, not text"):
        load_corpus(tmp_path / "n.jsonl")


def test_csv_with_named_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('id,text,is_retweet\n1,"a, b",false\n2,"two\nlines",false\n3,RT @q x,False\n')
    c = load_corpus(path, drop_retweets=True)
    assert docs(c) == ["a, b", "two\nlines"]
    with pytest.raises(CharwiseError, match=r"no column 'body' \(columns: id, text, is_retweet\)"):
        load_corpus(path, text_field="body")


def test_lines_drop_empty_lines(tmp_path):
    path = tmp_path / "names.txt"
    path.write_bytes(b"anna\n\nbob\r\ncy")
    c = load_corpus(path, format="lines")
    assert docs(c) == ["anna", "bob", "cy"] and steps(c)["empty-docs"] == (
        0,
        1,
        len(set("annabobcy")),
    )


def test_folder_documents_and_concat(tmp_path):
    folder = tmp_path / "books"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "1.txt").write_text("x\n")
    (folder / "b.txt").write_text("yz")
    (folder / ".hidden").write_text("ignored")
    c = load_corpus(folder)
    assert docs(c) == ["x", "yz"]
    c = load_corpus(folder, folder_mode="concat")
    assert not c.documents and c.head(len(c)) == "x\nyz"
    with pytest.raises(CharwiseError, match="is a folder; use --format folder"):
        load_corpus(folder, format="text")


def test_text_is_one_stream_and_refuses_retweet_option(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("hello\nworld\n")
    c = load_corpus(path)
    assert not c.documents and c.vocab.end is None and c.head(12) == "hello\nworld\n"
    with pytest.raises(CharwiseError, match="--drop-retweets needs a document corpus"):
        load_corpus(path, drop_retweets=True)


def test_strip_urls_and_html_on_text(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("see https://x.org/a?b=1 &lt;now&gt; www.y.com\n")
    c = load_corpus(path, strip_urls=True, html_unescape=True)
    assert c.head(len(c)) == "see  <now> \n"
    assert steps(c)["html-unescape"][0] == 6 and steps(c)["strip-urls"][0] == len(
        "https://x.org/a?b=1" + "www.y.com"
    )


def test_ascii_folding_lists_dropped_characters(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("naïve “quote” a😀b😀c✓ – Ångström\n")
    c = load_corpus(path, ascii=True)
    assert c.head(len(c)) == 'naive "quote" abc - Angstrom\n'
    assert dict(c.report.dropped) == {"😀": 2, "✓": 1}
    assert c.report.folded == 6  # ï “ ” – Å ö
    assert steps(c)["ascii"][0] == 3
    assert "'😀' 2" in c.report.format()


def test_min_char_count(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("aaabbc")
    c = load_corpus(path, min_char_count=2)
    assert c.head(len(c)) == "aaabb" and steps(c)["min-char-count"] == (1, 0, 2)
    c = load_corpus(path, min_char_count=3)
    assert c.head(len(c)) == "aaa"


def test_unicode_emoji_and_combining_characters(tmp_path):
    path = tmp_path / "u.txt"
    text = "e\u0301 🙂 日本\n"  # e + combining acute is two characters
    path.write_text(text, encoding="utf-8")
    c = load_corpus(path)
    assert len(c) == len(text) and c.head(len(c)) == text
    assert len(c.vocab) == len(set(text))


def test_vocabulary_cap(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("".join(chr(0x4E00 + i) for i in range(30)))
    with pytest.raises(CharwiseError, match=r"K = 30 .*--max-vocab 10.*--ascii.*--min-char-count"):
        load_corpus(path, max_vocab=10)
    assert len(load_corpus(path, max_vocab=30).vocab) == 30


def test_invalid_utf8_names_the_byte_offset(tmp_path, monkeypatch):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"abc\xffdef")
    with pytest.raises(CharwiseError, match=r"not valid utf-8 at byte offset 3;.*--errors replace"):
        load_corpus(path)
    assert load_corpus(path, errors="replace").head(7) == "abc\ufffddef"
    assert load_corpus(path, encoding="latin-1").head(7) == "abc\xffdef"
    # across block boundaries: the split 'é' is fine, the offset of \xff stays exact
    monkeypatch.setattr(corpus_module, "BLOCK_BYTES", 4)
    path.write_bytes(b"abc\xc3\xa9xy\n\xff")  # blocks abc? ?xy\n ?: \xff is byte 8
    with pytest.raises(CharwiseError, match="at byte offset 8;"):
        load_corpus(path)
    path.write_bytes(b"abc\xc3\xffxy")  # \xc3 is held back from block 1, then found invalid
    with pytest.raises(CharwiseError, match="at byte offset 3;"):
        load_corpus(path)


def test_end_char_collision_and_custom_end_char(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("a\x03b\nc\n")
    with pytest.raises(CharwiseError, match="occurs 1 times.*--end-char"):
        load_corpus(path, format="lines")
    c = load_corpus(path, format="lines", end_char="|")
    assert c.vocab.end == "|" and docs(c) == ["a\x03b", "c"]


def test_mapped_cache_equals_in_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(corpus_module, "BLOCK_BYTES", 64)  # many blocks
    rng = np.random.default_rng(1)
    lines = ["".join(rng.choice(list("abcdé "), size=n)) for n in rng.integers(0, 30, size=300)]
    path = tmp_path / "d.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    for fmt in ("lines", "text"):
        memory = load_corpus(path, format=fmt, ascii=True)
        mapped = load_corpus(path, format=fmt, ascii=True, mmap_threshold=0)
        again = load_corpus(path, format=fmt, ascii=True, mmap_threshold=0)  # from the cache
        assert isinstance(mapped.data, np.memmap) and isinstance(again.data, np.memmap)
        for c in (mapped, again):
            assert c.vocab == memory.vocab and c.fingerprint() == memory.fingerprint()
            np.testing.assert_array_equal(c.data, memory.data)
            assert c.report.to_json() == memory.report.to_json()
            a, b = Schedule.for_corpus(memory, 7), Schedule.for_corpus(c, 7)
            assert a.per_epoch == b.per_epoch
            for x, y in zip(a.block(5, 2 * a.per_epoch), b.block(5, 2 * b.per_epoch), strict=True):
                np.testing.assert_array_equal(x, y)
    assert len(list((tmp_path / "cache" / "charwise" / "encoded").iterdir())) == 2
