"""Loss figures for run directories."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_metrics(run_dir: str | Path) -> dict[str, np.ndarray]:
    """Columns of RUN_DIR/metrics.csv: update, epoch, loss, smooth_loss."""
    path = Path(run_dir) / "metrics.csv"
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2).reshape(-1, 4)  # 0 rows too
    return {name: table[:, i] for i, name in enumerate(["update", "epoch", "loss", "smooth_loss"])}


def plot_run(run_dir: str | Path, out: str | Path, per_epoch: int | None = None) -> None:
    """Loss and smooth loss against update, with epoch boundaries marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = read_metrics(run_dir)
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    ax.plot(cols["update"], cols["loss"], lw=0.4, alpha=0.35, color="tab:blue", label="loss")
    ax.plot(cols["update"], cols["smooth_loss"], lw=1.6, color="tab:red", label="smooth loss")
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
    ax.set_title(f"Training loss: {Path(run_dir).name}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
