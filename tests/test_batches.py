"""Chunk schedules of B streams and random chunks (SPEC.md), by hand on tiny corpora, and the
trainer's use of them."""

from __future__ import annotations

import numpy as np
import pytest

from charwise.corpus import Corpus, load_corpus
from charwise.errors import CharwiseError
from charwise.schedule import DocumentSchedule, RandomChunks, Schedule, Streams, make_schedule
from charwise.vocab import Vocab


def text_corpus(n: int) -> Corpus:
    text = ("abcdefghij" * (n // 10 + 1))[:n]
    vocab = Vocab.from_text(text)
    return Corpus("t", vocab, vocab.encode(text))


def lines_corpus(tmp_path, lines: list[str]) -> Corpus:
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_corpus(path, format="lines")


def test_two_streams_by_hand():
    """N = 26, tau = 3, B = 2: shares of S = 13; e = 0, 3, 6, 9 (12 > 13 - 4 is a new epoch)."""
    sch = Streams(text_corpus(26), 3, 2)
    assert sch.per_epoch == 4
    starts, lengths, resets = sch.block(0, 6)
    assert starts.tolist() == [[0, 13], [3, 16], [6, 19], [9, 22], [0, 13], [3, 16]]
    assert (lengths == 3).all()
    assert resets.tolist() == [[True, True], [False, False], [False, False], [False, False],
                               [True, True], [False, False]]  # fmt: skip
    assert [sch.epoch(u) for u in (1, 4, 5, 8, 9)] == [1, 1, 2, 2, 3]
    # the last N - B S characters (none here) and each share's tail wait for nothing else
    assert starts.max() + 3 + 1 <= 26


def test_one_stream_is_the_exercise_schedule():
    corpus = text_corpus(1000)
    one, exercise = Streams(corpus, 25, 1), Schedule(1000, 25)
    assert one.per_epoch == exercise.per_epoch
    for got, want in zip(one.block(37, 90), exercise.block(37, 90), strict=True):
        np.testing.assert_array_equal(got[:, 0], want)


def test_streams_need_a_sequence_each():
    with pytest.raises(CharwiseError, match="4 streams of 7 are shorter than one sequence"):
        Streams(text_corpus(30), 10, 4)


def test_document_streams_split_at_documents(tmp_path):
    """Six documents, B = 2: shares of about equal chunk counts, each walked by the document
    schedule (a reset at every document start); an epoch is the smaller share's chunks."""
    docs = ["ab", "cdefg", "h", "ijklmn", "op", "q"]
    corpus = lines_corpus(tmp_path, docs)
    tau = 2
    whole = DocumentSchedule(corpus.starts, len(corpus), tau)
    assert whole.per_epoch == 2 + 3 + 1 + 4 + 2 + 1  # ceil((len + 1) / tau) per document
    sch = Streams(corpus, tau, 2)
    shares = [len(s.starts) for s in sch.streams]
    assert sum(shares) == 6 and shares == [3, 3]  # 6 chunks | 7 chunks
    assert sch.per_epoch == 6
    starts, lengths, resets = sch.block(0, sch.per_epoch)
    data = corpus.data
    end = corpus.vocab.end_index
    for b in range(2):  # every chunk lies inside one document; resets exactly at document starts
        for s, n, r in zip(starts[:, b], lengths[:, b], resets[:, b], strict=True):
            inputs = data[s : s + n].tolist()
            assert (inputs[0] == end) == r
            assert end not in inputs[1:]
    first_of_stream_2 = corpus.vocab.decode(data[starts[0, 1] + 1 : starts[0, 1] + 3])
    assert first_of_stream_2 == "ij"
    with pytest.raises(CharwiseError, match="--batch 7 needs at least 7 training documents"):
        Streams(corpus, tau, 7)


def test_random_chunks_by_hand():
    corpus = text_corpus(200)
    sch = make_schedule(corpus, 10, batch=3, chunks="random", seed=4)
    rng = np.random.default_rng((4, 3))
    assert sch.peek(0) == (int(np.random.default_rng((4, 3)).integers(0, 190, size=3)[0]), True)
    starts, lengths, resets = sch.block(0, 5)
    assert starts.tolist() == [rng.integers(0, 190, size=3).tolist() for _ in range(5)]
    assert (lengths == 10).all() and resets.all()  # every chunk from a zero state
    assert sch.per_epoch == 7  # ceil(200 / (3 * 10))
    with pytest.raises(RuntimeError):
        sch.block(3, 1)  # drawn in update order only
    state = sch.state()
    again = make_schedule(corpus, 10, batch=3, chunks="random", seed=4)
    again.set_state(state, 5)
    np.testing.assert_array_equal(again.block(5, 4)[0], sch.block(5, 4)[0])


def test_random_document_chunks(tmp_path):
    docs = ["ab", "cdefg", "h", "ijklmn", "op", "q"]
    corpus = lines_corpus(tmp_path, docs)
    sch = RandomChunks(corpus, 2, 4, seed=1)
    starts, lengths, resets = sch.block(0, 50)
    rng = np.random.default_rng((1, 3))
    whole = DocumentSchedule(corpus.starts, len(corpus), 2)
    for u in range(50):
        d = rng.integers(0, 6, size=4)
        j = rng.integers(0, whole.doc_chunks[d].astype(np.int64))
        want = whole.document_chunks(d, j)
        np.testing.assert_array_equal(starts[u], want[0])
        np.testing.assert_array_equal(lengths[u], want[1])
    assert resets.all() and lengths.min() >= 1 and lengths.max() <= 2


def test_unknown_chunks_refused():
    with pytest.raises(CharwiseError, match="unknown --chunks 'shuffled'"):
        make_schedule(text_corpus(100), 10, 1, "shuffled")
