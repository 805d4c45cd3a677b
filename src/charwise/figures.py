"""Figures of run directories: the loss curve of a run, the overfit check, runs compared."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from charwise import safeio
from charwise.config import MAY_CHANGE
from charwise.errors import CharwiseError
from charwise.rundir import read_eval, read_metrics

# Settings with no effect on the loss curve: those a resume may change, but eta and engine.
UNPLOTTED = tuple(name for name in MAY_CHANGE if name not in ("eta", "engine"))


def save(fig, out: str | Path) -> None:
    """The figure in the format of out's extension (PNG without one), written atomically."""
    out = Path(out)
    if out.is_dir():
        raise CharwiseError(f"{out} is a folder; give a file name such as {out / 'loss.png'}")
    fmt = out.suffix[1:].lower() or "png"
    kinds = fig.canvas.get_supported_filetypes()
    if fmt not in kinds:
        raise CharwiseError(
            f"cannot write a figure as {out.name}: use one of .{', .'.join(sorted(kinds))}"
        )
    if not out.parent.is_dir():
        raise CharwiseError(f"folder {out.parent} does not exist; create it or pick another --out")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt)
    safeio.write_atomic(out, lambda f: f.write(buf.getvalue()))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(
    run_dir: str | Path,
    out: str | Path,
    per_epoch: int | None = None,
    title: str | None = None,
    tau: int | None = None,
) -> None:
    """Loss and smooth loss against update, with epoch boundaries marked, and (given tau) the
    validation loss of eval.csv on the same scale: nats per character times tau."""
    plt = _pyplot()
    cols = read_metrics(run_dir)
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    ax.plot(cols["update"], cols["loss"], lw=0.4, alpha=0.35, color="tab:blue", label="loss")
    ax.plot(cols["update"], cols["smooth_loss"], lw=1.6, color="tab:red", label="smooth loss")
    evals = read_eval(run_dir) if tau else None
    if evals is not None and len(evals["update"]):
        ax.plot(
            evals["update"],
            evals["val_nats"] * tau,
            "o-",
            ms=3,
            lw=1,
            color="tab:green",
            label=f"validation ({tau} x nats/char)",
        )
    if per_epoch and len(cols["update"]):
        for k, u in enumerate(np.arange(per_epoch, cols["update"][-1], per_epoch), start=2):
            ax.axvline(u, color="gray", ls=":", lw=0.8)
            ax.text(
                u,
                0.98,
                f" epoch {k}",
                transform=ax.get_xaxis_transform(),
                va="top",
                fontsize=8,
                color="gray",
            )
    ax.set_xlabel("update")
    ax.set_ylabel("loss per sequence (sum over characters)")
    ax.set_title(title or f"Training loss: {Path(run_dir).name}", loc="left")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", bbox_to_anchor=(1, 1), ncol=3, frameon=False)  # clear of data
    fig.tight_layout()
    save(fig, out)
    plt.close(fig)


def plot_overfit(
    losses: list[float], per_pass: int, target: float, out: str | Path, chars: int
) -> None:
    """The overfit check's loss per chunk and per pass (log scale), and its target."""
    plt = _pyplot()
    losses = np.asarray(losses)
    passes = len(losses) // per_pass
    mean = losses[: passes * per_pass].reshape(passes, per_pass).mean(axis=1)
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=120)
    updates = np.arange(1, len(losses) + 1)
    ax.semilogy(updates, losses, lw=0.4, alpha=0.35, color="tab:blue", label="loss per chunk")
    ends = per_pass * np.arange(1, passes + 1)
    ax.semilogy(ends, mean, lw=1.4, color="tab:blue", label="mean over a pass")
    ax.axhline(target, color="tab:red", ls="--", lw=1, label=f"target {target:g}")
    ax.set_xlabel("update")
    ax.set_ylabel("loss per sequence")
    ax.set_title(f"Overfit check: first {chars} characters", loc="left")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", bbox_to_anchor=(1, 1), ncol=3, frameon=False)
    fig.tight_layout()
    save(fig, out)
    plt.close(fig)


def plot_compare(run_dirs: list[str | Path], out: str | Path) -> list[str]:
    """Overlay the smooth-loss curves of several runs, each labelled by the settings that differ.

    Losses are divided by the sequence length when the runs' sequence lengths differ (SPEC.md).
    Returns the labels.
    """
    from charwise import checkpoint

    settings = []
    for run in run_dirs:  # a run stopped before its end has no final.npz yet
        final = Path(run) / "final.npz"
        _, meta = checkpoint.load(final if final.exists() else Path(run) / "checkpoint.npz")
        curve = {k: v for k, v in meta["config"].items() if k not in UNPLOTTED}
        settings.append({"corpus": meta["corpus"]["name"], **curve})
    keys = [k for k in settings[0] if len({json.dumps(s.get(k)) for s in settings}) > 1]
    labels = [
        ", ".join(f"{k}={s.get(k)}" for k in keys) or Path(r).name
        for r, s in zip(run_dirs, settings, strict=True)
    ]
    if len(set(labels)) < len(labels):  # same settings: the folder names tell the runs apart
        labels = [
            f"{Path(r).name}: {label}" if keys else label
            for r, label in zip(run_dirs, labels, strict=True)
        ]
    per_char = "seq_length" in keys
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    for run, s, label in zip(run_dirs, settings, labels, strict=True):
        cols = read_metrics(run)
        scale = s["seq_length"] if per_char else 1
        ax.plot(cols["update"], cols["smooth_loss"] / scale, lw=1.4, label=label)
    ax.set_xlabel("update")
    ax.set_ylabel("smooth loss per character" if per_char else "smooth loss per sequence")
    ax.set_title("Smooth loss" + (f" ({', '.join(keys)} varied)" if keys else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    save(fig, out)
    plt.close(fig)
    return labels
