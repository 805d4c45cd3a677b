"""The GRU cell (SPEC.md; gate order r, z, n, PyTorch's equations):

    r = σ(U_r u + b_r + W_r h)        z = σ(U_z u + b_z + W_z h)
    n = tanh(U_n u + b_n + r ⊙ (W_n h + b_hn))
    h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}

Shapes: T steps, B streams, m units; Ux holds U u_t for every step (T, B, 3m).
"""

from __future__ import annotations

import numpy as np

from charwise.models import sigmoid

GATES = 3
STATE = ("h",)
EXTRA = ("bhn",)  # b_hn (m): the bias inside r ⊙ (W_n h + b_hn)


def drawer(rng: np.random.Generator, m: int, sig: float):
    """The initial draw of U, W and V: uniform on (-1/sqrt(m), 1/sqrt(m)), PyTorch's range."""
    s = 1.0 / np.sqrt(m)
    return lambda shape: rng.uniform(-s, s, shape)


def init_biases(b: np.ndarray, m: int) -> None:
    """Biases start at zero."""


def forward(Ux, W, b, extra, state0):
    """States (H,) of every step (T, B, m) from state0 = (h0,), and the backward cache."""
    (h,) = state0
    T, B, m3 = Ux.shape
    m = m3 // 3
    bhn = extra["bhn"]
    H = np.empty((T, B, m))
    gates = np.empty((T, B, m3))  # r, z, n after their nonlinearity
    Hn = np.empty((T, B, m))  # W_n h + b_hn
    for t in range(T):
        x = Ux[t] + b  # U u + b for r, z, n
        wh = h @ W.T  # W h for r, z, n
        gates[t, :, : 2 * m] = sigmoid(x[:, : 2 * m] + wh[:, : 2 * m])
        Hn[t] = wh[:, 2 * m :] + bhn
        r, z = gates[t, :, :m], gates[t, :, m : 2 * m]
        gates[t, :, 2 * m :] = np.tanh(x[:, 2 * m :] + r * Hn[t])
        h = (1.0 - z) * gates[t, :, 2 * m :] + z * h
        H[t] = h
    return (H,), (H, gates, Hn, state0[0])


def backward(dH, cache, W, extra):
    """Gradients from dH (T, B, m), the loss's gradient w.r.t. each h_t from above.

    Returns dL/d(U u_t) for every step (T, B, 3m), dW, db and the extra biases' gradients.
    """
    H, gates, Hn, h0 = cache
    T, B, m = H.shape
    dX = np.empty(gates.shape)  # dL/d(U u + b): the pre-activations' input parts
    dWh = np.empty(gates.shape)  # dL/d(W h): the same, but r ⊙ (.) for n
    dh_next = np.zeros((B, m))
    for t in reversed(range(T)):
        r, z, n = np.split(gates[t], 3, axis=1)
        h_prev = H[t - 1] if t else h0
        dh = dH[t] + dh_next
        dn = dh * (1.0 - z) * (1.0 - n**2)
        dX[t, :, :m] = dn * Hn[t] * r * (1.0 - r)
        dX[t, :, m : 2 * m] = dh * (h_prev - n) * z * (1.0 - z)
        dX[t, :, 2 * m :] = dn
        dWh[t, :, : 2 * m] = dX[t, :, : 2 * m]
        dWh[t, :, 2 * m :] = dn * r
        dh_next = dh * z + dWh[t] @ W
    H_prev = np.concatenate([h0[None], H])[:T].reshape(T * B, m)
    flat_x, flat_h = dX.reshape(T * B, 3 * m), dWh.reshape(T * B, 3 * m)
    grads_extra = {"bhn": flat_h[:, 2 * m :].sum(axis=0)}
    return dX, flat_h.T @ H_prev, flat_x.sum(axis=0), grads_extra
