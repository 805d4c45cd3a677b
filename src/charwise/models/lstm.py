"""The LSTM cell (SPEC.md; gate order i, f, g, o, as PyTorch):

    z_t = W h_{t-1} + U u_t + b
    i = σ(z[0:m])   f = σ(z[m:2m])   g = tanh(z[2m:3m])   o = σ(z[3m:4m])
    c_t = f ⊙ c_{t-1} + i ⊙ g         h_t = o ⊙ tanh(c_t)

Shapes: T steps, B streams, m units; Ux holds U u_t for every step (T, B, 4m).
"""

from __future__ import annotations

import numpy as np

from charwise.models import sigmoid

GATES = 4
STATE = ("h", "c")
EXTRA = ()


def drawer(rng: np.random.Generator, m: int, sig: float):
    """The initial draw of U, W and V: uniform on (-1/sqrt(m), 1/sqrt(m)), PyTorch's range."""
    s = 1.0 / np.sqrt(m)
    return lambda shape: rng.uniform(-s, s, shape)


def init_biases(b: np.ndarray, m: int) -> None:
    """The forget gate's bias starts at 1, the others at 0."""
    b[m : 2 * m] = 1.0


def forward(Ux, W, b, extra, state0):
    """States (H, C) of every step (T, B, m) from state0 = (h0, c0), and the backward cache."""
    h, c = state0
    T, B, m4 = Ux.shape
    m = m4 // 4
    H, C = np.empty((T, B, m)), np.empty((T, B, m))
    gates = np.empty((T, B, m4))  # i, f, g, o after their nonlinearity
    for t in range(T):
        z = h @ W.T + Ux[t] + b
        gates[t, :, : 2 * m] = sigmoid(z[:, : 2 * m])
        gates[t, :, 2 * m : 3 * m] = np.tanh(z[:, 2 * m : 3 * m])
        gates[t, :, 3 * m :] = sigmoid(z[:, 3 * m :])
        i, f, g, o = np.split(gates[t], 4, axis=1)
        c = f * c + i * g
        h = o * np.tanh(c)
        H[t], C[t] = h, c
    return (H, C), (H, C, gates, state0)


def backward(dH, cache, W, extra):
    """Gradients from dH (T, B, m), the loss's gradient w.r.t. each h_t from above.

    Returns dL/d(U u_t) for every step (T, B, 4m), dW, db and the extra biases' gradients.
    """
    H, C, gates, (h0, c0) = cache
    T, B, m = H.shape
    dZ = np.empty(gates.shape)  # dL/dz_t
    dh_next, dc_next = np.zeros((B, m)), np.zeros((B, m))
    for t in reversed(range(T)):
        i, f, g, o = np.split(gates[t], 4, axis=1)
        c_prev = C[t - 1] if t else c0
        tc = np.tanh(C[t])
        dh = dH[t] + dh_next
        dc = dc_next + dh * o * (1.0 - tc**2)
        dZ[t, :, :m] = dc * g * i * (1.0 - i)
        dZ[t, :, m : 2 * m] = dc * c_prev * f * (1.0 - f)
        dZ[t, :, 2 * m : 3 * m] = dc * i * (1.0 - g**2)
        dZ[t, :, 3 * m :] = dh * tc * o * (1.0 - o)
        dc_next = dc * f
        dh_next = dZ[t] @ W
    H_prev = np.concatenate([h0[None], H])[:T].reshape(T * B, m)
    flat = dZ.reshape(T * B, 4 * m)
    return dZ, flat.T @ H_prev, flat.sum(axis=0), {}
