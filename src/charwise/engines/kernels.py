"""The fast engine's models beyond the exercise (any family, layers, batch, dropout, optimiser,
float64 or float32): the reference's equations (engines/reference.py, models/*.py) in the
parameters' dtype, with every time loop compiled.

Each cell object here has the interface of its model module (forward, backward, GATES, STATE,
EXTRA). Per step, the recurrent product of all streams is one BLAS call (np.dot, row-major
(B, m) states) and the gates are computed by a vectorisable sigmoid and tanh
(engines/numerics.py: no libm call per entry, float64 inside whatever the dtype); the LSTM
keeps tanh(c_t) from its forward pass for the backward one. Around the cells,
loss_and_grads_batch does what reference.loss_and_grads_batch does, with products over all
steps at once (dL/dh^L_t for every t is one product), softmax and loss in one compiled pass
(float64 inside), and the input weights' gradient gathered by a compiled loop (numpy's
np.add.at is ten times slower).

Rounding: the reference's sums in other orders (BLAS), fused multiply-adds (numerics.FASTMATH)
and the exp and tanh of numerics (a few ulp): float64 results equal the reference's to ~1e-13.
In float32 every array is float32 and only the loss, softmax and nonlinearities are evaluated
in float64 before being rounded.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from charwise.engines.numerics import _nll, _sigmoid, _tanh, jit
from charwise.engines.reference import _last_states
from charwise.params import Params


@jit
def _rnn_forward(Ux, W, b, h0):
    T, B, m = Ux.shape
    H = np.empty((T, B, m), Ux.dtype)
    a = np.empty((B, m), Ux.dtype)
    h = h0.copy()
    for t in range(T):
        np.dot(h, W.T, a)
        for k in range(B):
            for j in range(m):
                a[k, j] = (a[k, j] + Ux[t, k, j]) + b[j]
            _tanh(a[k], h[k])
        H[t] = h
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
        np.dot(dA[t], W, dnext)
    return dA


@jit
def _lstm_forward(Ux, W, b, h0, c0):
    T, B, m4 = Ux.shape
    m = m4 // 4
    H = np.empty((T, B, m), Ux.dtype)
    C = np.empty((T, B, m), Ux.dtype)
    TC = np.empty((T, B, m), Ux.dtype)  # tanh(c_t), kept for the backward pass
    gates = np.empty((T, B, m4), Ux.dtype)
    z = np.empty((B, m4), Ux.dtype)
    h, c = h0.copy(), c0.copy()
    for t in range(T):
        np.dot(h, W.T, z)
        for k in range(B):
            zk, gk = z[k], gates[t, k]
            for j in range(m4):
                zk[j] = (zk[j] + Ux[t, k, j]) + b[j]
            _sigmoid(zk[: 2 * m], gk[: 2 * m])
            _tanh(zk[2 * m : 3 * m], gk[2 * m : 3 * m])
            _sigmoid(zk[3 * m :], gk[3 * m :])
            for j in range(m):
                c[k, j] = gk[m + j] * c[k, j] + gk[j] * gk[2 * m + j]
            _tanh(c[k], TC[t, k])
            for j in range(m):
                h[k, j] = gk[3 * m + j] * TC[t, k, j]
        H[t], C[t] = h, c
    return H, C, TC, gates


@jit
def _lstm_backward(dH, H, C, TC, gates, c0, W):
    T, B, m = H.shape
    dZ = np.empty((T, B, 4 * m), H.dtype)
    dh_next = np.zeros((B, m), H.dtype)
    dc_next = np.zeros((B, m), H.dtype)
    for t in range(T - 1, -1, -1):
        c_prev = C[t - 1] if t else c0
        for k in range(B):
            gk, dz = gates[t, k], dZ[t, k]
            for j in range(m):
                i, f, g, o = gk[j], gk[m + j], gk[2 * m + j], gk[3 * m + j]
                tc = TC[t, k, j]
                dh = dH[t, k, j] + dh_next[k, j]
                dc = dc_next[k, j] + dh * o * (1.0 - tc * tc)
                dz[j] = dc * g * i * (1.0 - i)
                dz[m + j] = dc * c_prev[k, j] * f * (1.0 - f)
                dz[2 * m + j] = dc * i * (1.0 - g * g)
                dz[3 * m + j] = dh * tc * o * (1.0 - o)
                dc_next[k, j] = dc * f
        np.dot(dZ[t], W, dh_next)
    return dZ


@jit
def _gru_forward(Ux, W, b, bhn, h0):
    T, B, m3 = Ux.shape
    m = m3 // 3
    H = np.empty((T, B, m), Ux.dtype)
    gates = np.empty((T, B, m3), Ux.dtype)  # r, z, n after their nonlinearity
    Hn = np.empty((T, B, m), Ux.dtype)  # W_n h_{t-1} + b_hn
    wh = np.empty((B, m3), Ux.dtype)
    a = np.empty(m, Ux.dtype)
    h = h0.copy()
    for t in range(T):
        np.dot(h, W.T, wh)
        for k in range(B):
            gk = gates[t, k]
            for j in range(2 * m):
                wh[k, j] = (Ux[t, k, j] + b[j]) + wh[k, j]
            _sigmoid(wh[k, : 2 * m], gk[: 2 * m])
            for j in range(m):
                Hn[t, k, j] = wh[k, 2 * m + j] + bhn[j]
                a[j] = (Ux[t, k, 2 * m + j] + b[2 * m + j]) + gk[j] * Hn[t, k, j]
            _tanh(a, gk[2 * m :])
            for j in range(m):
                z, n = gk[m + j], gk[2 * m + j]
                h[k, j] = (1.0 - z) * n + z * h[k, j]
        H[t] = h
    return H, gates, Hn


@jit
def _gru_backward(dH, H, gates, Hn, h0, W):
    T, B, m = H.shape
    dX = np.empty((T, B, 3 * m), H.dtype)
    dWh = np.empty((T, B, 3 * m), H.dtype)
    dh_next = np.zeros((B, m), H.dtype)
    dh_all = np.empty((B, m), H.dtype)
    for t in range(T - 1, -1, -1):
        h_prev = H[t - 1] if t else h0
        for k in range(B):
            gk = gates[t, k]
            for j in range(m):
                r, z, n = gk[j], gk[m + j], gk[2 * m + j]
                dh = dH[t, k, j] + dh_next[k, j]
                dn = dh * (1.0 - z) * (1.0 - n * n)
                dX[t, k, j] = dn * Hn[t, k, j] * r * (1.0 - r)
                dX[t, k, m + j] = dh * (h_prev[k, j] - n) * z * (1.0 - z)
                dX[t, k, 2 * m + j] = dn
                dWh[t, k, j] = dX[t, k, j]
                dWh[t, k, m + j] = dX[t, k, m + j]
                dWh[t, k, 2 * m + j] = dn * r
                dh_all[k, j] = dh * z
        np.dot(dWh[t], W, dh_next)
        for k in range(B):
            for j in range(m):
                dh_next[k, j] = dh_all[k, j] + dh_next[k, j]
    return dX, dWh


def _c(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a)


@jit
def _dot(a, b):
    """a @ b by the BLAS that numba's np.dot calls (SciPy's): every product of a training step
    goes to that one library, whose threads would otherwise contend with numpy's."""
    return np.dot(a, b)


