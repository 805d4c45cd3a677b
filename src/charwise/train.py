"""The training protocol of SPEC.md: chunk schedule, h_prev carry, smooth loss, best model,
and the events (progress, samples, checkpoints) that happen every N updates."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from charwise.corpus import Corpus
from charwise.engines import get_engine
from charwise.errors import CharwiseError
from charwise.model import DOC_SEPARATOR, CharRNN
from charwise.optim import CLIP, EPS, TrainState


@dataclass
class TrainConfig:
    """Every setting of a run, recorded in its checkpoints."""

    m: int = 100  # hidden units (>= 1)
    eta: float = 0.1  # AdaGrad learning rate
    seq_length: int = 25  # tau: characters per chunk (>= 1)
    sig: float = 0.01  # standard deviation of the initial U, W, V
    seed: int = 1  # seeds the parameters and (seed, 1) the sampling generator
    print_every: int = 100  # progress refresh (and a log line when not on a terminal)
    sample_every: int = 10_000  # a sample before update 1 and after every N updates
    sample_length: int = 200  # characters per training sample
    passage_length: int = 1000  # characters of the final best-model passage
    max_length: int = 200  # document corpora: a sampled document ends at its end char or here
    sample_docs: int = 3  # document corpora: documents per sample event
    passage_docs: int = 10  # document corpora: documents sampled from the best model at the end
    engine: str = "fast"  # fast (numba) or reference (numpy)
    dtype: str = "float64"  # float64 or float32 (float32: fast engine only)

    def check(self) -> None:
        positive = ["m", "seq_length", "print_every", "sample_every", "sample_length", "max_length"]
        bad = [name for name in positive if getattr(self, name) < 1]
        if bad or not self.eta > 0 or not self.sig > 0:
            raise CharwiseError(f"settings must be positive: {', '.join(bad) or 'eta/sig'}")
        if self.dtype not in ("float64", "float32"):
            raise CharwiseError("--dtype must be float64 or float32")
        if self.dtype == "float32" and self.engine == "reference":
            raise CharwiseError("the reference engine is float64 only; use --engine fast")


class Schedule:
    """The chunk schedule of SPEC.md as a function of the update number.

    Update u (0-based) uses chunk k = u mod per_epoch of epoch u // per_epoch: inputs
    data[k*tau : k*tau + tau], targets shifted by one; h_prev resets at k = 0.
    """

    def __init__(self, n_chars: int, tau: int):
        if n_chars < tau + 1:
            raise CharwiseError(
                f"corpus has {n_chars} characters, fewer than one sequence needs "
                f"({tau + 1}); use a longer text or a smaller --seq-length"
            )
        self.tau = tau
        self.per_epoch = (n_chars - tau - 1) // tau + 1  # e = 0, tau, ... while e <= N - tau - 1

    def block(self, u0: int, n: int):
        """(starts, lengths, resets) for updates u0 .. u0 + n - 1."""
        k = (u0 + np.arange(n, dtype=np.int64)) % self.per_epoch
        return k * self.tau, np.full(n, self.tau, dtype=np.int64), k == 0

    def epoch(self, update: int) -> int:
        """1-based epoch of a 1-based update number."""
        return (update - 1) // self.per_epoch + 1

    @staticmethod
    def for_corpus(corpus: Corpus, tau: int) -> Schedule:
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
        self.first = np.zeros(len(starts) + 1, dtype=np.int64)  # first chunk of each document
        np.cumsum(chunks, out=self.first[1:])
        self.per_epoch = int(self.first[-1])

    def block(self, u0: int, n: int):
        """(starts, lengths, resets) for updates u0 .. u0 + n - 1."""
        k = (u0 + np.arange(n, dtype=np.int64)) % self.per_epoch
        d = np.searchsorted(self.first, k, side="right") - 1
        j = k - self.first[d]  # chunk number within document d
        done = j * self.tau
        starts = self.starts[d].astype(np.int64) - 1 + done
        return starts, np.minimum(self.tau, self.transitions[d] - done), j == 0


def read_samples(path: str | Path) -> list[dict]:
    """Parse samples.txt back into {update, epoch, smooth_loss, text} records."""
    with open(path, encoding="utf-8", newline="") as f:
        raw = f.read()
    records, pos = [], 0
    while pos < len(raw):
        end = raw.index("\n", pos)
        fields = raw[pos:end].strip("- ").split(", ")
        rec = dict(field.split(" ", 1) for field in fields)
        n = int(rec.pop("chars"))
        text = raw[end + 1 : end + 1 + n]
        records.append(
            {
                "update": int(rec["update"]),
                "epoch": int(rec["epoch"]),
                "smooth_loss": float(rec["loss"]),
                "text": text,
            }
        )
        pos = end + 1 + n + 2
    return records


class Trainer:
    """Runs the protocol on a corpus and writes the run directory's artefacts."""

    def __init__(self, corpus: Corpus, config: TrainConfig, out: str | Path):
        config.check()
        self.corpus, self.config, self.out = corpus, config, Path(out)
        self.schedule = Schedule.for_corpus(corpus, config.seq_length)
        self.engine = get_engine(config.engine)
        dtype = np.dtype(config.dtype)
        self.model = CharRNN.init(corpus.vocab, config.m, config.sig, config.seed, dtype)
        self.state = TrainState.fresh(self.model.params)
        self.sample_rng = np.random.default_rng((config.seed, 1))
        self.data = np.ascontiguousarray(corpus.data)
        self.elapsed = 0.0  # seconds spent training

    # ---- the loop -----------------------------------------------------------------------
    def run(self, updates: int, progress: bool = True) -> TrainState:
        """Train until `updates` updates are done in total, with events at their updates."""
        self.out.mkdir(parents=True, exist_ok=True)
        state = self.state
        metrics = self.out / "metrics.csv"
        if state.updates == 0:
            metrics.write_text("update,epoch,loss,smooth_loss\n")
            (self.out / "samples.txt").write_text("")
            self._sample_event()
        bar = _progress(state.updates, updates, progress)
        try:
            while state.updates < updates:
                n = min(_next_multiple(state.updates, e) for e in self._intervals()) - state.updates
                n = min(n, updates - state.updates)
                u0, smooth0 = state.updates, state.smooth_loss
                losses = self._train_block(n)
                self._append_metrics(metrics, u0, smooth0, losses)
                self._after_block(bar)
        finally:
            if bar is not None:
                bar.close()
        self.save_models()
        self.write_passage()
        self.plot()
        return state

    def _intervals(self) -> tuple[int, ...]:
        return (self.config.print_every, self.config.sample_every)

    def _train_block(self, n: int) -> np.ndarray:
        state, cfg = self.state, self.config
        starts, lengths, resets = self.schedule.block(state.updates, n)
        losses = np.empty(n)
        t0 = time.perf_counter()
        done = self.engine.train_block(
            state, self.data, starts, lengths, resets, cfg.eta, EPS, CLIP, losses
        )
        self.elapsed += time.perf_counter() - t0
        if done < n:
            update = state.updates + 1
            self.save_models()
            raise CharwiseError(
                f"training diverged at update {update} (loss {losses[done]}); the last good "
                f"model is in {self.out}; lower --eta (now {cfg.eta})"
            )
        return losses

    def _append_metrics(self, path: Path, u0: int, smooth: float, losses: np.ndarray) -> None:
        rows = []
        for i, loss in enumerate(losses.tolist()):
            u = u0 + i + 1
            smooth = loss if u == 1 else 0.999 * smooth + 0.001 * loss
            rows.append(f"{u},{self.schedule.epoch(u)},{loss!r},{smooth!r}\n")
        with path.open("a") as f:
            f.writelines(rows)

    def _after_block(self, bar) -> None:
        state, cfg = self.state, self.config
        if state.updates % cfg.print_every == 0:
            chars_per_s = state.updates * cfg.seq_length / max(self.elapsed, 1e-9)
            facts = dict(
                epoch=self.schedule.epoch(state.updates),
                smooth_loss=f"{state.smooth_loss:.3f}",
                chars_per_s=f"{chars_per_s:,.0f}",
            )
            if bar is not None:
                bar.set_postfix(facts, refresh=False)
                bar.update(state.updates - bar.n)
            else:
                print(f"update {state.updates} " + " ".join(f"{k} {v}" for k, v in facts.items()))
        if state.updates % cfg.sample_every == 0:
            self._sample_event(bar)

    # ---- events -------------------------------------------------------------------------
    def _sample_event(self, bar=None) -> None:
        """A sample from h_prev and the next chunk's first character, logged to samples.txt."""
        state, cfg = self.state, self.config
        if self.corpus.documents:  # new documents from h = 0 and the end character
            text = DOC_SEPARATOR.join(self._documents(state.params, cfg.sample_docs))
        else:
            start, _, reset = self.schedule.block(state.updates, 1)
            h0 = np.zeros_like(state.h_prev) if reset[0] else state.h_prev
            x0 = int(self.data[start[0]])
            uniforms = self.sample_rng.random(cfg.sample_length)
            indices = self.engine.sample(self.model.params, h0, x0, cfg.sample_length, uniforms)
            text = self.corpus.vocab.decode(indices)
        epoch = self.schedule.epoch(max(state.updates, 1))
        smooth = state.smooth_loss
        header = (
            f"--- update {state.updates}, epoch {epoch}, loss {smooth!r}, chars {len(text)} ---"
        )
        with (self.out / "samples.txt").open("a", encoding="utf-8", newline="") as f:
            f.write(f"{header}\n{text}\n\n")
        show = f"\n{header}\n{text}\n"
        if bar is not None:
            bar.write(show)
        else:
            print(show)

    def save_models(self) -> None:
        """final.npz (with the training state) and best.npz (the best parameters)."""
        state, meta = self.state, self.meta()
        train_arrays = {f"G_{name}": g for name, g in state.G.items()} | {"h_prev": state.h_prev}
        self.model.save(self.out / "final.npz", extra=train_arrays, **meta)
        best = CharRNN(self.model.vocab, state.best, self.model.meta)
        best_meta = meta | {"updates": state.best_update, "smooth_loss": state.best_smooth}
        best.save(self.out / "best.npz", extra={"h0": state.best_h}, x0=state.best_x0, **best_meta)

    def meta(self) -> dict:
        s = self.state
        return {
            "config": asdict(self.config),
            "corpus": {"name": self.corpus.name, "chars": len(self.corpus)}
            | ({"documents": len(self.corpus.starts)} if self.corpus.documents else {}),
            "corpus_sha256": self.corpus.fingerprint(),
            "updates": s.updates,
            "epoch": self.schedule.epoch(max(s.updates, 1)),
            "smooth_loss": s.smooth_loss,
            "best_update": s.best_update,
            "best_smooth_loss": s.best_smooth,
            "train_seconds": self.elapsed,
        }

    def write_passage(self) -> str:
        """The best model's passage, from its h_prev and first character (SPEC.md)."""
        state, cfg = self.state, self.config
        if self.corpus.documents:
            text = DOC_SEPARATOR.join(self._documents(state.best, cfg.passage_docs))
        else:
            uniforms = self.sample_rng.random(cfg.passage_length)
            indices = self.engine.sample(
                state.best, state.best_h, state.best_x0, cfg.passage_length, uniforms
            )
            text = self.corpus.vocab.decode(indices)
        (self.out / "best_passage.txt").write_text(text, encoding="utf-8", newline="")
        return text

    def _documents(self, params, count: int) -> list[str]:
        model = CharRNN(self.corpus.vocab, params)
        cfg = self.config
        return model.sample_documents(count, cfg.max_length, rng=self.sample_rng, engine=cfg.engine)

    def plot(self) -> None:
        from charwise.report import plot_run

        plot_run(self.out, self.out / "loss.png", per_epoch=self.schedule.per_epoch)


def _next_multiple(u: int, every: int) -> int:
    return (u // every + 1) * every


def _progress(initial: int, total: int, enabled: bool):
    """A tqdm bar on a terminal; None (plain log lines) otherwise."""
    import sys

    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="upd", dynamic_ncols=True, smoothing=0.1)
