"""Wall-time cost of checkpointing: the same training command with different checkpoint intervals.

    PYTHONPATH=$PWD/src python benchmarks/checkpoint_overhead.py [--updates 20000] [--repeats 2]

Runs `python -m charwise train --updates N --engine reference --no-progress --print-every 10000`
on the built-in corpus with checkpoints off (only the first and the last), at the default
interval (60 s), at every block end (blocks are at most train.BLOCK_MAX updates) and every
100 updates; prints the wall time of each (best of the repeats), then the time of one
checkpoint write (in process, m = 100) from which the overhead of any interval follows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {  # name -> extra options
    "off (start and end only)": ["--checkpoint-seconds", "0"],
    "default (every 60 s)": [],
    "every block end": ["--checkpoint-seconds", "1e-9"],
    "every 100 updates": ["--checkpoint-seconds", "0", "--checkpoint-every", "100"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--engine", default="reference")
    args = parser.parse_args()
    base = [sys.executable, "-m", "charwise", "train", "--updates", str(args.updates)]
    base += ["--engine", args.engine, "--no-progress", "--print-every", "10000"]
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    work = Path(tempfile.mkdtemp(prefix="ckbench-"))
    size = 0
    for _ in range(args.repeats):
        for name, extra in VARIANTS.items():  # interleaved, so load drifts hit all alike
            out = work / "run"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            subprocess.run([*base, "--out", str(out), *extra], check=True, env=os.environ,
                           stdout=subprocess.DEVNULL)  # fmt: skip
            times[name].append(time.perf_counter() - t0)
            size = (out / "checkpoint.npz").stat().st_size
    shutil.rmtree(work)
    off = min(times["off (start and end only)"])
    print(f"{args.updates} updates, engine {args.engine}, checkpoint.npz {size / 1024:.0f} KiB")
    print(f"{'checkpoints':28s} {'wall s (best)':>14s} {'all runs':>22s} {'overhead':>9s}")
    for name, ts in times.items():
        runs = " ".join(f"{t:.1f}" for t in ts)
        print(f"{name:28s} {min(ts):14.2f} {runs:>22s} {100 * (min(ts) / off - 1):8.1f}%")
    save_s = time_one_save()
    rate = args.updates / off
    print(f"one checkpoint write (fsync included): {1000 * save_s:.1f} ms (median of 30)")
    for every in (100, 1000):
        print(
            f"  every {every} updates at {rate:.0f} updates/s: {100 * save_s * rate / every:.2f}%"
        )
    print(f"  every 60 s (the default): {100 * save_s / 60:.3f}%")


def time_one_save() -> float:
    """Median wall time of Trainer.save_checkpoint on the built-in corpus with m = 100."""
    from charwise.corpus import load_corpus
    from charwise.train import TrainConfig, Trainer

    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(load_corpus(), TrainConfig(engine="reference"), out)
        trainer.run(10, progress=False)
        times = []
        for _ in range(30):
            t0 = time.perf_counter()
            trainer.save_checkpoint()
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


if __name__ == "__main__":
    main()
