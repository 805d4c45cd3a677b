"""Chunk schedules (SPEC.md): which characters each update reads, stream by stream.

A schedule's block(u0, n) gives, for updates u0 .. u0 + n - 1, the start of each chunk in the
corpus data (inputs data[s : s + n], targets one further), its length and whether the stream's
state is reset to zero before it. One-stream schedules (the exercise's, documents) give 1-d
arrays; Streams and RandomChunks give (n, B) arrays for B streams.
"""

from __future__ import annotations

import math

import numpy as np

from charwise.errors import CharwiseError

CHUNKS = ("streams", "random")


class Schedule:
    """The exercise's chunk schedule as a function of the update number.

    Update u (0-based) uses chunk k = u mod per_epoch of epoch u // per_epoch: inputs
    data[k*tau : k*tau + tau], targets shifted by one; h_prev resets at k = 0.
    """

    def __init__(self, n_chars: int, tau: int):
        if tau < 1:
            raise CharwiseError("--seq-length must be at least 1")
        if n_chars < tau + 1:
            raise CharwiseError(
                f"corpus has {n_chars} characters, fewer than one sequence needs "
                f"({tau + 1}); use a longer text or a smaller --seq-length"
            )
        self.tau = tau
        self.per_epoch = (n_chars - tau - 1) // tau + 1  # e = 0, tau, ... while e <= N - tau - 1

    def chunks(self, k: np.ndarray):
        """(starts, lengths, resets) of the chunks numbered k within an epoch."""
        return k * self.tau, np.full(len(k), self.tau, dtype=np.int64), k == 0

    def block(self, u0: int, n: int):
        """(starts, lengths, resets) for updates u0 .. u0 + n - 1."""
        return self.chunks((u0 + np.arange(n, dtype=np.int64)) % self.per_epoch)

    def epoch(self, update: int) -> int:
        """1-based epoch of a 1-based update number."""
        return (max(update, 1) - 1) // self.per_epoch + 1

    @staticmethod
    def for_corpus(corpus, tau: int) -> Schedule:
        """The schedule a corpus needs: per document for document corpora, else SPEC.md's."""
        if corpus.documents:
            return DocumentSchedule(corpus.starts, len(corpus), tau)
        return Schedule(len(corpus), tau)


class DocumentSchedule(Schedule):
    """Chunks that never cross a document boundary (SPEC.md, short-document corpora).

    Document d is the run data[starts[d] - 1 : starts[d + 1]]: the end character before it (the
    first input, as when sampling a new document), its text and its own end character (the last
    target). Each run is cut into chunks of at most tau + 1 characters that overlap by one, so
    every transition is a target once; h_prev resets at the first chunk of every document.
    Only per-document arrays are kept; a block's per-chunk arrays are built by indexing.
    """

    def __init__(self, starts: np.ndarray, n_chars: int, tau: int):
        if tau < 1 or not len(starts):
            raise CharwiseError("a document corpus needs at least one document and tau >= 1")
        self.tau = tau
        self.starts = starts  # kept as given: a mapped array stays mapped
        # targets of each document (its text and its end char): the distance to the next start
        self.transitions = np.empty(len(starts), dtype=starts.dtype)
        np.subtract(starts[1:], starts[:-1], out=self.transitions[:-1])
        self.transitions[-1] = n_chars - starts[-1]
        chunks = self.transitions + (tau - 1)
        chunks //= tau
        self.doc_chunks = chunks  # chunks of each document
        self.first = np.zeros(len(starts) + 1, dtype=np.int64)  # first chunk of each document
        np.cumsum(chunks, out=self.first[1:])
        self.per_epoch = int(self.first[-1])

    def chunks(self, k: np.ndarray):
        """(starts, lengths, resets) of the chunks numbered k within an epoch."""
        d = np.searchsorted(self.first, k, side="right") - 1
        return self.document_chunks(d, k - self.first[d])

    def document_chunks(self, d: np.ndarray, j: np.ndarray):
        """(starts, lengths, resets) of chunk j of document d."""
        done = j * self.tau
        starts = self.starts[d].astype(np.int64) - 1 + done
        return starts, np.minimum(self.tau, self.transitions[d] - done), j == 0


