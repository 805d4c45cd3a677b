"""AdaGrad with element-wise clipping, and the training state it updates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from charwise.params import RNNParams

ETA = 0.1  # learning rate
EPS = 1e-8  # inside the square root: theta -= eta * g / sqrt(G + eps)
CLIP = 5.0  # every gradient entry is clipped to [-CLIP, CLIP] before the step


def adagrad_step(params: RNNParams, grads: RNNParams, G: RNNParams, eta=ETA, eps=EPS, clip=CLIP):
    """Clip grads in place, then G += g^2 and theta -= eta * g / sqrt(G + eps), in place."""
    for p, g, acc in zip(params.arrays(), grads.arrays(), G.arrays(), strict=True):
        np.clip(g, -clip, clip, out=g)
        acc += g * g
        p -= eta * g / np.sqrt(acc + eps)


@dataclass
class TrainState:
    """Everything that changes during training (SPEC.md: training loop and best model)."""

    params: RNNParams
    G: RNNParams  # AdaGrad accumulators, start at 0
    h_prev: np.ndarray  # hidden state carried into the next chunk
    updates: int = 0  # updates done so far
    smooth_loss: float = float("nan")  # undefined until the first update
    best: RNNParams | None = None  # parameters that produced the lowest smooth loss
    best_h: np.ndarray | None = None  # the h_prev those parameters started their chunk with
    best_x0: int = 0  # first input character of that chunk
    best_update: int = 0
    best_smooth: float = float("inf")

    @classmethod
    def fresh(cls, params: RNNParams) -> TrainState:
        return cls(
            params=params,
            G=RNNParams.zeros_like(params),
            h_prev=np.zeros(params.m, dtype=params.dtype),
            best=params.copy(),
            best_h=np.zeros(params.m, dtype=params.dtype),
        )
