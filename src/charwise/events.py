"""Listeners: what happens around training, attached to the Trainer from outside.

The trainer runs blocks of updates and emits events; each listener reacts to the ones it
names (a method on_<event>): the metrics log, the samples, validation, checkpoints, the
progress bar or log lines, the loss figure, the events log (which the web page follows).

Events, in the order of one block: block (the losses) -> step (the update count after it,
for progress, samples, validation) -> block_end (checkpoints). Around them: start (a fresh
run's first files), begin (each run() call), message (text to show), evaluated (a
validation row), checkpoint (one was written), finish (the final models are written),
early_stop / interrupted / diverged (why a run stops early), end (run() returns or
stops).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from charwise import rundir, safeio
from charwise.model import DOC_SEPARATOR

LOG_SHARE = 0.01  # without a terminal: a log line at most every 1% of the run ...
LOG_SECONDS = 30.0  # ... unless this many seconds have passed since the last one


class MetricsLog:
    """metrics.csv: one row per update (update, epoch, loss, smooth loss)."""

    def on_start(self, trainer) -> None:
        safeio.write_text(trainer.out / rundir.METRICS, rundir.METRICS_HEADER + "\n")

    def on_block(self, trainer, u0: int, losses: np.ndarray, smooth: list[float]) -> None:
        updates = range(u0 + 1, u0 + len(losses) + 1)
        epoch = trainer.schedule.epoch
        rows = [
            f"{u},{epoch(u)},{loss!r},{s!r}\n"
            for u, loss, s in zip(updates, losses.tolist(), smooth, strict=True)
        ]
        rundir.append(trainer.out / rundir.METRICS, rows)


class Sampler:
    """samples.txt: a sample before update 1 and after every sample_every updates, from stream
    0's state and its next chunk's first character (document corpora: new documents)."""

    def intervals(self, trainer) -> tuple[int, ...]:
        return (trainer.config.sample_every,)

    def on_start(self, trainer) -> None:
        safeio.write_text(trainer.out / rundir.SAMPLES, "")
        self.sample(trainer)

    def on_step(self, trainer, update: int) -> None:
        if update % trainer.config.sample_every == 0:
            self.sample(trainer)

    def sample(self, trainer) -> None:
        state, cfg = trainer.state, trainer.config
        if trainer.corpus.documents:
            docs = trainer.documents(state.params, cfg.sample_docs, trainer.sample_rng)
            text = DOC_SEPARATOR.join(docs)
        else:
            start, reset = trainer.schedule.peek(state.updates)
            h0 = tuple(np.zeros_like(s[:, :1]) if reset else s[:, :1] for s in state.carry)
            uniforms = trainer.sample_rng.random(cfg.sample_length)
            x0 = int(trainer.data[start])
            indices = trainer.engine.sample(state.params, h0, x0, cfg.sample_length, uniforms)
            text = trainer.corpus.vocab.decode(indices)
        epoch = trainer.schedule.epoch(state.updates)
        header = rundir.sample_header(state.updates, epoch, state.smooth_loss, len(text))
        rundir.append(trainer.out / rundir.SAMPLES, [f"{header}\n{text}\n\n"])
        trainer.emit("message", f"\n{header}\n{text}\n")


class Validation:
    """eval.csv and best-val.npz: validation (and training) nats per character every
    eval_every updates and at the end; the best model by validation loss is kept."""

    def __init__(self, trainer):
        from charwise.evaluate import train_runs

        self.val = trainer.val_corpus
        self.train = train_runs(trainer.train_corpus, trainer.config.seed)

    def intervals(self, trainer) -> tuple[int, ...]:
        return (trainer.config.eval_every,)

    def on_start(self, trainer) -> None:
        safeio.write_text(trainer.out / rundir.EVAL, rundir.EVAL_HEADER + "\n")

    def on_step(self, trainer, update: int) -> None:
        if update % trainer.config.eval_every == 0:
            self.evaluate(trainer)

    def on_final(self, trainer) -> None:
        if trainer.last_eval != trainer.state.updates:
            self.evaluate(trainer)

    def evaluate(self, trainer) -> None:
        from charwise.evaluate import bits, nats_per_char

        state = trainer.state
        val, _ = nats_per_char(trainer.engine, state.params, self.val.data, self.val.runs())
        train, _ = nats_per_char(trainer.engine, state.params, trainer.data, self.train)
        u = state.updates
        row = {
            "update": u,
            "epoch": trainer.schedule.epoch(u),
            "train_nats": train,
            "val_nats": val,
            "val_bits": bits(val),
            "wall_seconds": trainer.elapsed,
        }
        line = ",".join(repr(v) if isinstance(v, float) else str(v) for v in row.values())
        rundir.append(trainer.out / rundir.EVAL, [line + "\n"])
        trainer.last_eval = u
        if trainer.best_val is None or val < trainer.best_val["val_nats"]:
            trainer.best_val = {"update": u, "val_nats": val}
            trainer.save_model(rundir.BEST_VAL, state.params, u, val_nats=val)
            trainer.stale_evals = 0
        else:
            trainer.stale_evals += 1
        trainer.checkpoint_wanted = True  # best-val.npz never runs ahead of the checkpoint
        trainer.emit("evaluated", row)
        patience = trainer.config.patience
        if patience and trainer.stale_evals >= patience and not trainer.early_stopped:
            trainer.early_stopped = True  # the loop ends at this block's end
            trainer.emit("early_stop", patience)


class Checkpoints:
    """checkpoint.npz at the start, every checkpoint_every updates, checkpoint_seconds after the
    last one (at a block end), when a listener wants one, on Ctrl-C or SIGTERM, and at the end."""

    def intervals(self, trainer) -> tuple[int, ...]:
        every = trainer.config.checkpoint_every
        return (every,) if every else ()

    def on_start(self, trainer) -> None:
        trainer.save_checkpoint()

    def on_block_end(self, trainer) -> None:
        cfg, u = trainer.config, trainer.state.updates
        timed = cfg.checkpoint_seconds and (
            time.monotonic() - trainer.saved_at >= cfg.checkpoint_seconds
        )
        every = cfg.checkpoint_every and u % cfg.checkpoint_every == 0
        if timed or every or trainer.checkpoint_wanted or trainer.stop_signal:
            trainer.save_checkpoint()


class EventLog:
    """events.log: the run's history for the dashboard: start, resume (what changed), each
    checkpoint and validation, finish, interrupted (by which signal), diverged, end."""

    def __init__(self):
        self.resume_logged = False

    def on_start(self, trainer) -> None:
        self.log(trainer, "start", target=trainer.target, minutes=trainer.minutes)

    def on_begin(self, trainer, total: int | None) -> None:
        resume = trainer.resumes[-1] if trainer.resumes else None
        if resume and resume["update"] == trainer.state.updates and not self.resume_logged:
            self.resume_logged = True
            self.log(trainer, "resume", changed=resume["changed"], target=total)

    def on_checkpoint(self, trainer) -> None:
        self.log(trainer, "checkpoint")

    def on_evaluated(self, trainer, row: dict) -> None:
        self.log(trainer, "evaluated", val_bits=row["val_bits"])

    def on_finish(self, trainer) -> None:
        self.log(trainer, "finish")

    def on_early_stop(self, trainer, patience: int) -> None:
        self.log(trainer, "early-stop", patience=patience)

    def on_interrupted(self, trainer, signal_name: str) -> None:
        self.log(trainer, "interrupted", signal=signal_name)

    def on_diverged(self, trainer, update: int, reason: str) -> None:
        self.log(trainer, "diverged", at=update, reason=reason)

    def on_end(self, trainer) -> None:
        self.log(trainer, "end")

    @staticmethod
    def log(trainer, event: str, **facts) -> None:
        facts = {"update": trainer.state.updates, "pid": os.getpid(), **facts}
        rundir.log_event(trainer.out, event, **facts)


class LossFigure:
    """loss.png when the run's final models are written."""

    def on_finish(self, trainer) -> None:
        from charwise.figures import plot_run

        out, tau = trainer.out, trainer.config.seq_length
        plot_run(out, out / rundir.LOSS_PNG, trainer.schedule.per_epoch, tau=tau)


