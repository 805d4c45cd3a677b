"""Gradient check: analytic gradients against centered differences (SPEC.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from charwise.engines import reference
from charwise.params import RNNParams

THRESHOLD = 1e-6  # a correct implementation gives max relative errors below this


@dataclass
class GradRow:
    name: str  # parameter name: b, c, U, W or V
    size: int  # number of entries checked
    max_abs: float  # max |g_analytic - g_numeric|
    max_rel: float  # max |g_a - g_n| / max(1e-12, |g_a| + |g_n|)


def excess_losses(params: RNNParams, x, y, h0) -> np.ndarray:
    """Per-step losses minus ln K: L_t - ln K = max(o) - o[y] + log1p(mean(expm1(o - max(o)))).

    The same function as the loss, minus a constant that cancels in a difference. Written
    this way the float64 rounding error no longer scales with ln K and the sum over steps,
    so the centered difference resolves gradient entries ~100x smaller than with L itself.
    """
    _, O = reference.forward(params, x, h0)
    top = O.max(axis=1)
    spread = np.log1p(np.expm1(O - top[:, None]).mean(axis=1))
    return top - O[np.arange(len(y)), y] + spread


def numerical_grads(params: RNNParams, x, y, h0, h: float = 1e-4) -> RNNParams:
    """(f(theta + h) - f(theta - h)) / 2h for every entry of every parameter, in float64."""
    grads = RNNParams.zeros_like(params)
    for theta, g in zip(params.arrays(), grads.arrays(), strict=True):
        flat, gflat = theta.reshape(-1), g.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + h
            up = excess_losses(params, x, y, h0)
            flat[i] = old - h
            down = excess_losses(params, x, y, h0)
            flat[i] = old
            gflat[i] = math.fsum(up - down) / (2 * h)
    return grads


def gradcheck(params: RNNParams, x, y, h0=None, h: float = 1e-4) -> list[GradRow]:
    """One row per parameter comparing reference.loss_and_grads with numerical_grads."""
    params = params.astype(np.float64)
    h0 = np.zeros(params.m) if h0 is None else np.asarray(h0, dtype=np.float64)
    _, analytic, _ = reference.loss_and_grads(params, x, y, h0)
    numeric = numerical_grads(params, x, y, h0, h)
    rows = []
    for (name, ga), gn in zip(analytic.items(), numeric.arrays(), strict=True):
        diff = np.abs(ga - gn)
        rel = diff / np.maximum(1e-12, np.abs(ga) + np.abs(gn))
        rows.append(GradRow(name, ga.size, float(diff.max()), float(rel.max())))
    return rows


def format_table(rows: list[GradRow]) -> str:
    lines = [f"{'param':<6}{'entries':>8}{'max abs diff':>15}{'max rel error':>15}"]
    lines += [f"{r.name:<6}{r.size:>8}{r.max_abs:>15.3e}{r.max_rel:>15.3e}" for r in rows]
    return "\n".join(lines)


def gradcheck_corpus(corpus, m=5, h=1e-4, seq_length=25, sig=0.01, seed=1) -> list[GradRow]:
    """The check of SPEC.md: a fresh m-unit network on the first seq_length -> +1 characters."""
    from charwise.train import Schedule

    Schedule(len(corpus), seq_length)  # refuses a corpus shorter than one sequence
    params = RNNParams.init(m, len(corpus.vocab), sig=sig, seed=seed)
    data = corpus.data[: seq_length + 1].astype(np.int64)  # not a copy of a big corpus
    return gradcheck(params, data[:seq_length], data[1 : seq_length + 1], None, h)