class Streams:
    """B streams that advance together (SPEC.md, `--chunks streams`).

    Text: the training text is cut into B shares of S = N // B characters; stream b runs the
    exercise's schedule on its share, so all streams reset together when a new epoch starts.
    Documents: the documents are cut into B contiguous shares of about equal chunk counts
    (share b starts at the document whose first chunk is nearest to b C / B of C chunks);
    stream b runs the document schedule on its share; an epoch is as many updates as the
    smallest share has chunks (the chunks beyond it wait for the next epoch, as the text's
    last N - B S characters do). With B = 1 both are the one-stream schedules above.
    """

    def __init__(self, corpus, tau: int, batch: int):
        n = len(corpus)
        if batch < 1:
            raise CharwiseError("--batch must be at least 1")
        if corpus.documents:
            whole = DocumentSchedule(corpus.starts, n, tau)
            D = len(corpus.starts)
            if batch > D:
                raise CharwiseError(
                    f"--batch {batch} needs at least {batch} training documents (there are "
                    f"{D}); use a smaller --batch"
                )
            # share b starts at the document whose first chunk is nearest to b * C / B
            firsts = whole.first[:-1]
            target = np.arange(batch) * whole.per_epoch / batch
            after = np.minimum(np.searchsorted(firsts, target), D - 1)
            before = np.maximum(after - 1, 0)
            nearer = np.abs(firsts[before] - target) <= np.abs(firsts[after] - target)
            cuts = np.where(nearer, before, after)
            for b in range(1, batch):  # at least one document per share
                cuts[b] = min(max(cuts[b], cuts[b - 1] + 1), D - batch + b)
            bounds = [*cuts.tolist(), D]
            self.streams = [
                DocumentSchedule(corpus.starts[a:b], n if b == D else int(corpus.starts[b]), tau)
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)
            ]
            self.offsets = np.zeros(batch, dtype=np.int64)
        else:
            share = n // batch
            if batch > 1 and share < tau + 1:
                raise CharwiseError(
                    f"corpus has {n} training characters: {batch} streams of {share} are "
                    f"shorter than one sequence ({tau + 1}); use a smaller --batch or --seq-length"
                )
            self.streams = [Schedule(share, tau)] * batch
            self.offsets = np.arange(batch, dtype=np.int64) * share
        self.tau, self.batch = tau, batch
        self.per_epoch = min(s.per_epoch for s in self.streams)

    def block(self, u0: int, n: int):
        """(starts, lengths, resets), each (n, B), for updates u0 .. u0 + n - 1."""
        k = (u0 + np.arange(n, dtype=np.int64)) % self.per_epoch
        parts = [s.chunks(k) for s in self.streams]
        starts = np.stack([p[0] for p in parts], axis=1) + self.offsets
        lengths = np.stack([p[1] for p in parts], axis=1).astype(np.int64)
        return starts, lengths, np.stack([p[2] for p in parts], axis=1)

    def peek(self, u: int):
        """(start, reset) of stream 0's chunk at update u (0-based), without drawing anything."""
        starts, _, resets = self.block(u, 1)
        return int(starts[0, 0]), bool(resets[0, 0])

    def epoch(self, update: int) -> int:
        return (max(update, 1) - 1) // self.per_epoch + 1

    def state(self) -> dict:
        return {"kind": "streams"}

    def set_state(self, state: dict, updates: int) -> None:
        """Streams are a function of the update number: nothing to restore."""


class RandomChunks:
    """Random chunks (SPEC.md, `--chunks random`): every chunk starts from a zero state.

    Text: update u draws its B starts as rng.integers(0, N - tau, size=B). Documents: per
    stream a document (uniform), then a chunk of it (uniform over its chunk starts). rng is
    default_rng((seed, 3)), drawn in update order; its state is part of the checkpoint. An
    "epoch" is as many updates as read about N characters: ceil(N / (B tau)).
    """

    def __init__(self, corpus, tau: int, batch: int, seed: int):
        self.n, self.tau, self.batch = len(corpus), tau, batch
        self.docs = DocumentSchedule(corpus.starts, self.n, tau) if corpus.documents else None
        if self.docs is None:
            Schedule(self.n, tau)  # refuses a text shorter than one sequence
        self.rng = np.random.default_rng((seed, 3))
        self.drawn = 0  # updates whose chunks have been drawn
        self.per_epoch = max(1, math.ceil(self.n / (batch * tau)))

    def _draw(self, rng: np.random.Generator, n: int):
        B = self.batch
        if self.docs is None:
            starts = rng.integers(0, self.n - self.tau, size=(n, B))
            return starts, np.full((n, B), self.tau, dtype=np.int64), np.ones((n, B), bool)
        d = np.empty((n, B), dtype=np.int64)
        j = np.empty((n, B), dtype=np.int64)
        for u in range(n):
            d[u] = rng.integers(0, len(self.docs.starts), size=B)
            j[u] = rng.integers(0, self.docs.doc_chunks[d[u]].astype(np.int64))
        starts, lengths, _ = self.docs.document_chunks(d, j)
        return starts, lengths.astype(np.int64), np.ones((n, B), bool)

    def block(self, u0: int, n: int):
        """(starts, lengths, resets), each (n, B); blocks must be asked for in update order."""
        if u0 != self.drawn:
            raise RuntimeError(f"random chunks drawn up to update {self.drawn}, asked from {u0}")
        self.drawn += n
        return self._draw(self.rng, n)

    def peek(self, u: int):
        """(start, reset) of stream 0's next chunk, from a copy of the generator."""
        rng = np.random.default_rng()
        rng.bit_generator.state = self.rng.bit_generator.state
        starts, _, _ = self._draw(rng, 1)
        return int(starts[0, 0]), True

    def epoch(self, update: int) -> int:
        return (max(update, 1) - 1) // self.per_epoch + 1

    def state(self) -> dict:
        return {"kind": "random", "rng": self.rng.bit_generator.state}

    def set_state(self, state: dict, updates: int) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.drawn = updates


def make_schedule(corpus, tau: int, batch: int = 1, chunks: str = "streams", seed: int = 1):
    """The schedule of a run: B streams (the exercise's with B = 1) or random chunks."""
    if chunks not in CHUNKS:
        raise CharwiseError(f"unknown --chunks {chunks!r}; choose {' or '.join(CHUNKS)}")
    if chunks == "random":
        return RandomChunks(corpus, tau, batch, seed)
    return Streams(corpus, tau, batch)
