"""Real-world text: line ends, byte-order marks, Project Gutenberg headers, binary files in a
folder and unpaired surrogates, each cleaned by default and reported by `charwise info`."""

from __future__ import annotations

import json

from click.testing import CliRunner

from charwise.cli import main
from charwise.corpus import load_corpus

GUTENBERG = (
    "The Project Gutenberg eBook of Tiny Book\r\n\r\nThis eBook is for the use of anyone.\r\n"
    "*** START OF THE PROJECT GUTENBERG EBOOK TINY BOOK ***\r\n\r\n"
    "Call me Ishmael. Some years ago\r\nnever mind how long precisely.\r\n\r\n"
    "*** END OF THE PROJECT GUTENBERG EBOOK TINY BOOK ***\r\n"
    "Section 1. General Terms of Use and Redistributing Project Gutenberg\r\n"
)


def steps(corpus) -> dict:
    return {s.name: (s.chars_removed, s.docs_removed) for s in corpus.report.steps}


def info(*args) -> str:
    result = CliRunner().invoke(main, ["info", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def test_crlf_and_lone_cr_become_lf(tmp_path):
    path = tmp_path / "moby.txt"
    path.write_bytes(b"Call me Ishmael.\r\nSome years ago\r\rnever mind.\rThe end\r\n")
    corpus = load_corpus(path)
    assert "\r" not in corpus.vocab.chars
    assert corpus.head(len(corpus)) == "Call me Ishmael.\nSome years ago\n\nnever mind.\nThe end\n"
    assert steps(corpus)["newlines"] == (2, 0)  # two CR LF pairs became one character each
    kept = load_corpus(path, newline="keep")
    assert "\r" in kept.vocab.chars and kept.head(len(kept)) == path.read_bytes().decode()
    assert "newlines" in info(path) and "\\r" not in info(path).split("vocabulary")[1]


def test_byte_order_mark_is_dropped(tmp_path):
    path = tmp_path / "pride.txt"
    path.write_bytes("\ufeffIt is a truth universally acknowledged.\n".encode())
    corpus = load_corpus(path)
    assert "\ufeff" not in corpus.vocab.chars and corpus.head(2) == "It"
    assert steps(corpus)["bom"] == (1, 0)
    assert "\ufeff" in load_corpus(path, newline="keep").vocab.chars


def test_strip_gutenberg_for_local_files(tmp_path):
    path = tmp_path / "pg-tiny.txt"
    path.write_bytes(GUTENBERG.encode())
    plain = load_corpus(path)
    assert "Project Gutenberg" in plain.head(len(plain))
    book = load_corpus(path, strip_gutenberg=True)
    text = book.head(len(book))
    assert text == "Call me Ishmael. Some years ago\nnever mind how long precisely.\n"
    assert steps(book)["gutenberg"][0] > 100
    report = info(path, "--strip-gutenberg")
    assert "gutenberg" in report.split("vocabulary")[0]


def test_binary_files_in_a_folder_are_skipped_and_counted(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("first document\n")
    (folder / "b.txt").write_text("second document\n")
    (folder / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    (folder / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    corpus = load_corpus(folder)
    assert [corpus.document(i) for i in range(2)] == ["first document", "second document"]
    assert corpus.report.skipped == ["latin1.txt", "logo.png"]
    assert "skipped 2 binary file(s): latin1.txt, logo.png" in info(folder)
    result = CliRunner().invoke(main, ["info", str(folder), "--strict"])
    assert result.exit_code == 1 and "latin1.txt in folder" in result.stderr
    assert "drop --strict to skip binary files" in result.stderr


def test_unpaired_surrogates_in_json_are_dropped_and_reported(tmp_path):
    path = tmp_path / "tweets.json"
    records = [{"text": "hello \\ud83d world"}, {"text": "paired \\ud83d\\ude00 ok"}] * 20
    path.write_text("[" + ",".join(json.dumps(r).replace("\\\\", "\\") for r in records) + "]")
    corpus = load_corpus(path)
    assert corpus.document(0) == "hello  world" and corpus.document(1) == "paired 😀 ok"
    assert steps(corpus)["surrogates"] == (20, 0)
    out = tmp_path / "run"
    args = ["train", str(path), "--out", str(out), "--updates", "20", "--no-progress",
            "--m", "8", "--seq-length", "5"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (out / "samples.txt").read_text(encoding="utf-8")


def test_max_length_cuts_training_documents_too(tmp_path):
    """ASCII folding lengthens a 140-character tweet ('…' -> '...'); --max-length (140 in the
    tweets preset) cuts training documents as it caps samples, and info counts it."""
    tweet = "x" * 137 + "\u2026"  # 138 characters, 140 after folding
    records = [{"text": tweet + " more", "is_retweet": False}, {"text": "short one"}] * 10
    path = tmp_path / "tweets.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    corpus = load_corpus(path, format="json", ascii=True, max_doc_length=140)
    assert len(corpus.document(0)) == 140 and corpus.document(0).endswith("xxx...")
    assert steps(corpus)["max-length"] == (10 * 5, 0)
    report = info(path, "--preset", "tweets")
    assert "max-length" in report and " 50 " in report.split("max-length")[1].splitlines()[0]
    assert "max-length" not in info(path, "--ascii")  # only when a cap is chosen
    out = tmp_path / "run"
    args = ["train", str(path), "--preset", "tweets", "--out", str(out), "--updates", "10",
            "--no-progress", "--m", "8"]  # fmt: skip
    assert CliRunner().invoke(main, args).exit_code == 0
    from charwise import checkpoint

    source = checkpoint.load(out / "checkpoint.npz")[1]["corpus"]["source"]
    assert source["max_doc_length"] == 140  # a resume reads the corpus the same way
    loose = CliRunner().invoke(main, ["train", str(path), "--out", str(tmp_path / "r2"),
                                      "--updates", "5", "--no-progress", "--m", "8"])  # fmt: skip
    assert loose.exit_code == 0
    source = checkpoint.load(tmp_path / "r2" / "checkpoint.npz")[1]["corpus"]["source"]
    assert "max_doc_length" not in source  # no cap chosen: documents whole
