"""Peak resident memory of `charwise info` and a short training run on big generated files.

Writes text files of the given sizes (the Python documentation text repeated) into a temporary
folder, runs each command as a child process and reads its peak RSS from os.wait4, then deletes
the files. `info` runs twice: cold (encodes the file into the mapped cache) and warm (reuses it).

    PYTHONPATH=src python benchmarks/memory.py --sizes 10 100 500 [--lines]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from charwise.corpus import python_docs_text

TRAIN_UPDATES = 2000  # updates of the short training run (reference engine)


def write_file(path: Path, megabytes: int) -> None:
    """megabytes x 2**20 bytes of repeated documentation text (K = the docs' vocabulary)."""
    chunk = python_docs_text().encode()
    left = megabytes * 2**20
    with open(path, "wb") as f:
        while left > 0:
            f.write(chunk[:left])
            left -= len(chunk)


def peak_rss(cmd: list[str], env: dict) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one child process; exits if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 500], help="MiB")
    parser.add_argument("--dir", default=None, help="where to write the files [default: /tmp]")
    parser.add_argument("--lines", action="store_true", help="read each line as a document")
    args = parser.parse_args()
    src = str(Path(__file__).resolve().parents[1] / "src")
    charwise = [sys.executable, "-m", "charwise"]
    print(f"{'file':>8} {'command':<12} {'peak RSS MiB':>13} {'seconds':>8}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        env = {**os.environ, "PYTHONPATH": src, "XDG_CACHE_HOME": f"{tmp}/cache"}
        for size in args.sizes:
            path = Path(tmp) / f"big{size}.txt"
            write_file(path, size)
            corpus = [str(path)] + (["--lines"] if args.lines else [])
            runs = {
                "info cold": charwise + ["info", *corpus],
                "info warm": charwise + ["info", *corpus],
                "train": charwise
                + ["train", *corpus, "--updates", str(TRAIN_UPDATES), "--engine", "reference"]
                + ["--no-progress", "--print-every", "1000", "--out", f"{tmp}/run{size}"],
            }
            for name, cmd in runs.items():
                rss, seconds = peak_rss(cmd, env)
                print(f"{size:>5} MiB {name:<12} {rss:>13,.0f} {seconds:>8.1f}", flush=True)
            path.unlink()


if __name__ == "__main__":
    main()
