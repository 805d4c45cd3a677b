"""Speed per model family: training and evaluation characters per second of an engine.

    python benchmarks/families.py [--engine reference|fast|torch] [--dtype float64|float32]
                                  [--m 256] [--batch 32] [--seq-length 100] [--repeats 3]

Every family (and a 2-layer lstm) trains a few Adam updates on random characters (K = 65),
interleaved over the repeats, and reads 20,000 characters for validation; the table shows
medians.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from charwise.engines import get_engine
from charwise.models import ModelSpec
from charwise.optim import Adam
from charwise.params import Params
from charwise.state import TrainState

MODELS = [("rnn", 1), ("gru", 1), ("lstm", 1), ("lstm", 2)]
K = 65


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-length", type=int, default=100)
    parser.add_argument("--updates", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engine", default="reference", choices=["reference", "fast", "torch"])
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    engine = get_engine(args.engine)
    if hasattr(engine, "use_device"):
        engine.use_device(args.device)
    B, T, n = args.batch, args.seq_length, args.updates
    data = np.random.default_rng(0).integers(0, K, 200_000).astype(np.uint8)
    runs = {}
    for family, layers in MODELS:
        params = Params.init(ModelSpec(family, K, args.m, layers), seed=1, dtype=args.dtype)
        if hasattr(engine, "warm_up"):  # compiled before any timing
            engine.warm_up(args.dtype, params.spec)
        runs[(family, layers)] = (params, TrainState.fresh(params, ("m", "v"), B), [], [])
    optimizer, rng = Adam(2e-3), np.random.default_rng(1)
    for _ in range(args.repeats):  # interleaved: a busy machine slows every model alike
        for params, state, train, evaluate in runs.values():
            starts = rng.integers(0, len(data) - T - 1, (n, B))
            lengths, resets = np.full((n, B), T), np.zeros((n, B), bool)
            t0 = time.perf_counter()
            engine.run_block(state, optimizer, data, starts, lengths, resets, np.empty(n))
            train.append(n * B * T / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            _, count = engine.evaluate(params, data[:20_000])
            evaluate.append(count / (time.perf_counter() - t0))
    where = f" on {engine.DEVICE}" if hasattr(engine, "DEVICE") else ""
    print(
        f"{args.engine} engine{where}, {args.dtype}, m = {args.m}, batch {B}, seq length {T}, "
        f"Adam, K = {K}"
    )
    print(f"{'model':16} {'train chars/s':>14} {'eval chars/s':>13}")
    for (family, layers), (_, _, train, evaluate) in runs.items():
        name = f"{layers}-layer {family}" if layers > 1 else family
        print(f"{name:16} {np.median(train):>14,.0f} {np.median(evaluate):>13,.0f}")


if __name__ == "__main__":
    main()
