"""The training protocol of SPEC.md: chunk schedule, h_prev carry, smooth loss, best model,
and the events (progress, samples, checkpoints) that happen every N updates."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from charwise import checkpoint
from charwise.corpus import Corpus, load_corpus
from charwise.engines import get_engine
from charwise.errors import CharwiseError
from charwise.model import DOC_SEPARATOR, CharRNN
from charwise.optim import CLIP, EPS, TrainState
from charwise.vocab import Vocab

CHECKPOINT = "checkpoint.npz"  # a run directory's resumable state (final.npz: the model)
BLOCK_MAX = 1000  # most updates per engine call, so Ctrl-C and timed checkpoints stay prompt
METRICS_HEADER = "update,epoch,loss,smooth_loss"
DIVERGE_FACTOR = 2.0  # stop when the smooth loss exceeds this x tau ln K (a uniform guess)
# Settings a resume may change (recorded): they alter what happens next, never the saved state.
MAY_CHANGE = (
    "eta",
    "print_every",
    "sample_every",
    "sample_length",
    "passage_length",
    "max_length",
    "sample_docs",
    "passage_docs",
    "checkpoint_every",
    "checkpoint_seconds",
    "engine",
)


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
    checkpoint_every: int = 0  # a checkpoint every N updates (0: only the timed ones)
    checkpoint_seconds: float = 60.0  # and at the first block end N s after the last (0: off)

    def check(self) -> None:
        positive = ["m", "seq_length", "print_every", "sample_every", "sample_length", "max_length"]
        bad = [name for name in positive if getattr(self, name) < 1]
        bad += [n for n in ("checkpoint_every", "checkpoint_seconds") if getattr(self, n) < 0]
        if bad or not self.eta > 0 or not self.sig > 0:
            raise CharwiseError(
                f"settings out of range: {', '.join(bad) or 'eta/sig'} (counts and eta, sig "
                "must be positive; checkpoint intervals >= 0)"
            )
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
        if tau < 1:
            raise CharwiseError("--seq-length must be at least 1")
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


def _sample_records(raw: str):
    """(end offset, update, epoch, smooth loss, text) of each complete record of samples.txt."""
    pos = 0
    while True:
        end = raw.find("\n", pos)
        if end < 0:
            return
        try:
            parts = raw[pos:end].strip("- ").split(", ")
            rec = dict(part.split(" ", 1) for part in parts)
            n, update, epoch = int(rec["chars"]), int(rec["update"]), int(rec["epoch"])
            smooth = float(rec["loss"])
        except (ValueError, KeyError):
            return
        text, after = raw[end + 1 : end + 1 + n], end + 1 + n
        if len(text) < n or raw[after : after + 2] != "\n\n":
            return
        pos = after + 2
        yield pos, update, epoch, smooth, text


def read_samples(path: str | Path) -> list[dict]:
    """Parse samples.txt back into {update, epoch, smooth_loss, text} records."""
    with open(path, encoding="utf-8", newline="") as f:
        raw = f.read()
    keys = ("update", "epoch", "smooth_loss", "text")
    return [dict(zip(keys, rec[1:], strict=True)) for rec in _sample_records(raw)]


def repair_logs(out: Path, updates: int) -> None:
    """Cut metrics.csv and samples.txt back to `updates`: the checkpoint is the truth.

    Drops rows and samples written after the checkpoint and a partial last line left by a
    kill, so the resumed run appends exactly what an uninterrupted run would have written.
    """
    metrics = out / "metrics.csv"
    try:
        raw = metrics.read_bytes()
    except OSError:
        raw = b""
    lines = raw.split(b"\n")[: updates + 1]  # header + one row per update
    size = sum(len(line) + 1 for line in lines)
    rows = enumerate(lines[1:], start=1)
    if (
        size > len(raw)
        or lines[0] != METRICS_HEADER.encode()
        or not all(line.startswith(b"%d," % u) for u, line in rows)
    ):
        raise CharwiseError(
            f"{metrics} lacks rows of the first {updates} updates, which its checkpoint "
            "holds; restore that file or start a new run"
        )
    _truncate(metrics, size)
    samples = out / "samples.txt"
    text = samples.read_bytes().decode("utf-8", "surrogateescape") if samples.exists() else ""
    keep = 0
    for end, update, *_ in _sample_records(text):
        if update > updates:
            break
        keep = end
    _truncate(samples, len(text[:keep].encode("utf-8", "surrogateescape")))


def _truncate(path: Path, size: int) -> None:
    with path.open("ab") as f:
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())


class Interrupted(Exception):
    """Training stopped by SIGINT or SIGTERM after a checkpoint; `signum` says which."""

    def __init__(self, signum: int, updates: int, out: Path):
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} at update {updates}; checkpoint saved. "
            f"Continue with: charwise train --resume {out}"
        )
        self.signum = signum


class Trainer:
    """Runs the protocol on a corpus and writes the run directory's artefacts."""

    def __init__(
        self, corpus: Corpus, config: TrainConfig, out: str | Path, source: dict | None = None
    ):
        config.check()
        self.corpus, self.config, self.out = corpus, config, Path(out)
        self.source = source  # load_corpus() arguments that read the corpus again on resume
        self.schedule = Schedule.for_corpus(corpus, config.seq_length)
        self.engine = get_engine(config.engine)
        dtype = np.dtype(config.dtype)
        self.model = CharRNN.init(corpus.vocab, config.m, config.sig, config.seed, dtype)
        self.state = TrainState.fresh(self.model.params)
        self.sample_rng = np.random.default_rng((config.seed, 1))
        self.data = np.ascontiguousarray(corpus.data)
        self.elapsed = 0.0  # seconds spent training
        self.first_loss = float("nan")  # loss of update 1, the divergence rule's yardstick
        self.target = 0  # the total updates the current run() aims at
        self.resumes: list[dict] = []  # each resume: its update and the settings it changed
        self.fresh = True  # no files written yet (False once run() starts or after a resume)
        self.stop_signal = 0  # set by SIGINT/SIGTERM; training stops at the next block end
        self.saved_at, self.saved_update = time.monotonic(), self.state.updates

    @classmethod
    def resume(cls, out: str | Path, corpus: Corpus | None = None, **changes) -> Trainer:
        """The run in `out` as its last checkpoint left it; `changes` may alter MAY_CHANGE."""
        out = Path(out)
        arrays, meta = checkpoint.load(out / CHECKPOINT)
        if meta.get("kind") != "checkpoint":
            raise CharwiseError(f"{out / CHECKPOINT} is a model, not a training checkpoint")
        config = _config_from(meta.get("config"), out)
        changed = {
            k: [getattr(config, k), v] for k, v in changes.items() if getattr(config, k) != v
        }
        refused = [k for k in changed if k not in MAY_CHANGE]
        if refused:
            shown = ", ".join(f"--{k.replace('_', '-')} {changed[k][0]!r}" for k in refused)
            raise CharwiseError(
                f"{out} was trained with {shown}; a resume keeps those settings "
                f"(only {', '.join(MAY_CHANGE)} may change)"
            )
        config = replace(config, **changes)
        source = meta["corpus"].get("source") if isinstance(meta.get("corpus"), dict) else None
        if corpus is None:
            try:
                corpus = load_corpus(**source)
            except TypeError:
                raise CharwiseError(
                    f"{out} does not record its corpus; pass the CORPUS again"
                ) from None
        vocab = Vocab.from_json(meta.get("vocab"))
        if vocab != corpus.vocab:
            raise CharwiseError(
                f"corpus {corpus.name} has a different vocabulary (K = {len(corpus.vocab)}) than "
                f"the run in {out} (K = {len(vocab)}); resume with the run's own corpus"
            )
        if corpus.fingerprint() != meta.get("corpus_sha256"):
            raise CharwiseError(
                f"corpus {corpus.name} differs from the one the run in {out} was trained on "
                "(SHA-256 mismatch); resume with the run's own corpus"
            )
        trainer = cls(corpus, config, out, source)
        trainer._restore(arrays, meta)
        trainer.resumes.append({"update": trainer.state.updates, "changed": changed})
        repair_logs(out, trainer.state.updates)
        for stale in out.glob(".*.npz.*.tmp"):  # left by a kill in the middle of a save
            stale.unlink()
        return trainer

    def _restore(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """Load the state arrays and counters of a checkpoint after checking each."""
        state, m, K = self.state, self.config.m, len(self.corpus.vocab)
        where = self.out / CHECKPOINT
        targets = self.state_arrays()
        if sorted(arrays) != sorted(targets):
            raise CharwiseError(
                f"{where} holds arrays {sorted(arrays)}, expected {sorted(targets)} "
                f"for m={m}, K={K}; the file is corrupt"
            )
        for name, dst in targets.items():
            src = arrays[name]
            if src.shape != dst.shape or src.dtype != dst.dtype:
                raise CharwiseError(
                    f"{where}: {name} has shape {src.shape} and dtype {src.dtype}, expected "
                    f"{dst.shape} {dst.dtype}; the file is corrupt"
                )
            if not np.isfinite(src).all():
                raise CharwiseError(f"{where}: {name} holds NaN or infinity; the file is corrupt")
            dst[...] = src
        try:
            updates, best_update, best_x0 = (
                int(meta[k]) for k in ("updates", "best_update", "best_x0")
            )
            smooth, best_smooth, first = (
                float(meta[k]) for k in ("smooth_loss", "best_smooth_loss", "first_loss")
            )
            self.sample_rng.bit_generator.state = meta["sample_rng"]
            self.elapsed = float(meta["train_seconds"])
            self.target = int(meta["target_updates"])
            self.resumes = list(meta["resumes"])
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise CharwiseError(
                f"{where}: bad training metadata ({exc}); the file is corrupt"
            ) from None
        if not (0 <= best_update <= updates and 0 <= best_x0 < K) or (
            updates > 0 and not np.isfinite([smooth, best_smooth, first]).all()
        ):
            raise CharwiseError(f"{where}: inconsistent training counters; the file is corrupt")
        state.updates, state.smooth_loss = updates, smooth
        state.best_update, state.best_smooth, state.best_x0 = best_update, best_smooth, best_x0
        self.first_loss, self.saved_update = first, updates
        self.fresh = False

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Every array of the training state by checkpoint name (views, not copies)."""
        s = self.state
        return (
            dict(s.params.items())
            | {f"G_{name}": g for name, g in s.G.items()}
            | {f"best_{name}": p for name, p in s.best.items()}
            | {"h_prev": s.h_prev, "best_h": s.best_h}
        )

    # ---- the loop -----------------------------------------------------------------------
    def refuse_existing_run(self) -> None:
        """A fresh run never writes over another run's checkpoint and logs."""
        if self.fresh and (self.out / CHECKPOINT).exists():
            raise CharwiseError(
                f"{self.out} already holds a run; continue it with --resume {self.out} "
                "or pick another --out"
            )

    def run(self, updates: int, progress: bool = True) -> TrainState:
        """Train until `updates` updates are done in total, with events at their updates."""
        self.refuse_existing_run()
        self.out.mkdir(parents=True, exist_ok=True)
        state = self.state
        self.target = updates
        metrics = self.out / "metrics.csv"
        with _stop_on_signals(self):
            if self.fresh:
                metrics.write_text(METRICS_HEADER + "\n")
                (self.out / "samples.txt").write_text("")
                self._sample_event()
                self.save_checkpoint()
                self.fresh = False
            bar = _progress(state.updates, updates, progress)
            try:
                while state.updates < updates:
                    stops = [_next_multiple(state.updates, e) for e in self._intervals()]
                    n = min(*stops, state.updates + BLOCK_MAX, updates) - state.updates
                    u0, smooth0 = state.updates, state.smooth_loss
                    losses, done = self._train_block(n)
                    smooth = _smooth_curve(u0, smooth0, losses[:done])
                    self._append_metrics(metrics, u0, losses[:done], smooth)
                    self._check_divergence(u0, losses, done, smooth)
                    self._after_block(bar)
                    if self._checkpoint_due() or self.stop_signal:
                        self.save_checkpoint()
                    if self.stop_signal:
                        raise Interrupted(self.stop_signal, state.updates, self.out)
            finally:
                if bar is not None:
                    bar.close()
            self.save_checkpoint()
        self.save_models()
        self.write_passage()
        self.plot()
        return state

    def _intervals(self) -> tuple[int, ...]:
        cfg = self.config
        return (cfg.print_every, cfg.sample_every) + (
            (cfg.checkpoint_every,) if cfg.checkpoint_every else ()
        )

    def _checkpoint_due(self) -> bool:
        cfg, u = self.config, self.state.updates
        timed = (
            cfg.checkpoint_seconds and time.monotonic() - self.saved_at >= cfg.checkpoint_seconds
        )
        return bool(timed or (cfg.checkpoint_every and u % cfg.checkpoint_every == 0))

    def _train_block(self, n: int) -> tuple[np.ndarray, int]:
        """The losses of up to n updates and how many were done (fewer: non-finite)."""
        state, cfg = self.state, self.config
        u0 = state.updates
        starts, lengths, resets = self.schedule.block(u0, n)
        losses = np.empty(n)
        t0 = time.perf_counter()
        done = self.engine.train_block(
            state, self.data, starts, lengths, resets, cfg.eta, EPS, CLIP, losses
        )
        self.elapsed += time.perf_counter() - t0
        if u0 == 0 and done > 0:
            self.first_loss = float(losses[0])
        return losses, done

    def _check_divergence(self, u0: int, losses: np.ndarray, done: int, smooth: list) -> None:
        """Stop on a non-finite loss or gradient, or when the smooth loss passes
        DIVERGE_FACTOR x tau ln K, the loss of a uniform guess over a full chunk (where a
        fresh run starts): a learning run never gets that much worse than guessing, a
        diverging one does. Short first chunks (documents) do not lower the bar."""
        guess = self.config.seq_length * math.log(len(self.corpus.vocab))
        limit = DIVERGE_FACTOR * guess
        high = next((i for i, s in enumerate(smooth) if s > limit), None)
        if high is not None:
            reason = (
                f"smooth loss {smooth[high]:.4g} rose above {DIVERGE_FACTOR:g} x tau ln K "
                f"= {limit:.4g}"
            )
            self._diverged(u0 + high + 1, reason)
        if done < len(losses):
            self._diverged(u0 + done + 1, f"loss {losses[done]} or a gradient is not finite")

    def _diverged(self, update: int, reason: str):
        raise CharwiseError(
            f"training diverged at update {update} ({reason}); the last good checkpoint "
            f"(update {self.saved_update}) is kept; continue it with a lower learning rate: "
            f"charwise train --resume {self.out} --eta {self.config.eta / 10:g}"
        )

    def _append_metrics(self, path: Path, u0: int, losses: np.ndarray, smooth: list) -> None:
        updates = range(u0 + 1, u0 + len(losses) + 1)
        rows = [
            f"{u},{self.schedule.epoch(u)},{loss!r},{s!r}\n"
            for u, loss, s in zip(updates, losses.tolist(), smooth, strict=True)
        ]
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
            text = DOC_SEPARATOR.join(
                self._documents(state.params, cfg.sample_docs, self.sample_rng)
            )
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

    def save_checkpoint(self) -> None:
        """RUN_DIR/checkpoint.npz: all a resume needs, after the logs it covers reach the disk."""
        for name in ("metrics.csv", "samples.txt"):
            with (self.out / name).open("ab") as f:
                os.fsync(f.fileno())
        s, vocab, arrays = self.state, self.corpus.vocab, self.state_arrays()
        bad = [name for name, a in arrays.items() if not np.isfinite(a).all()]
        if bad or (s.updates and not np.isfinite([s.smooth_loss, s.best_smooth]).all()):
            raise CharwiseError(
                f"refusing to overwrite the checkpoint in {self.out} with non-finite values "
                f"({', '.join(bad) or 'smooth loss'}) at update {s.updates}; lower --eta"
            )
        meta = self.meta() | {
            "vocab": vocab.to_json(),
            "best_x0": s.best_x0,
            "first_loss": self.first_loss,
            "target_updates": self.target,
            "sample_rng": self.sample_rng.bit_generator.state,
            "resumes": self.resumes,
        }
        checkpoint.save(self.out / CHECKPOINT, arrays, meta, kind="checkpoint")
        self.saved_at, self.saved_update = time.monotonic(), self.state.updates

    def meta(self) -> dict:
        s = self.state
        return {
            "config": asdict(self.config),
            "corpus": {"name": self.corpus.name, "chars": len(self.corpus), "source": self.source}
            | ({"documents": len(self.corpus.starts)} if self.corpus.documents else {}),
            "corpus_sha256": self.corpus.fingerprint(),
            "updates": s.updates,
            "epoch": self.schedule.epoch(max(s.updates, 1)),
            "smooth_loss": float(s.smooth_loss),
            "best_update": s.best_update,
            "best_smooth_loss": float(s.best_smooth),
            "train_seconds": self.elapsed,
        }

    def write_passage(self) -> str:
        """The best model's passage, from its h_prev and first character (SPEC.md).

        Drawn from a copy of the sampling generator, so that continuing the run later
        draws the same samples as a run that never stopped here.
        """
        state, cfg = self.state, self.config
        rng = np.random.default_rng()
        rng.bit_generator.state = self.sample_rng.bit_generator.state
        if self.corpus.documents:
            text = DOC_SEPARATOR.join(self._documents(state.best, cfg.passage_docs, rng))
        else:
            uniforms = rng.random(cfg.passage_length)
            indices = self.engine.sample(
                state.best, state.best_h, state.best_x0, cfg.passage_length, uniforms
            )
            text = self.corpus.vocab.decode(indices)
        (self.out / "best_passage.txt").write_text(text, encoding="utf-8", newline="")
        return text

    def _documents(self, params, count: int, rng: np.random.Generator) -> list[str]:
        model = CharRNN(self.corpus.vocab, params)
        cfg = self.config
        return model.sample_documents(count, cfg.max_length, rng=rng, engine=cfg.engine)

    def plot(self) -> None:
        from charwise.report import plot_run

        plot_run(self.out, self.out / "loss.png", per_epoch=self.schedule.per_epoch)


def _config_from(saved, out: Path) -> TrainConfig:
    """The TrainConfig recorded in a checkpoint (settings added since then keep defaults)."""
    known = {f.name for f in fields(TrainConfig)}
    if not isinstance(saved, dict) or not saved.keys() <= known:
        extra = sorted(saved.keys() - known) if isinstance(saved, dict) else saved
        raise CharwiseError(f"{out}: unknown settings {extra} in its checkpoint; update charwise")
    config = TrainConfig(**saved)
    wrong = [f.name for f in fields(config) if not _same_kind(getattr(config, f.name), f.default)]
    if wrong:
        raise CharwiseError(f"{out}: settings {wrong} in its checkpoint have wrong types")
    config.check()
    return config


def _same_kind(value, default) -> bool:
    """Whether a saved setting has its default's type (an int may stand for a float)."""
    kinds = (int, float) if isinstance(default, float) else (type(default),)
    return isinstance(value, kinds) and not isinstance(value, bool)


class _stop_on_signals:
    """While active, SIGINT/SIGTERM set trainer.stop_signal; a second one stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, trainer: Trainer):
        self.trainer, self.previous = trainer, {}

    def handle(self, signum, frame) -> None:
        if self.trainer.stop_signal:
            raise KeyboardInterrupt
        self.trainer.stop_signal = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def _smooth_curve(u0: int, smooth: float, losses: np.ndarray) -> list[float]:
    """The smooth loss after each of the updates u0+1, ... (SPEC.md), as the engines keep it."""
    curve = []
    for u, loss in enumerate(losses.tolist(), start=u0 + 1):
        smooth = loss if u == 1 else 0.999 * smooth + 0.001 * loss
        curve.append(smooth)
    return curve


def _next_multiple(u: int, every: int) -> int:
    return (u // every + 1) * every


def _progress(initial: int, total: int, enabled: bool):
    """A tqdm bar on a terminal; None (plain log lines) otherwise."""
    import sys

    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="upd", dynamic_ncols=True, smoothing=0.1)