class Progress:
    """A progress bar on a terminal (updates, ETA, epoch, smooth loss, val bits/char, chars/s
    of training alone, within 80 columns); elsewhere a log line at a multiple of print_every,
    at most every 1% of the run (of its updates, or of its minutes) unless 30 s have passed."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.bar, self.val_bits = enabled, None, None
        self.logged = (0, 0.0)  # update and time of the last log line

    def intervals(self, trainer) -> tuple[int, ...]:
        return (trainer.config.print_every,)

    def on_begin(self, trainer, total: int | None) -> None:
        self.total, self.logged = total, (trainer.state.updates, time.monotonic())
        if self.enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=trainer.state.updates,
                unit="upd",
                dynamic_ncols=True,
                smoothing=0.1,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]",
            )

    def on_step(self, trainer, update: int) -> None:
        cfg = trainer.config
        if update % cfg.print_every:
            return
        rate = update * cfg.seq_length * cfg.batch / max(trainer.elapsed, 1e-9)
        epoch = trainer.schedule.epoch(update)
        smooth = trainer.state.smooth_loss
        if self.bar is not None:
            val = f" val {self.val_bits:.3f}b" if self.val_bits is not None else ""
            self.bar.set_postfix_str(f"ep {epoch} loss {smooth:.2f}{val} {rate:,.0f}c/s", False)
            self.bar.update(update - self.bar.n)
            return
        if self._due(trainer, update):
            facts = dict(epoch=epoch, smooth_loss=f"{smooth:.3f}", chars_per_s=f"{rate:,.0f}")
            if self.val_bits is not None:
                facts["val_bits"] = f"{self.val_bits:.3f}"
            print(f"update {update} " + " ".join(f"{k} {v}" for k, v in facts.items()))
            self.logged = (update, time.monotonic())

    def _due(self, trainer, update: int) -> bool:
        """A log line now: 1% of the run since the last one, or 30 s, or the last update."""
        last, when = self.logged
        now = time.monotonic()
        if now - when >= LOG_SECONDS or update == self.total:
            return True
        if self.total:
            return update - last >= LOG_SHARE * self.total
        minutes = trainer.minutes
        return bool(minutes) and now - when >= LOG_SHARE * 60 * minutes

    def on_evaluated(self, trainer, row: dict) -> None:
        self.val_bits = row["val_bits"]

    def on_early_stop(self, trainer, patience: int) -> None:
        self.on_message(
            trainer, f"stopping early: no lower validation loss in {patience} evaluations"
        )

    def on_message(self, trainer, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text)

    def on_end(self, trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def default_listeners(trainer, progress: bool = True) -> list:
    """The listeners of every run, in the order they hear each event."""
    listeners = [EventLog(), MetricsLog(), Progress(progress), Sampler()]
    if trainer.val_corpus is not None:
        listeners.append(Validation(trainer))
    return listeners + [Checkpoints(), LossFigure()]