def _weight_grads(dZ: np.ndarray, H: np.ndarray, h0: np.ndarray):
    """dW = sum_t dZ_t^T h_{t-1} and db = sum_t dZ_t, over all steps and streams."""
    T, B, m = H.shape
    H_prev = np.concatenate([h0[None], H])[:T].reshape(T * B, m)
    flat = dZ.reshape(T * B, dZ.shape[2])
    return _dot(flat.T, H_prev), flat.sum(axis=0)


def _rnn_fwd(Ux, W, b, extra, state0):
    h0 = _c(state0[0])
    H = _rnn_forward(_c(Ux), _c(W), b, h0)
    return (H,), (H, h0)


def _rnn_bwd(dH, cache, W, extra):
    H, h0 = cache
    dA = _rnn_backward(_c(dH), H, _c(W))
    return (dA, *_weight_grads(dA, H, h0), {})


def _lstm_fwd(Ux, W, b, extra, state0):
    h0, c0 = (_c(s) for s in state0)
    H, C, TC, gates = _lstm_forward(_c(Ux), _c(W), b, h0, c0)
    return (H, C), (H, C, TC, gates, h0, c0)


def _lstm_bwd(dH, cache, W, extra):
    H, C, TC, gates, h0, c0 = cache
    dZ = _lstm_backward(_c(dH), H, C, TC, gates, c0, _c(W))
    return (dZ, *_weight_grads(dZ, H, h0), {})


