"""The Trainer: runs blocks of updates through an engine and emits events (SPEC.md: the
training loop, smooth loss, best model, validation). It prints nothing itself: the progress
bar, logs, samples, evaluation and checkpoints are listeners (events.py)."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from charwise import checkpoint, rundir, safeio
from charwise.config import MAY_CHANGE, TrainConfig, config_from
from charwise.corpus import Corpus, load_recorded
from charwise.engines import get_engine, pick, storage_dtype
from charwise.engines.reference import Dropout
from charwise.errors import CharwiseError
from charwise.events import default_listeners
from charwise.model import DOC_SEPARATOR, CharModel  # noqa: F401  (DOC_SEPARATOR: its old home)
from charwise.models import ModelSpec
from charwise.optim import LRSchedule, make_optimizer
from charwise.rundir import CHECKPOINT, read_samples, repair_logs  # noqa: F401  (old home)
from charwise.schedule import DocumentSchedule, Schedule, make_schedule  # noqa: F401
from charwise.state import TrainState
from charwise.vocab import Vocab

BLOCK_MAX = 1000  # most updates per engine call, so Ctrl-C and timed checkpoints stay prompt
FIRST_BLOCK = 10  # updates of a run's first block, before its speed is known ...
BLOCK_SECONDS = 1.0  # ... then blocks of about this long (and at most BLOCK_MAX updates)
DIVERGE_FACTOR = 2.0  # stop when the smooth loss exceeds this x tau ln K (a uniform guess)


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
        self,
        corpus: Corpus,
        config: TrainConfig,
        out: str | Path,
        source: dict | None = None,
        progress: bool = True,
    ):
        config.check()
        self.corpus, self.config, self.out = corpus, config, Path(out)
        self.source = source  # load_corpus() arguments that read the corpus again on resume
        self.train_corpus, self.val_corpus = corpus.split(config.val_fraction)
        self.spec = ModelSpec(config.model, K=len(corpus.vocab), m=config.m, layers=config.layers)
        scheduled = config.lr_schedule != "constant" or config.warmup > 0
        self.engine_name = pick(
            config.engine,
            self.spec,
            config.optimizer,
            config.batch,
            config.dropout,
            config.dtype,
            scheduled,
        )
        self.device = None  # the torch engine's device
        self.optimizer = make_optimizer(config.optimizer, config.eta, config.clip, config.alpha)
        if scheduled:
            self.optimizer.schedule = LRSchedule(
                config.lr_schedule, config.warmup, config.min_lr, config.decay_updates
            )
        check_memory(self.spec, config, len(self.optimizer.slots))  # before allocating any
        self.engine = get_engine(self.engine_name)
        if hasattr(self.engine, "use_device"):
            self.device = str(self.engine.use_device(config.device))
            self.engine.use_autocast(config.dtype == "bfloat16")
        tau, seed = config.seq_length, config.seed
        self.schedule = make_schedule(self.train_corpus, tau, config.batch, config.chunks, seed)
        dtype = np.dtype(storage_dtype(config.dtype))
        self.model = CharModel.init(
            corpus.vocab, config.model, config.m, config.layers, config.sig, seed, dtype
        )
        self.state = TrainState.fresh(
            self.model.params, batch=config.batch, opt=self.optimizer.init_state(self.model.params)
        )
        self.sample_rng = np.random.default_rng((seed, 1))
        self.dropout = None
        if config.dropout and config.dropout_rng == "device":
            self.dropout = self.engine.DeviceDropout(config.dropout, tau, seed)
        elif config.dropout:
            self.dropout = Dropout(config.dropout, tau, np.random.default_rng((seed, 2)))
        self.data = np.ascontiguousarray(self.train_corpus.data)
        self.elapsed = 0.0  # seconds spent training
        self.first_loss = float("nan")  # loss of update 1 (recorded in the checkpoint)
        self.target = 0  # the total updates the current run() aims at
        self.minutes = None  # and its budget of training minutes, if any
        self.fitted_decay = False  # this run() fitted T to its minutes (_fit_decay)
        self.resumes: list[dict] = []  # each resume: its update and the settings it changed
        self.best_val: dict | None = None  # {update, val_nats} of best-val.npz
        self.stale_evals = 0  # validations since the best one (early stopping)
        self.early_stopped = False  # --patience validations without a better one
        self.last_eval = -1  # update of the last validation
        self.fresh = True  # no files written yet (False once run() starts or after a resume)
        self.stop_signal = 0  # set by SIGINT/SIGTERM; training stops at the next block end
        self.checkpoint_wanted = False  # a listener asks for a checkpoint at this block end
        self.saved_at, self.saved_update = time.monotonic(), self.state.updates
        self.listeners = default_listeners(self, progress)
        self.lock = rundir.RunLock(self.out)  # held from resume() or run() to run()'s end

    # ---- events -------------------------------------------------------------------------
    def emit(self, event: str, *args) -> None:
        for listener in self.listeners:
            handler = getattr(listener, f"on_{event}", None)
            if handler is not None:
                handler(self, *args)

    def intervals(self) -> list[int]:
        every = [lis.intervals(self) for lis in self.listeners if hasattr(lis, "intervals")]
        return [n for intervals in every for n in intervals]

    # ---- resuming -----------------------------------------------------------------------
    @classmethod
    def resume(cls, out: str | Path, corpus: Corpus | None = None, **changes) -> Trainer:
        """The run in `out` as its last checkpoint left it; `changes` may alter MAY_CHANGE."""
        out = Path(out)
        progress = changes.pop("progress", True)
        arrays, meta = checkpoint.load(out / CHECKPOINT)
        if meta.get("kind") != "checkpoint":
            raise CharwiseError(f"{out / CHECKPOINT} is a model, not a training checkpoint")
        config = config_from(meta.get("config"), out)
        changed = {
            k: [getattr(config, k), v] for k, v in changes.items() if getattr(config, k) != v
        }
        refused = [k for k in changed if k not in MAY_CHANGE]
        if refused:
            shown = ", ".join(f"--{k.replace('_', '-')} {changed[k][0]!r}" for k in refused)
            raise CharwiseError(
                f"{out} was trained with {shown}; a resume keeps those settings "
                f"(only {', '.join('--' + k.replace('_', '-') for k in MAY_CHANGE)} may change)"
            )
        config = replace(config, **changes)
        source = meta["corpus"].get("source") if isinstance(meta.get("corpus"), dict) else None
        if corpus is None:
            corpus = load_recorded(meta, out)
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
        trainer = cls(corpus, config, out, source, progress)
        trainer._restore(arrays, meta)
        trainer.resumes.append({"update": trainer.state.updates, "changed": changed})
        try:
            trainer.lock.acquire()  # before the logs are repaired: no other process may write
            repair_logs(out, trainer.state.updates)
            rundir.remove_stale_temporaries(out)
        except OSError as exc:  # a read-only or vanished folder
            trainer.lock.release()
            raise trainer._write_error(exc) from None
        return trainer

    def _restore(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """Load the state arrays and counters of a checkpoint after checking each."""
        state, K = self.state, len(self.corpus.vocab)
        where = self.out / CHECKPOINT
        state.restore(arrays, where)
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
            self.minutes = meta.get("target_minutes")
            self.resumes = list(meta["resumes"])
            self.schedule.set_state(meta.get("schedule", {}), updates)
            if self.dropout is not None:
                self.dropout.set_state(meta["dropout_rng"])
            self.best_val = meta.get("best_val")
            self.last_eval = int(meta.get("last_eval", -1))
            self.stale_evals = int(meta.get("stale_evals", 0))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise CharwiseError(
                f"{where}: bad training metadata ({exc}); the file is corrupt"
            ) from None
        if not (0 <= best_update <= updates and 0 <= best_x0 < K) or (
            updates > 0 and not np.isfinite([smooth, best_smooth, first]).all()
        ):
            raise CharwiseError(f"{where}: inconsistent training counters; the file is corrupt")
        patience = self.config.patience  # may have changed: stopped early by the new one?
        self.early_stopped = bool(patience) and self.stale_evals >= patience
        state.updates, state.smooth_loss = updates, smooth
        state.best_update, state.best_smooth, state.best_x0 = best_update, best_smooth, best_x0
        self.first_loss, self.saved_update = first, updates
        self.fresh = False

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Every array of the training state by checkpoint name (views, not copies)."""
        return self.state.arrays()

    # ---- the loop -----------------------------------------------------------------------
    def refuse_existing_run(self) -> None:
        """A fresh run never writes over another run's checkpoint and logs."""
        if self.fresh and (self.out / CHECKPOINT).exists():
            raise CharwiseError(
                f"{self.out} already holds a run; continue it with --resume {self.out} "
                "or pick another --out"
            )

    def run(
        self, updates: int | None = None, progress: bool = True, minutes: float | None = None
    ) -> TrainState:
        """Train until `updates` updates are done in total, or `minutes` of training time
        have passed (at a block end), with events at their updates; then the final files."""
        if updates is None and minutes is None:
            raise CharwiseError("give a number of updates or of minutes to train")
        try:
            self.lock.acquire()  # one process per run directory, with its pid in the error
            self._run(updates, progress, minutes)
        except OSError as exc:  # a full disk, a read-only or vanished folder
            raise self._write_error(exc) from None
        finally:
            self.lock.release()
        return self.state

    def _write_error(self, exc: OSError) -> CharwiseError:
        """A one-line error for a failed write that says what is kept and how to continue."""
        where = f" ({exc.filename})" if exc.filename else ""
        reason = f"cannot write in {self.out}: {exc.strerror or exc}{where}"
        if (self.out / CHECKPOINT).is_file():
            return CharwiseError(
                f"{reason}; the last checkpoint (update {self.saved_update}) is kept: fix that and "
                f"continue with: charwise train --resume {self.out}"
            )
        return CharwiseError(f"{reason}; nothing was saved: fix that or pick another --out")

    def _run(self, updates: int | None, progress: bool, minutes: float | None) -> None:
        self.refuse_existing_run()
        if not progress:
            for listener in self.listeners:
                if hasattr(listener, "enabled"):
                    listener.enabled = False
        state = self.state
        self.target = updates if updates is not None else 0
        self.minutes = minutes
        cfg = self.config
        if self._decay_unfitted():
            if updates is not None:
                cfg.decay_updates = self.optimizer.schedule.total = updates  # a resume keeps it
            elif minutes is None or not cfg.warmup:  # else fitted after the warm-up (_fit_decay)
                raise CharwiseError(
                    f"--lr-schedule {cfg.lr_schedule} decays over --updates; give them, "
                    "--decay-updates, or a --warmup (the decay then ends where --minutes is "
                    "expected to, at the warm-up's speed)"
                )
        limit = math.inf if updates is None else updates
        with _stop_on_signals(self):
            self._warm_up()
            if self.fresh:
                self.emit("start")
                self.fresh = False
            self.emit("begin", updates)
            try:
                cap = FIRST_BLOCK
                while state.updates < limit and not self._out_of_time() and not self.early_stopped:
                    if self._decay_unfitted() and state.updates >= cfg.warmup:
                        self._fit_decay()
                    stops = [_next_multiple(state.updates, e) for e in self.intervals()]
                    if self._decay_unfitted():  # a block ends with the warm-up
                        stops.append(cfg.warmup)
                    n = int(min(*stops, state.updates + cap, limit)) - state.updates
                    u0, smooth0, t0 = state.updates, state.smooth_loss, self.elapsed
                    losses, done = self._train_block(n)
                    smooth = _smooth_curve(u0, smooth0, losses[:done])
                    self.emit("block", u0, losses[:done], smooth)
                    self._check_divergence(u0, losses, done, smooth)
                    self.emit("step", state.updates)
                    self.emit("block_end")
                    self.checkpoint_wanted = False
                    if self.stop_signal:
                        self.emit("interrupted", signal.Signals(self.stop_signal).name)
                        raise Interrupted(self.stop_signal, state.updates, self.out)
                    rate = n / max(self.elapsed - t0, 1e-9)
                    cap = max(1, min(BLOCK_MAX, int(rate * BLOCK_SECONDS)))
                if self.fitted_decay and self._out_of_time():
                    self._report_decay_fit()
                self.emit("final")
                self.save_checkpoint()
            finally:
                self.emit("end")
        self.finish()

    def _warm_up(self) -> None:
        """Compile or load the engine's kernels before the first block, so neither the speed
        shown nor --minutes counts them; say so when it takes long (the first start)."""
        warm_up = getattr(self.engine, "warm_up", None)
        if warm_up is None:
            return
        spec, config = self.state.spec, self.config
        exercise = self.engine.exercise(spec, self.optimizer, config.batch, self.dropout)
        if not self.engine.cached(spec, exercise, storage_dtype(config.dtype), config.batch):
            seconds = self.engine.compile_estimate(spec, exercise, config.batch)
            self.emit(
                "message",
                f"compiling the {self.engine_name} engine's {spec.family} kernels "
                f"(once per model family and dtype, about {max(5, round(seconds / 5) * 5)} s)",
            )
        t0 = time.perf_counter()
        warm_up(storage_dtype(config.dtype), spec, exercise, config.batch)
        if time.perf_counter() - t0 > 5:
            self.emit("message", f"engine ready in {time.perf_counter() - t0:.1f} s")

    def _decay_unfitted(self) -> bool:
        """A decaying schedule whose end (T) is not set yet."""
        decays = self.optimizer.schedule is not None and self.config.lr_schedule != "constant"
        return decays and not self.config.decay_updates

    def _fit_decay(self) -> None:
        """A decaying schedule of a run for --minutes alone: at the end of the warm-up, T (the
        update the decay ends at) becomes the update the minutes are expected to reach at the
        speed of the training so far, recorded as --decay-updates (a resume keeps it)."""
        cfg, done = self.config, self.state.updates
        rate = done / max(self.elapsed, 1e-9)
        left = max(0.0, 60.0 * self.minutes - self.elapsed)
        cfg.decay_updates = self.optimizer.schedule.total = decay_end(done, rate, left)
        self.fitted_decay = True
        self.emit(
            "message",
            f"the {cfg.lr_schedule} decay ends at update {cfg.decay_updates:,}: where "
            f"--minutes {self.minutes:g} is expected to end at the warm-up's "
            f"{rate:,.1f} updates/s",
        )

    def _report_decay_fit(self) -> None:
        """A line when a run whose decay was fitted to its minutes ended more than MISFIT x T
        from T: the machine's speed changed after the warm-up."""
        done, T = self.state.updates, self.config.decay_updates
        if abs(done - T) <= MISFIT * T:
            return
        self.emit(
            "message",
            f"the run ended at update {done:,}, {abs(done - T) / T:.0%} "
            f"{'before' if done < T else 'after'} the end of its fitted decay ({T:,}): it "
            f"trained {'slower' if done < T else 'faster'} than in the warm-up, and its last "
            f"rate was {self.optimizer.schedule.factor(done):.2f} x eta; --decay-updates fixes "
            "the decay's end",
        )

    def _out_of_time(self) -> bool:
        return self.minutes is not None and self.elapsed >= 60.0 * self.minutes

    def _train_block(self, n: int) -> tuple[np.ndarray, int]:
        """The losses of up to n updates and how many were done (fewer: non-finite)."""
        state, u0 = self.state, self.state.updates
        starts, lengths, resets = self.schedule.block(u0, n)
        losses = np.empty(n)
        t0 = time.perf_counter()
        done = self.engine.run_block(
            state, self.optimizer, self.data, starts, lengths, resets, losses, self.dropout
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
        self.emit("diverged", update, reason)
        raise CharwiseError(
            f"training diverged at update {update} ({reason}); the last good checkpoint "
            f"(update {self.saved_update}) is kept; continue it with a lower learning rate: "
            f"charwise train --resume {self.out} --eta {self.config.eta / 10:g}"
        )

    # ---- files --------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """RUN_DIR/checkpoint.npz: all a resume needs, after the logs it covers reach the disk."""
        for name in (rundir.METRICS, rundir.SAMPLES, rundir.EVAL):
            if (self.out / name).exists():
                rundir.fsync(self.out / name)
        s, vocab, arrays = self.state, self.corpus.vocab, self.state.arrays()
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
            "target_minutes": self.minutes,
            "sample_rng": self.sample_rng.bit_generator.state,
            "schedule": self.schedule.state(),
            "dropout_rng": self.dropout.state() if self.dropout else None,
            "best_val": self.best_val,
            "last_eval": self.last_eval,
            "stale_evals": self.stale_evals,
            "early_stopped": self.early_stopped,
            "resumes": self.resumes,
        }
        checkpoint.save(self.out / CHECKPOINT, arrays, meta, kind="checkpoint")
        self.saved_at, self.saved_update = time.monotonic(), self.state.updates
        self.emit("checkpoint")

    def meta(self) -> dict:
        s = self.state
        corpus = {"name": self.corpus.name, "chars": len(self.corpus), "source": self.source}
        if self.corpus.documents:
            corpus["documents"] = len(self.corpus.starts)
        if self.val_corpus is not None:
            corpus["train_chars"] = len(self.train_corpus)
            corpus["val_chars"] = len(self.val_corpus)
        return {
            "config": asdict(self.config),
            "engine_used": self.engine_name + (f" ({self.device})" if self.device else ""),
            "optimizer": {"name": self.optimizer.name, "t": s.updates},
            "corpus": corpus,
            "corpus_sha256": self.corpus.fingerprint(),
            "updates": s.updates,
            "epoch": self.schedule.epoch(s.updates),
            "smooth_loss": float(s.smooth_loss),
            "best_update": s.best_update,
            "best_smooth_loss": float(s.best_smooth),
            "train_seconds": self.elapsed,
        }

    def save_model(self, name: str, params, updates: int, extra=None, **facts) -> None:
        """A model file in the run directory: the parameters, the run's facts and `facts`."""
        meta = self.meta() | {"updates": updates} | facts
        CharModel(self.corpus.vocab, params, self.model.meta).save(self.out / name, extra, **meta)

    def finish(self) -> None:
        """final.npz (with the training state), best.npz, the passage and the figures."""
        state = self.state
        self.save_model(rundir.FINAL, state.params, state.updates, state.model_arrays())
        best_start = state.model_arrays(best=True)
        best_arrays = {k: a for k, a in best_start.items() if k not in state.params}
        facts = {"smooth_loss": state.best_smooth, "x0": state.best_x0}
        self.save_model(rundir.BEST, state.best, state.best_update, best_arrays, **facts)
        self.write_passage()
        if self.best_val is not None:
            self.write_val_passage()
        self.emit("finish")

    def write_passage(self) -> str:
        """The best model's passage, from the state its chunk started from (stream 0's) and
        its first character (SPEC.md); document corpora draw new documents.

        Drawn from a copy of the sampling generator, so that continuing the run later
        draws the same samples as a run that never stopped here.
        """
        state, cfg = self.state, self.config
        rng = np.random.default_rng()
        rng.bit_generator.state = self.sample_rng.bit_generator.state
        if self.corpus.documents:
            text = DOC_SEPARATOR.join(self.documents(state.best, cfg.passage_docs, rng))
        else:
            uniforms = rng.random(cfg.passage_length)
            h0 = tuple(b[:, None] for b in state.best_carry)
            indices = self.engine.sample(
                state.best, h0, state.best_x0, cfg.passage_length, uniforms
            )
            text = self.corpus.vocab.decode(indices)
        safeio.write_text(self.out / rundir.PASSAGE, text)
        return text

    def write_val_passage(self) -> str:
        """A passage from best-val.npz, the recommended model: from a zero state after the
        default start character (as `charwise sample`), drawn with default_rng((seed, 5))."""
        model, _ = CharModel.load(self.out / rundir.BEST_VAL)
        rng, cfg = np.random.default_rng((self.config.seed, 5)), self.config
        if self.corpus.documents:
            text = DOC_SEPARATOR.join(self.documents(model.params, cfg.passage_docs, rng))
        else:
            kw = dict(rng=rng, engine=self.engine_name)
            text = model.vocab.decode(model.sample_indices(cfg.passage_length, **kw))
        safeio.write_text(self.out / rundir.VAL_PASSAGE, text)
        return text

    def documents(self, params, count: int, rng: np.random.Generator) -> list[str]:
        """count new documents from params (sample events and the passage of document runs)."""
        model = CharModel(self.corpus.vocab, params)
        cfg = self.config
        return model.sample_documents(count, cfg.max_length, rng=rng, engine=self.engine_name)


