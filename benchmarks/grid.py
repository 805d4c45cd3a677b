"""The engines on the cases that matter, side by side, as one Markdown table (stdout or --out).

    python benchmarks/grid.py [CORPUS] [--repeats 3] [--out grid.md]

Rows: the exercise against the classic numpy loop (as `charwise bench`), then LSTM and GRU
models against PyTorch on the CPU (as `charwise bench --model ...`: reference, fast float64,
fast float32, torch float32 with one thread and with all), training, sampling (one stream,
one character at a time) and validation in characters per second, interleaved repetitions,
medians. The machine's float32 peak, measured (numpy's sgemm, 2048^3) and nominal (cores x
clock x float32 lanes of the widest vector x 2 flops x 2 FMA units), puts the large cases in
proportion; the machine line names the BLAS kernels that ran (OPENBLAS_CORETYPE changes them:
README, "Speed").
"""

from __future__ import annotations

import charwise  # noqa: F401  (first, as the command line: OpenBLAS's thread timeout, README)

# isort: split
import argparse
import os
import time

import numpy as np

from charwise import bench
from charwise.corpus import load_corpus
from charwise.engines.matvec import VECTOR_BYTES
from charwise.models import ModelSpec

LANES = VECTOR_BYTES // 4  # float32 lanes: 16 with AVX-512, 8 with AVX2

CASES = [  # family, layers, m, batch, seq length, optimizer
    ("lstm", 1, 128, 1, 25, "adam"),
    ("gru", 1, 128, 1, 25, "adam"),
    ("lstm", 1, 256, 32, 100, "adam"),
    ("lstm", 2, 512, 64, 100, "adam"),
]


def flops_per_char(spec: ModelSpec) -> float:
    """Training floating-point operations per character: each product by W (every layer), U
    (layers 2..L; layer 1 is a gather) and V, forward and twice backward."""
    G = spec.cell.GATES * spec.m
    macs = (2 * spec.layers - 1) * G * spec.m + spec.K * spec.m
    return 2.0 * 3 * macs


def peaks() -> tuple[float, float]:
    """(nominal, measured) float32 GFLOP/s of this machine."""
    mhz = 0.0
    with open("/proc/cpuinfo") as f:
        mhz = max(float(line.split(":")[1]) for line in f if line.startswith("cpu MHz"))
    nominal = (os.cpu_count() or 1) * mhz / 1e3 * LANES * 2 * 2
    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    a @ a
    t0, n = time.perf_counter(), 5
    for _ in range(n):
        a @ a
    return nominal, n * 2 * 2048**3 / (time.perf_counter() - t0) / 1e9


def exercise(corpus, repeats: int) -> list[str]:
    rows, notes = bench.run(corpus, repeats=repeats)
    base = np.median(rows[0].train_rates)
    lines = [
        "| the exercise (rnn m 100, batch 1, AdaGrad, seq 25) | train chars/s | vs classic "
        "| sample chars/s |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        train = np.median(row.train_rates)
        lines.append(
            f"| {row.label} | {train * 25:,.0f} | {train / base:.1f}x "
            f"| {np.median(row.sample_rates):,.0f} |"
        )
    return lines + [f"\n{n}" for n in notes]


def models(corpus, repeats: int, measured_peak: float) -> list[str]:
    lines = [
        "| model | engine | train chars/s | sample chars/s | eval chars/s | train GFLOP/s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    ratios = []
    for family, layers, m, batch, tau, optimizer in CASES:
        spec = ModelSpec(family, len(corpus.vocab), m, layers)
        rows, _ = bench.run_model(corpus, spec, optimizer, batch, tau, "float32", repeats)
        name = f"{spec.describe()}, batch {batch}, seq {tau}, {optimizer}"
        med = {row.label: {k: float(np.median(v)) for k, v in row.rates.items()} for row in rows}
        for label, r in med.items():
            gflops = r["train"] * flops_per_char(spec) / 1e9
            lines.append(
                f"| {name} | {label} | {r['train']:,.0f} | {r['sample']:,.0f} "
                f"| {r['eval']:,.0f} | {gflops:.0f} |"
            )
        torch = [r for label, r in med.items() if label.startswith("torch")]
        if torch:
            fast = med["fast float32"]
            best = {k: max(r[k] for r in torch) for k in ("train", "sample", "eval")}
            ratios.append(
                f"| {name} | {fast['train'] / best['train']:.2f}x "
                f"| {fast['sample'] / best['sample']:.1f}x | {fast['eval'] / best['eval']:.1f}x "
                f"| {fast['train'] * flops_per_char(spec) / 1e9 / measured_peak:.0%} |"
            )
    if ratios:
        lines += [
            "",
            "| model | fast float32 / best torch: train | sample | eval "
            "| fast float32 train / measured sgemm peak |",
            "|---|---:|---:|---:|---:|",
            *ratios,
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", nargs="?", default=None, help="default: the built-in corpus")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="write the Markdown here too")
    args = parser.parse_args()
    corpus = load_corpus(args.corpus) if args.corpus else load_corpus()
    nominal, measured = peaks()
    try:
        import torch

        versions = f"torch {torch.__version__} ({torch.get_num_threads()} threads by default)"
    except ImportError:
        versions = "torch not installed: its rows are left out"
    text = "\n".join(
        [
            f"corpus {corpus.name} ({len(corpus):,} characters, K = {len(corpus.vocab)}); "
            f"median of {args.repeats} interleaved repetitions",
            f"machine: {bench.machine()}; {versions}",
            f"float32 peak: measured {measured:.0f} GFLOP/s (numpy's sgemm 2048^3, with the "
            f"kernels named above); nominal {nominal:.0f} GFLOP/s at the clock /proc/cpuinfo "
            f"reports (cores x clock x {LANES} lanes x 2 flops x 2 FMA units), which cores "
            "that run faster under load exceed",
            "",
            *exercise(corpus, args.repeats),
            "",
            *models(corpus, args.repeats, measured),
        ]
    )
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
