"""The vanilla RNN cell of the exercise (SPEC.md):  a_t = W h_{t-1} + U u_t + b,  h_t = tanh(a_t).

Shapes: T steps, B streams, m units; Ux holds U u_t for every step (T, B, m).
"""

from __future__ import annotations

import numpy as np

GATES = 1  # rows of U and W per hidden unit
STATE = ("h",)  # what a layer carries from step to step
EXTRA = ()  # per-layer arrays beyond U, W, b


def drawer(rng: np.random.Generator, m: int, sig: float):
    """The initial draw of U, W and V: sig times standard normal."""
    return lambda shape: sig * rng.standard_normal(shape)


def init_biases(b: np.ndarray, m: int) -> None:
    """Biases start at zero."""


def forward(Ux, W, b, extra, state0):
    """States (H,) of every step (T, B, m) from state0 = (h0,) (B, m), and the backward cache."""
    (h,) = state0
    H = np.empty(Ux.shape)
    for t in range(len(Ux)):
        h = np.tanh(h @ W.T + Ux[t] + b)  # W h_{t-1} + U u_t + b, summed in that order
        H[t] = h
    return (H,), (H, state0[0])


def backward(dH, cache, W, extra):
    """Gradients from dH (T, B, m), the loss's gradient w.r.t. each h_t from above.

    Returns dL/d(U u_t) for every step (T, B, m), dW, db and the extra biases' gradients.
    """
    H, h0 = cache
    dA = np.empty(H.shape)  # dL/da_t
    dnext = np.zeros(h0.shape)  # W^T dL/da_{t+1}: what h_t receives from step t+1
    for t in reversed(range(len(H))):
        dA[t] = (dH[t] + dnext) * (1.0 - H[t] ** 2)
        dnext = dA[t] @ W
    T, B, m = H.shape
    H_prev = np.concatenate([h0[None], H])[:T].reshape(T * B, m)
    flat = dA.reshape(T * B, m)
    return dA, flat.T @ H_prev, flat.sum(axis=0), {}
