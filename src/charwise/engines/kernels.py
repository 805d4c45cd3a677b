"""numba building blocks: the time loops of every cell (models/*.py) compiled, for the fast
engine's models beyond the exercise. Each cell object here has the interface of its model
module (forward, backward, GATES, STATE, EXTRA) and the same arithmetic in the same order; the
products over all steps (dW, the biases' sums) stay numpy's, as in the model modules.

Compiled without fastmath: results equal the reference's to the last bits but for the order
of BLAS's sums in the per-step products (np.dot here, matmul there).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numba  # through engines.fast, which chose numba's cache folder first
import numpy as np

jit = numba.njit(cache=True, nogil=True, error_model="numpy")


@jit
def _sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


@jit
def _rnn_forward(Ux, W, b, h0):
    T, B, m = Ux.shape
    H = np.empty((T, B, m), Ux.dtype)
    hT = np.ascontiguousarray(h0.T)  # (m, B): W h for every stream is one product, W as is
    for t in range(T):
        a = np.dot(W, hT)
        for k in range(B):
            for j in range(m):
                hT[j, k] = math.tanh(a[j, k] + Ux[t, k, j] + b[j])
        H[t] = hT.T
    return H


@jit
def _rnn_backward(dH, H, W):
    T, B, m = H.shape
    dA = np.empty((T, B, m), H.dtype)
    dnext = np.zeros((B, m), H.dtype)
    for t in range(T - 1, -1, -1):
        for k in range(B):
            for j in range(m):
                dA[t, k, j] = (dH[t, k, j] + dnext[k, j]) * (1.0 - H[t, k, j] ** 2)
        dnext = np.dot(dA[t], W)
    return dA


@jit
def _lstm_forward(Ux, W, b, h0, c0):
    T, B, m4 = Ux.shape
    m = m4 // 4
    H = np.empty((T, B, m), Ux.dtype)
    C = np.empty((T, B, m), Ux.dtype)
    gates = np.empty((T, B, m4), Ux.dtype)
    h, c = h0.copy(), c0.copy()
    hT = np.ascontiguousarray(h0.T)
    for t in range(T):
        z = np.dot(W, hT)
        for k in range(B):
            for j in range(m4):
                v = z[j, k] + Ux[t, k, j] + b[j]
                gates[t, k, j] = math.tanh(v) if 2 * m <= j < 3 * m else _sigmoid(v)
            for j in range(m):
                i, f = gates[t, k, j], gates[t, k, m + j]
                g, o = gates[t, k, 2 * m + j], gates[t, k, 3 * m + j]
                c[k, j] = f * c[k, j] + i * g
                h[k, j] = o * math.tanh(c[k, j])
                hT[j, k] = h[k, j]
        H[t], C[t] = h, c
    return H, C, gates


@jit
def _lstm_backward(dH, H, C, gates, c0, W):
    T, B, m = H.shape
    dZ = np.empty((T, B, 4 * m), H.dtype)
    dh_next = np.zeros((B, m), H.dtype)
    dc_next = np.zeros((B, m), H.dtype)
    for t in range(T - 1, -1, -1):
        for k in range(B):
            for j in range(m):
                i, f = gates[t, k, j], gates[t, k, m + j]
                g, o = gates[t, k, 2 * m + j], gates[t, k, 3 * m + j]
                c_prev = C[t - 1, k, j] if t else c0[k, j]
                tc = math.tanh(C[t, k, j])
                dh = dH[t, k, j] + dh_next[k, j]
                dc = dc_next[k, j] + dh * o * (1.0 - tc**2)
                dZ[t, k, j] = dc * g * i * (1.0 - i)
                dZ[t, k, m + j] = dc * c_prev * f * (1.0 - f)
                dZ[t, k, 2 * m + j] = dc * i * (1.0 - g**2)
                dZ[t, k, 3 * m + j] = dh * tc * o * (1.0 - o)
                dc_next[k, j] = dc * f
        dh_next = np.dot(dZ[t], W)
    return dZ


@jit
def _gru_forward(Ux, W, b, bhn, h0):
    T, B, m3 = Ux.shape
    m = m3 // 3
    H = np.empty((T, B, m), Ux.dtype)
    gates = np.empty((T, B, m3), Ux.dtype)
    Hn = np.empty((T, B, m), Ux.dtype)
    h = h0.copy()
    hT = np.ascontiguousarray(h0.T)
    for t in range(T):
        wh = np.dot(W, hT)
        for k in range(B):
            for j in range(2 * m):
                gates[t, k, j] = _sigmoid(Ux[t, k, j] + b[j] + wh[j, k])
            for j in range(m):
                Hn[t, k, j] = wh[2 * m + j, k] + bhn[j]
                r, z = gates[t, k, j], gates[t, k, m + j]
                n = math.tanh(Ux[t, k, 2 * m + j] + b[2 * m + j] + r * Hn[t, k, j])
                gates[t, k, 2 * m + j] = n
                h[k, j] = (1.0 - z) * n + z * h[k, j]
                hT[j, k] = h[k, j]
        H[t] = h
    return H, gates, Hn


@jit
def _gru_backward(dH, H, gates, Hn, h0, W):
    T, B, m = H.shape
    dX = np.empty((T, B, 3 * m), H.dtype)
    dWh = np.empty((T, B, 3 * m), H.dtype)
    dh_next = np.zeros((B, m), H.dtype)
    for t in range(T - 1, -1, -1):
        dh_all = np.empty((B, m), H.dtype)
        for k in range(B):
            for j in range(m):
                r, z, n = gates[t, k, j], gates[t, k, m + j], gates[t, k, 2 * m + j]
                h_prev = H[t - 1, k, j] if t else h0[k, j]
                dh = dH[t, k, j] + dh_next[k, j]
                dn = dh * (1.0 - z) * (1.0 - n**2)
                dX[t, k, j] = dn * Hn[t, k, j] * r * (1.0 - r)
                dX[t, k, m + j] = dh * (h_prev - n) * z * (1.0 - z)
                dX[t, k, 2 * m + j] = dn
                dWh[t, k, j] = dX[t, k, j]
                dWh[t, k, m + j] = dX[t, k, m + j]
                dWh[t, k, 2 * m + j] = dn * r
                dh_all[k, j] = dh * z
        dh_next = dh_all + np.dot(dWh[t], W)
    return dX, dWh


def _c(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a)


def _weight_grads(dZ: np.ndarray, H: np.ndarray, h0: np.ndarray):
    """dW = sum_t dZ_t^T h_{t-1} and db = sum_t dZ_t, over all steps and streams."""
    T, B, m = H.shape
    H_prev = np.concatenate([h0[None], H])[:T].reshape(T * B, m)
    flat = dZ.reshape(T * B, dZ.shape[2])
    return flat.T @ H_prev, flat.sum(axis=0)


def _rnn_fwd(Ux, W, b, extra, state0):
    H = _rnn_forward(_c(Ux), _c(W), b, _c(state0[0]))
    return (H,), (H, state0[0])


def _rnn_bwd(dH, cache, W, extra):
    H, h0 = cache
    dA = _rnn_backward(_c(dH), H, _c(W))
    return (dA, *_weight_grads(dA, H, h0), {})


def _lstm_fwd(Ux, W, b, extra, state0):
    h0, c0 = (_c(s) for s in state0)
    H, C, gates = _lstm_forward(_c(Ux), _c(W), b, h0, c0)
    return (H, C), (H, C, gates, state0)


def _lstm_bwd(dH, cache, W, extra):
    H, C, gates, (h0, c0) = cache
    dZ = _lstm_backward(_c(dH), H, C, gates, _c(c0), _c(W))
    return (dZ, *_weight_grads(dZ, H, h0), {})


def _gru_fwd(Ux, W, b, extra, state0):
    H, gates, Hn = _gru_forward(_c(Ux), _c(W), b, extra["bhn"], _c(state0[0]))
    return (H,), (H, gates, Hn, state0[0])


def _gru_bwd(dH, cache, W, extra):
    H, gates, Hn, h0 = cache
    dX, dWh = _gru_backward(_c(dH), H, gates, Hn, _c(h0), _c(W))
    dW, _ = _weight_grads(dWh, H, h0)
    m = H.shape[2]
    flat_x, flat_h = dX.reshape(-1, 3 * m), dWh.reshape(-1, 3 * m)
    return dX, dW, flat_x.sum(axis=0), {"bhn": flat_h[:, 2 * m :].sum(axis=0)}


CELLS = {
    "rnn": SimpleNamespace(GATES=1, STATE=("h",), EXTRA=(), forward=_rnn_fwd, backward=_rnn_bwd),
    "lstm": SimpleNamespace(
        GATES=4, STATE=("h", "c"), EXTRA=(), forward=_lstm_fwd, backward=_lstm_bwd
    ),
    "gru": SimpleNamespace(
        GATES=3, STATE=("h",), EXTRA=("bhn",), forward=_gru_fwd, backward=_gru_bwd
    ),
}