def _gru_fwd(Ux, W, b, extra, state0):
    h0 = _c(state0[0])
    H, gates, Hn = _gru_forward(_c(Ux), _c(W), b, extra["bhn"], h0)
    return (H,), (H, gates, Hn, h0)


def _gru_bwd(dH, cache, W, extra):
    H, gates, Hn, h0 = cache
    dX, dWh = _gru_backward(_c(dH), H, gates, Hn, h0, _c(W))
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


# ---- around the cells -------------------------------------------------------------------------
@jit
def _softmax_loss(O, c, y, real, scale):
    """Sum over the rows r with real[r] of -log softmax(O[r] + c)[y[r]], in float64; O becomes
    dL/do in place: (p - onehot(y)) * scale on real rows, 0 on the others."""
    z = np.empty(2 * c.size)
    total = 0.0
    for r in range(O.shape[0]):
        o = O[r]
        if not real[r]:
            o[:] = 0.0
            continue
        nll, s = _nll(o, c, y[r], z)  # z: the exponentials
        total += nll
        for k in range(c.size):
            o[k] = z[k] / s * scale
        o[y[r]] = o[y[r]] - scale
    return total


@jit
def _gather_rows(UT, x, out):
    """out[r] = UT[x[r]]: the column x_t of U for every step and stream (UT = U^T)."""
    for r in range(x.size):
        out[r] = UT[x[r]]


@jit
def _scatter_rows(x, rows, out):
    """out[x[r]] += rows[r] for every r in order (np.add.at's order), out zeroed first."""
    out[:] = 0.0
    for r in range(x.size):
        o, src = out[x[r]], rows[r]
        for j in range(src.size):
            o[j] = o[j] + src[j]