def memory_needed(spec: ModelSpec, config: TrainConfig, slots: int) -> int:
    """Bytes a run holds about at once: parameters, optimiser slots, gradients and the best
    copy, and the activations of one update (every step, layer and gate, kept for BPTT)."""
    n = sum(math.prod(shape) for shape in spec.shapes().values())
    item = np.dtype(storage_dtype(config.dtype)).itemsize
    steps = config.batch * config.seq_length * spec.layers * spec.m
    logits = config.batch * config.seq_length * spec.K * 8 * 3  # logits, p and dL/do
    return n * (3 + slots) * item + steps * (spec.cell.GATES + 3) * 8 + logits


def available_memory() -> int:
    """MemAvailable of /proc/meminfo, else the machine's physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(spec: ModelSpec, config: TrainConfig, slots: int) -> None:
    """A one-line error, before anything is allocated, when the run cannot fit in memory."""
    needed, free = memory_needed(spec, config, slots), available_memory()
    if needed > free:
        raise CharwiseError(
            f"{spec.describe()} with --batch {config.batch} --seq-length {config.seq_length} "
            f"needs about {needed / 2**30:,.1f} GiB of memory, and {free / 2**30:,.1f} GiB is "
            "available; use a smaller --m, --layers or --batch"
        )


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


MISFIT = 0.05  # a run ending more than this share of T from its fitted decay's end T says so


def decay_end(done: int, rate: float, seconds_left: float) -> int:
    """The update a decay fitted to a time budget ends at: `done` updates so far, then `rate`
    updates a second for the `seconds_left` of the budget (at least one more update)."""
    return done + max(1, round(rate * seconds_left))