def loss_and_grads_batch(params: Params, X, Y, lengths, state0: tuple, masks=None):
    """reference.loss_and_grads_batch in the parameters' dtype, with compiled cells and loss."""
    spec, dt = params.spec, params.dtype
    cell = CELLS[spec.family]
    T, B = X.shape
    m = spec.m
    x = np.ascontiguousarray(X.ravel(), dtype=np.int64)
    if masks is not None:  # (T, B, m) each, in the parameters' dtype
        masks = [np.ascontiguousarray(k.transpose(1, 0, 2)[:T], dtype=dt) for k in masks]
    state0 = tuple(np.asarray(s, dtype=dt) for s in state0)
    caches, inputs, states = [], [], []
    below = None  # the input of the next layer, (T, B, m)
    for layer in range(1, spec.layers + 1):
        names = spec.layer_names(layer)
        U, W, b = params[names["U"]], params[names["W"]], params[names["b"]]
        extra = {e: params[names[e]] for e in cell.EXTRA}
        if layer == 1:
            Ux = np.empty((T * B, len(U)), dt)
            _gather_rows(np.ascontiguousarray(U.T), x, Ux)
            Ux = Ux.reshape(T, B, len(U))
        else:
            if masks is not None:
                below = below * masks[layer - 2]
            Ux = _dot(below.reshape(T * B, m), U.T).reshape(T, B, len(U))
        inputs.append(below)
        layer_states, cache = cell.forward(Ux, W, b, extra, tuple(s[layer - 1] for s in state0))
        states.append(layer_states)
        caches.append(cache)
        below = layer_states[0]
    if masks is not None:
        below = below * masks[-1]
    top = below.reshape(T * B, m)
    dO = _dot(top, params["V"].T)
    real = (np.arange(T)[:, None] < np.asarray(lengths)[None, :]).ravel()
    y = np.ascontiguousarray(Y.ravel(), dtype=np.int64)
    loss = _softmax_loss(dO, params["c"], y, real, 1.0 / B) / B
    grads = {"V": _dot(dO.T, top), "c": dO.sum(axis=0)}
    dH = _dot(dO, params["V"]).reshape(T, B, m)
    if masks is not None:
        dH *= masks[-1]
    for layer in range(spec.layers, 0, -1):
        names = spec.layer_names(layer)
        U, W = params[names["U"]], params[names["W"]]
        extra = {e: params[names[e]] for e in cell.EXTRA}
        dUx, dW, db, dextra = cell.backward(dH, caches[layer - 1], W, extra)
        flat = dUx.reshape(T * B, len(U))
        if layer == 1:
            dUT = np.empty((spec.K, len(U)), dt)
            _scatter_rows(x, flat, dUT)
            dU = np.ascontiguousarray(dUT.T)
        else:
            dU = _dot(flat.T, inputs[layer - 1].reshape(T * B, m))
            dH = _dot(flat, U).reshape(T, B, m)
            if masks is not None:
                dH *= masks[layer - 2]
        grads |= {names["U"]: dU, names["W"]: dW, names["b"]: db}
        grads |= {names[e]: g for e, g in dextra.items()}
    ordered = {name: grads[name] for name in params.names()}
    return float(loss), Params._make(ordered, spec), _last_states(state0, states, lengths)


# ---- the optimisers' steps (optim.py), compiled: one pass over each array ---------------------
@jit
def _clip(g, clip):
    return clip if g > clip else -clip if g < -clip else g


@jit
def _adagrad(p, g, G, lr, eps, clip):
    for i in range(p.size):
        gi = _clip(g[i], clip)
        G[i] = G[i] + gi * gi
        p[i] = p[i] - lr * gi / math.sqrt(G[i] + eps)


@jit
def _rmsprop(p, g, v, lr, eps, clip, alpha):
    for i in range(p.size):
        gi = _clip(g[i], clip)
        v[i] = alpha * v[i] + (1.0 - alpha) * gi * gi
        p[i] = p[i] - lr * gi / (math.sqrt(v[i]) + eps)


@jit
def _adam(p, g, m, v, lr, eps, clip, beta1, beta2, t):
    c1, c2 = 1.0 - beta1**t, 1.0 - beta2**t
    for i in range(p.size):
        gi = _clip(g[i], clip)
        m[i] = beta1 * m[i] + (1.0 - beta1) * gi
        v[i] = beta2 * v[i] + (1.0 - beta2) * gi * gi
        p[i] = p[i] - lr * (m[i] / c1) / (math.sqrt(v[i] / c2) + eps)


def optimizer_step(optimizer, params: Params, grads: Params, state: dict, t: int) -> None:
    """optimizer.step(params, grads, state, t), each array in one compiled pass (the same
    formulas; the scalars in float64). Gradients are clipped as they are read, not in place."""
    lr, eps, clip = optimizer.lr(t), optimizer.eps, optimizer.clip
    for name, g in grads.items():
        p = params[name].reshape(-1)
        g, slot = g.reshape(-1), {s: state[s][name].reshape(-1) for s in optimizer.slots}
        if optimizer.name == "adam":
            _adam(p, g, slot["m"], slot["v"], lr, eps, clip, optimizer.beta1, optimizer.beta2, t)
        elif optimizer.name == "rmsprop":
            _rmsprop(p, g, slot["v"], lr, eps, clip, optimizer.alpha)
        else:
            _adagrad(p, g, slot["G"], lr, eps, clip)
