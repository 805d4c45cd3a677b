"""The numba engine: the reference math (SPEC.md) compiled, fused, and run a block at a time.

Same interface and semantics as engines.reference, checked against it to ~1e-10 relative
(tests/test_fast.py). What makes it fast: index gathers instead of one-hot products, the
sequence-wide products (logits, dV, dW, dH) done as matrix products over all steps at
once and the recurrence's products one step at a time, both by explicit vector code that
holds its sums in registers (engines/matvec.py: 2-3x faster than BLAS at these sizes, whose
call and packing cost more than the arithmetic), a vectorisable tanh and exp,
AdaGrad on the touched columns of U only (the others have a zero gradient, for which the
step is exactly a no-op; U is held transposed during a block, so those columns are
contiguous) with 1/sqrt by Newton steps, the best-model snapshot taken in
the AdaGrad pass, and whole blocks of updates in one compiled call.

Every other model (any family, layers, batch, dropout, optimiser, schedule, float64 or float32)
trains by kernels.py (the reference's equations, every time loop compiled), and samples, advances
and validates by this file's one-stream kernels for every model (_model_*), which step a large
layer's units in chunks on numba's threads (_layer_step), each entry computed as by one thread.

Rounding: sums run in a fixed order (engines/matvec.py's, the same on every run on one
machine) and multiply-adds may be fused (numerics.FASTMATH), so results differ from
numpy's in the last bits only (~1e-15); NaN/inf semantics are kept, so divergence is
detected exactly as by the reference.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from charwise import safeio
from charwise.engines import kernels, reference
from charwise.engines.matvec import gemm, matvec, transpose
from charwise.engines.numerics import (
    _all_finite,
    _exp_nonpositive,
    _nll,
    _sigmoid,
    _smooth,
    _tanh,
    cache_folder,
    jit,
    numba,  # set up there: its cache folder is chosen before its import
    pjit,
    sources_stamp,
    tanh,
)
from charwise.params import Params, RNNParams
from charwise.state import TrainState


# ---- one chunk: loss, gradients, last hidden state --------------------------------------------
@jit
def _step(b, UT, WT, xt, h, out, z):
    """out = tanh(W h + U[:, xt] + b) for vectors h, out (out may be h); WT = W^T, UT = U^T;
    z: scratch of out's dtype and length (m)."""
    matvec(z, h, WT)
    _activate(b, UT, xt, z, out)


@jit
def _activate(b, UT, xt, a, out):
    """out = tanh(a + U[:, xt] + b), where a holds W h on entry and is overwritten; UT = U^T
    (tanh in float32 arithmetic where a and out are float32: numerics.tanh)."""
    for i in range(b.size):
        a[i] = a[i] + UT[xt, i] + b[i]
    tanh(a, out)


@jit
def _loss_and_grads(b, c, UT, W, V, x, y, h0, ws, z64, grads) -> float:
    """L for one chunk; fills grads (db, dc, dU^T, dW, dV) from UT = U^T and the other
    parameters; dU^T only on the rows of x, which must be zero on entry.

    ws = (WT, VT, H, P, dH, dA) in the parameters' dtype: W^T, V^T, H (n+1, m) with H[0] = h0,
    logits then dL/do (n, K), V^T dL/do_t (n, m), dL/da_t (n + 1, m: one spare row);
    z64: float64 scratch.
    """
    WT, VT, H, P, dH, dA = ws
    db, dc, dUT, dW, dV = grads
    n, m, K = len(x), b.size, c.size
    transpose(W, WT)
    transpose(V, VT)
    H[0] = h0
    for t in range(n):  # dA's spare row: scratch of the parameters' dtype until the backward
        _step(b, UT, WT, x[t], H[t], H[t + 1], dA[n])
    gemm(H[1 : n + 1], VT, P[:n])  # logits o_t = V h_t + c, all steps at once
    L = 0.0
    for t in range(n):  # softmax and loss; then P[t] becomes dL/do_t = p_t - onehot(y_t)
        o = P[t]
        nll, s = _nll(o, c, y[t], z64)
        L += nll
        for k in range(K):
            o[k] = z64[k] / s
        o[y[t]] -= 1.0
    dO = P[:n]
    dc[:] = 0.0
    for t in range(n):
        for k in range(K):
            dc[k] = dc[k] + dO[t, k]
    gemm(dO.T, H[1 : n + 1], dV)  # dV = dO^T H
    gemm(dO, V, dH[:n])  # row t: V^T dL/do_t
    dnext = dA[n]  # W^T dL/da_{t+1}, in the spare last row of dA
    dnext[:] = 0.0
    for t in range(n - 1, -1, -1):  # dL/da_t = (V^T dL/do_t + W^T dL/da_{t+1}) * (1 - h_t^2)
        h, da = H[t + 1], dA[t]
        for i in range(m):
            da[i] = (dH[t, i] + dnext[i]) * (1.0 - h[i] * h[i])
        if t > 0:
            matvec(dnext, da, W)
    gemm(dA[:n].T, H[:n], dW)  # dW = dA^T H_prev
    db[:] = 0.0
    for t in range(n):
        for i in range(m):
            db[i] = db[i] + dA[t, i]
    for t in range(n):  # column x_t of dU (row x_t of dU^T) gets da_t
        xt = x[t]
        for i in range(m):
            dUT[xt, i] = dUT[xt, i] + dA[t, i]
    return L


# ---- AdaGrad and the block of updates ---------------------------------------------------------
@jit
def _adagrad(p, g, G, eta, eps, clip, snapshot, save, newton):
    """Clip g, G += g^2, p -= eta g / sqrt(G + eps) elementwise (optim.adagrad_step), first
    copying p into snapshot when save is set (the best model, taken in the same pass).

    newton (float64): 1 / sqrt(G + eps) from float32 refined by two Newton steps, to ~1e-16
    relative; a square root and a division per entry would take twice as long.
    """
    for i in range(p.size):
        if save:
            snapshot[i] = p[i]
        gi = g[i]
        gi = clip if gi > clip else -clip if gi < -clip else gi
        G[i] = G[i] + gi * gi
        y = G[i] + eps
        if newton:
            r = np.float64(np.float32(1.0) / math.sqrt(np.float32(y)))
            r = r * (1.5 - 0.5 * y * r * r)
            r = r * (1.5 - 0.5 * y * r * r)
            p[i] = p[i] - eta * gi * r
        else:
            p[i] = p[i] - eta * gi / math.sqrt(y)


@jit
def _workspace(params, n):
    """Scratch arrays for chunks of up to n characters: (WT, VT, H, P, dH, dA), z64, grads
    (db, dc, dU^T, dW, dV)."""
    b, c, U, W, V = params
    m, K = b.size, c.size
    dt = b.dtype
    ws = (
        np.empty((m, m), dt),
        np.empty((m, K), dt),
        np.empty((n + 1, m), dt),
        np.empty((n, K), dt),
        np.empty((n, m), dt),
        np.empty((n + 1, m), dt),
    )
    grads = (np.empty(m, dt), np.empty(K, dt), np.zeros((K, m), dt), np.empty((m, m), dt))
    return ws, np.empty(max(m, 2 * K)), grads + (np.empty((K, m), dt),)


@jit
def _train_block(
    params,
    G,
    best,
    h,
    best_h,
    fstate,
    istate,
    data,
    starts,
    lengths,
    resets,
    eta,
    eps,
    clip,
    losses,
    newton,
) -> int:
    """The loop of reference.train_block, compiled; scalars of the state live in
    fstate = [smooth_loss, best_smooth] and istate = [updates, best_update, best_x0].

    U, its AdaGrad sums and its best copy are held transposed during the block, so that the
    columns a chunk reads and updates are contiguous rows; they are written back at the end.
    """
    b, c, U, W, V = params
    K = c.size
    UT, GUT = np.ascontiguousarray(U.T), np.ascontiguousarray(G[2].T)
    bestUT = np.empty_like(UT)
    best_update = istate[1]
    done = len(starts)
    ws, z64, grads = _workspace(params, max(lengths.max(), 1) if len(lengths) else 1)
    db, dc, dUT, dW, dV = grads
    touched = np.zeros(K, np.bool_)
    for k in range(len(starts)):
        if resets[k]:
            h[:] = 0.0
        s, n = starts[k], lengths[k]
        x, y = data[s : s + n], data[s + 1 : s + n + 1]
        L = _loss_and_grads(b, c, UT, W, V, x, y, h, ws, z64, grads)
        losses[k] = L
        finite = math.isfinite(L) and _all_finite(db) and _all_finite(dc)
        finite = finite and _all_finite(dW.ravel()) and _all_finite(dV.ravel())
        for t in range(n):
            finite = finite and _all_finite(dUT[x[t]])
        if not finite:
            done = k  # this update is not applied
            break
        fstate[0] = L if istate[0] == 0 else _smooth(fstate[0], L)
        save = fstate[0] < fstate[1]  # snapshot the parameters before this update
        if save:
            bestUT[:] = UT
            best_h[:] = h
            istate[2] = x[0]
            istate[1] = istate[0] + 1
            fstate[1] = fstate[0]
        _adagrad(b, db, G[0], eta, eps, clip, best[0], save, newton)
        _adagrad(c, dc, G[1], eta, eps, clip, best[1], save, newton)
        _adagrad(W.ravel(), dW.ravel(), G[3].ravel(), eta, eps, clip, best[3].ravel(), save, newton)
        _adagrad(V.ravel(), dV.ravel(), G[4].ravel(), eta, eps, clip, best[4].ravel(), save, newton)
        for t in range(n):  # columns of U outside x have g = 0: their step is exactly a no-op
            j = x[t]
            if not touched[j]:
                touched[j] = True
                _adagrad(UT[j], dUT[j], GUT[j], eta, eps, clip, UT[j], False, newton)
        for t in range(n):
            touched[x[t]] = False
            dUT[x[t]] = 0.0
        h[:] = ws[2][n]
        istate[0] += 1
    U[:] = UT.T
    G[2][:] = GUT.T
    if istate[1] != best_update:  # a snapshot was taken in this block
        best[2][:] = bestUT.T
    return done


# ---- sampling -------------------------------------------------------------------------------
@jit
def _probabilities(o, temperature, top_p, p):
    """p = reference.probabilities(o, temperature, top_p), in float64; returns p (o is
    overwritten)."""
    K = o.size
    if temperature == 0.0:
        p[:] = 0.0
        p[np.argmax(o)] = 1.0
        return p
    top = -np.inf
    for k in range(K):
        o[k] = o[k] / temperature
        if o[k] > top:
            top = o[k]
    for k in range(K):
        o[k] = o[k] - top
    _exp_nonpositive(o, p)
    s = 0.0
    for k in range(K):
        s += p[k]
    for k in range(K):
        p[k] = p[k] / s
    if top_p < 1.0:  # keep the smallest most-probable set with mass >= top_p (stable order)
        order = np.argsort(-p, kind="mergesort")
        mass, keep = 0.0, K - 1
        for i in range(K):
            mass += p[order[i]]
            if mass >= top_p:
                keep = i
                break
        for i in range(keep + 1, K):
            p[order[i]] = 0.0
    return p


@jit
def _draw(p, u) -> int:
    """The first index i with cumsum(p)[i] > u * sum(p), the sums taken in numpy's order."""
    total = 0.0
    for k in range(p.size):
        total += p[k]
    v = u * total
    cs = 0.0
    for k in range(p.size):
        cs += p[k]
        if cs > v:
            return k
    return p.size - 1  # unreachable for u < 1; kept inside the vocabulary


@jit
def _sample(b, c, U, W, V, h0, x0, uniforms, temperature, top_p, stop, out) -> int:
    """Fills out[:n] with drawn indices; returns how many were drawn (fewer after `stop`)."""
    m, K = b.size, c.size
    UT = np.ascontiguousarray(U.T)
    B = np.empty((m, m + K))  # [W^T V^T]: h @ B is W h and V h in one pass over h
    transpose(W, B[:, :m])
    transpose(V, B[:, m:])
    h, wv = h0.copy(), np.empty(m + K)
    o, p = np.empty(K), np.empty(K)
    matvec(wv, h, B)
    x = x0
    for i in range(out.size):
        _activate(b, UT, x, wv[:m], h)  # h_t from W h_{t-1} and x
        matvec(wv, h, B)  # W h_t for the next step, and the logits V h_t
        for k in range(K):
            o[k] = wv[m + k] + c[k]
        x = _draw(_probabilities(o, temperature, top_p, p), uniforms[i])
        out[i] = x
        if x == stop:
            return i + 1
    return out.size


@jit
def _advance(b, U, W, h0, x):
    """The hidden state after reading x from h0."""
    m = b.size
    WT, UT = np.empty((m, m)), np.ascontiguousarray(U.T)
    transpose(W, WT)
    h, z64 = h0.copy(), np.empty(m)
    for t in range(x.size):
        _step(b, UT, WT, x[t], h, h, z64)
    return h


@jit
def _evaluate(b, c, U, W, V, data, runs):
    """(sum of -log p, count) over the runs data[a:b] (rows of runs), each read from h = 0
    with h carried; logits and log-sum-exp in float64."""
    m, K = b.size, c.size
    UT = np.ascontiguousarray(U.T)
    WT, VT = np.empty((m, m)), np.empty((m, K))
    transpose(W, WT)
    transpose(V, VT)
    h, o, z64 = np.empty(m), np.empty(K), np.empty(max(m, 2 * K))
    total, count = 0.0, 0
    for r in range(len(runs)):
        h[:] = 0.0
        for s in range(runs[r, 0], runs[r, 1] - 1):
            _step(b, UT, WT, data[s], h, h, z64[:m])
            matvec(o, h, VT)
            total += _nll(o, c, data[s + 1], z64)[0]
            count += 1
    return total, count


# ---- every model, one stream: sampling, advance, evaluation ----------------------------------
FAMILY_CODES = {"rnn": 0, "lstm": 1, "gru": 2}
EVAL_PIECE = reference.EVAL_PIECE


@jit
def _cell_step(family, wz, u, b, bhn, h_prev, h, c, z64):
    """The new state (h, and c in place for the lstm) of w units of a layer after one step,
    from wz = W h_{t-1} (overwritten) and u = the input term U u_t over these units' gates
    (GATES w entries each, gate-major: unit j's gates at j, w + j, ...) and h_prev, their
    h_{t-1}; the gates as the model modules compute them. z64: scratch of GATES w."""
    m = h.size
    if family == 0:  # rnn: tanh(W h + U u + b)
        for j in range(m):
            wz[j] = (wz[j] + u[j]) + b[j]
        _tanh(wz[:m], h)
    elif family == 1:  # lstm: i, f, g, o from W h + U u + b
        for j in range(4 * m):
            wz[j] = (wz[j] + u[j]) + b[j]
        _sigmoid(wz[: 2 * m], z64[: 2 * m])
        _tanh(wz[2 * m : 3 * m], z64[2 * m : 3 * m])
        _sigmoid(wz[3 * m : 4 * m], z64[3 * m : 4 * m])
        for j in range(m):
            c[j] = z64[m + j] * c[j] + z64[j] * z64[2 * m + j]
        _tanh(c, wz[:m])
        for j in range(m):
            h[j] = z64[3 * m + j] * wz[j]
    else:  # gru: r, z from (U u + b) + W h; n = tanh(U_n u + b_n + r (W_n h + b_hn))
        for j in range(2 * m):
            wz[j] = (u[j] + b[j]) + wz[j]
        _sigmoid(wz[: 2 * m], z64[: 2 * m])
        for j in range(m):
            wz[2 * m + j] = (u[2 * m + j] + b[2 * m + j]) + z64[j] * (wz[2 * m + j] + bhn[j])
        _tanh(wz[2 * m : 3 * m], z64[2 * m : 3 * m])
        for j in range(m):
            z = z64[m + j]
            h[j] = (1.0 - z) * z64[2 * m + j] + z * h_prev[j]


@jit
def _layer_step(family, WT, UT, below, uin, b, bhn, h_prev, h, c, scratch):
    """One layer's step: h (the new state; c in place for the lstm) from h_prev = h_{t-1}, its
    units in len(WT) chunks (_chunked) stepped one per thread where there are several. Chunk
    q holds the gates of units q w .. (q + 1) w - 1, gate-major: WT[q] = those columns of
    W^T, b[q] of b, bhn[q] of b_hn. The input term is below @ UT[q] (the layer below's new h
    through U^T), or uin[q] where UT has no entries. Each entry of W h is summed as by one
    thread, so the results do not depend on the number of chunks. scratch: (chunks, 3,
    GATES w) float64."""
    args = (WT, UT, below, uin, b, bhn, h_prev, h, c, scratch)
    if WT.shape[0] == 1:
        _chunk_step(family, 0, *args)
    else:
        _parallel_step(family, *args)


@pjit
def _parallel_step(family, WT, UT, below, uin, b, bhn, h_prev, h, c, scratch):
    for q in numba.prange(WT.shape[0]):
        _chunk_step(family, q, WT, UT, below, uin, b, bhn, h_prev, h, c, scratch)


@jit
def _chunk_step(family, q, WT, UT, below, uin, b, bhn, h_prev, h, c, scratch):
    """_layer_step's chunk q."""
    n, m = WT.shape[:2]
    w = m // n
    wz, u, z64 = scratch[q, 0], scratch[q, 1], scratch[q, 2]
    matvec(wz, h_prev, WT[q])
    if UT.shape[0]:
        matvec(u, below, UT[q])
    else:
        u = uin[q]
    j = q * w
    _cell_step(family, wz, u, b[q], bhn[q], h_prev[j : j + w], h[j : j + w], c[j : j + w], z64)


@jit
def _model_step(family, x, h, c, arrays, work):
    """Every layer's state after reading character x (one stream, float64): layer 1 reads
    row x of U^T, layer l > 1 the new h of the layer below through U^T; work: _scratch."""
    UT1, UTs, WTs, bs, bhn = arrays
    hn, scratch, none = work
    for l in range(h.shape[0]):
        if l == 0:
            _layer_step(family, WTs[0], none, hn, UT1[x], bs[0], bhn[0], h[0], hn, c[0], scratch)
        else:
            args = (family, WTs[l], UTs[l - 1], h[l - 1], UT1[x], bs[l], bhn[l], h[l], hn, c[l])
            _layer_step(*args, scratch)
        h[l] = hn


@jit
def _scratch(WTs):
    """What _model_step writes: the new h of a layer, _layer_step's scratch, and an empty U^T
    (layer 1's input term is a row of U^T)."""
    n, m, G = WTs.shape[1:]
    return np.empty(m), np.empty((n, 3, G)), np.empty((0, 1, 1))


@jit
def _model_sample(family, h, c, arrays, VT, cb, x0, uniforms, temperature, top_p, stop, out):
    """_sample for every model: fills out[:n], returns how many were drawn."""
    K = cb.size
    work = _scratch(arrays[2])
    o, p = np.empty(K), np.empty(K)
    x = x0
    for i in range(out.size):
        _model_step(family, x, h, c, arrays, work)
        matvec(o, h[-1], VT)
        for k in range(K):
            o[k] = o[k] + cb[k]
        x = _draw(_probabilities(o, temperature, top_p, p), uniforms[i])
        out[i] = x
        if x == stop:
            return i + 1
    return out.size


@jit
def _model_advance(family, h, c, arrays, x):
    """h and c (every layer's) after reading the characters x."""
    work = _scratch(arrays[2])
    for t in range(x.size):
        _model_step(family, x[t], h, c, arrays, work)


@jit
def _model_evaluate(family, L, arrays, VT, cb, data, runs):
    """_evaluate for every model: each run read from zero states, states carried, a piece of
    up to EVAL_PIECE steps at a time and layer by layer (as reference.evaluate), so that a
    layer's input terms over the piece are one product (a gather for layer 1; the product by U^T
    in its own order, whatever the chunks), and so are the logits; only W h_{t-1} is a product
    per step."""
    UT1, UTn, WTs, bs, bhn = arrays
    n_q, m, G = WTs.shape[1:]
    K, P = cb.size, EVAL_PIECE
    h, c = np.empty((L, m)), np.empty((L, m))
    Ux, Hs, O = np.empty((P, n_q, G)), np.empty((P, m)), np.empty((P, K))
    full = np.empty((P if n_q > 1 else 0, n_q * G))  # the chunks' input terms in U^T's order
    z64 = np.empty(2 * K)
    hn, scratch, none = _scratch(WTs)
    gates, w = n_q * G // m, m // n_q
    total, count = 0.0, 0
    for r in range(len(runs)):
        h[:] = 0.0
        c[:] = 0.0
        s = runs[r, 0]
        while s < runs[r, 1] - 1:
            n = min(P, runs[r, 1] - 1 - s)
            for l in range(L):
                if l == 0:
                    for t in range(n):
                        Ux[t] = UT1[data[s + t]]
                elif n_q == 1:  # the layer below's states of the piece through U^T
                    np.dot(Hs[:n], UTn[l - 1], Ux[:n].reshape(n, G))
                else:  # the same product, then into the chunks
                    np.dot(Hs[:n], UTn[l - 1], full[:n])
                    for t in range(n):
                        for q in range(n_q):
                            for g in range(gates):
                                for j in range(w):
                                    Ux[t, q, g * w + j] = full[t, g * m + q * w + j]
                for t in range(n):
                    args = (family, WTs[l], none, hn, Ux[t], bs[l], bhn[l], h[l], hn, c[l])
                    _layer_step(*args, scratch)
                    h[l] = hn
                    Hs[t] = hn
            np.dot(Hs[:n], VT, O[:n])
            for t in range(n):
                total += _nll(O[t], cb, data[s + t + 1], z64)[0]
            count += n
            s += n
    return total, count


def _chunked(a: np.ndarray, gates: int, n: int) -> np.ndarray:
    """The last axis of a (gates blocks of m units each) as n chunks of m / n units, each
    gate-major: (..., gates * m) -> (..., n, gates * m / n), contiguous."""
    *lead, G = a.shape
    w = G // gates // n
    split = a.reshape(*lead, gates, n, w)
    return np.ascontiguousarray(np.moveaxis(split, -2, -3).reshape(*lead, n, gates * w))


# Multiply-adds of W h per step from which a layer is stepped in chunks by several threads, and
# the least each chunk gets: below it, the few microseconds that a parallel step costs more
# than one thread's outweigh what it saves.
PARALLEL_MIN = 4 * 256 * 256
# Parameters from which the products over a chunk and the optimiser's step are split over several
# threads where the layers' steps are not (kernels' bulk tag), and half of it the least each
# thread gets: an lstm m 128 (107,713) trained 6-10% faster so on an AVX2 Zen 3, a gru m 128
# (83,009) up to 10%, an rnn m 128 (33,217) no faster (a parallel region costs 1.5-8 us).
BULK_PARALLEL_MIN = 1 << 16


def _threads(work: int, least: int) -> int:
    """How many threads may share `work` with `least` of it each at least: at most numba's
    threads and _cores(). One below 2 least, one in a forked child of a process that ran
    parallel work (PARALLEL_PID), and one where numba's threading layer is its own "workqueue"
    (its fallback where there is no OpenMP or TBB library), which aborts the process when two
    threads start parallel work at once (the dashboard samples for several requests at a
    time)."""
    if work < 2 * least or PARALLEL_PID[:1] not in ([], [os.getpid()]):
        return 1
    threads = numba.get_num_threads()  # starts numba's threads: the layer is then known
    if numba.threading_layer() == "workqueue":
        return 1
    return min(threads, _cores(), work // max(least, 1))


def _claimed(n: int) -> int:
    """n threads, this process recorded as the one that ran parallel work where n > 1."""
    if n > 1 and not PARALLEL_PID:
        PARALLEL_PID.append(os.getpid())
    return n


def _chunks(spec, batch: int = 1) -> int:
    """How many chunks (threads) step each layer (of `batch` streams at once: training's
    kernels.run_block parts): _threads of W h's multiply-adds, PARALLEL_MIN / 2 each (and 2
    kernels.UNIT_STEP units each for a batch), and a divisor of m."""
    most = _threads(spec.cell.GATES * spec.m * spec.m * batch, PARALLEL_MIN // 2)
    if batch > 1:  # training's products of several rows: parts of 2 UNIT_STEP units at least
        most = max(1, min(most, spec.m // (2 * kernels.UNIT_STEP)))
    return _claimed(max(n for n in range(1, most + 1) if spec.m % n == 0))


def _parts(spec, batch: int = 1) -> tuple[int, int]:
    """(parts, bulk) of training's kernels.run_block: _chunks, and the threads that share the
    products over a chunk and the optimiser's step: the chunks' where there are several, else
    _threads of the parameters, BULK_PARALLEL_MIN / 2 each."""
    parts = _chunks(spec, batch)
    if parts > 1:
        return parts, parts
    size = sum(math.prod(shape) for shape in spec.shapes().values())
    return 1, _claimed(_threads(size, BULK_PARALLEL_MIN // 2))


def _cores() -> int:
    """The cores this process may use: those it may run on (all of them where the system does
    not say: macOS), at most OMP_NUM_THREADS where set (a sweep's trial gets its share so)."""
    aff = getattr(os, "sched_getaffinity", None)
    cores = len(aff(0)) if aff else os.cpu_count() or 1
    omp = os.environ.get("OMP_NUM_THREADS", "")
    return min(cores, int(omp)) if omp.isdigit() and int(omp) > 0 else cores


# The process that stepped layers on several threads. numba's OpenMP layer (GNU libgomp) is not
# fork-safe: a forked child of such a process is killed when it starts parallel work, so a
# child steps on one thread.
PARALLEL_PID: list[int] = []


@contextlib.contextmanager
def _team(n: int):
    """numba's threads for this thread's parallel steps, n (as many as the chunks: numba would
    otherwise start all of its threads for each step, most of them idle)."""
    if n < 2:
        yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(before)


def _packed(params: Params, evaluation: bool = False):
    """(family code, the layers' arrays (U^T of layer 1, U^T of layers 2.. (unchunked for
    evaluation), W^T, b, b_hn), V^T, c) for the one-stream kernels, contiguous, in float64 but
    W^T, kept in the parameters' dtype, and in chunks for the threads (_chunks, _layer_step).
    A float32 weight is exactly a float64 one, so the products are the reference's (which
    upcasts), but each step's W h, a memory-bound product, reads half the bytes."""
    spec, p = params.spec, params
    gates, m, L = spec.cell.GATES, spec.m, spec.layers
    n = _chunks(spec)
    names = [spec.layer_names(layer) for layer in range(1, L + 1)]
    layers = lambda key, first=0: np.stack([p[k[key]] for k in names[first:]])  # noqa: E731
    f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    chunk = lambda a: _chunked(a, gates, n)  # noqa: E731
    # (L, G, m) weights -> (L, chunks, m, G / chunks): each chunk's columns of W^T (or U^T)
    by_chunk = lambda a: np.ascontiguousarray(chunk(a.transpose(0, 2, 1)).transpose(0, 2, 1, 3))  # noqa: E731
    if evaluation:  # U^T of layers 2.. as it is: one product over a piece (_model_evaluate)
        UT = f64(layers("U", 1).transpose(0, 2, 1)) if L > 1 else np.zeros((0, m, gates * m))
    else:
        UT = by_chunk(f64(layers("U", 1))) if L > 1 else np.zeros((0, n, m, gates * m // n))
    bhn = f64(layers("bhn")) if "bhn" in names[0] else np.zeros((L, m))
    arrays = (
        chunk(f64(p["U"].T)),
        np.ascontiguousarray(UT),
        by_chunk(layers("W")),
        chunk(f64(layers("b"))),
        np.ascontiguousarray(bhn.reshape(L, n, m // n)),
    )
    return FAMILY_CODES[spec.family], arrays, np.ascontiguousarray(f64(p["V"].T)), f64(p["c"])


def _hc(spec, state) -> tuple[np.ndarray, np.ndarray]:
    """h and c (L, m) float64 copies of a one-stream state tuple ((L, 1, m) arrays, c for the
    lstm only), or of an h alone."""
    state = reference.as_state(spec, state)
    h = np.ascontiguousarray(state[0][:, 0])
    c = np.ascontiguousarray(state[1][:, 0]) if len(state) > 1 else np.zeros_like(h)
    return h, c


def _state(spec, h, c, like):
    """The state in the form it was given: a tuple of (L, 1, m) arrays, or an h alone."""
    if not isinstance(like, tuple):
        return h[-1].copy()
    return tuple(s[:, None, :].copy() for s in ((h, c) if spec.family == "lstm" else (h,)))


# ---- the engine interface (see engines/__init__.py) -------------------------------------------
def exercise(spec, optimizer, batch: int, dropout) -> bool:
    """Whether run_block trains by the exercise's kernels: the one-layer rnn, one stream,
    AdaGrad at a constant rate, no dropout (else by kernels.run_block)."""
    plain = optimizer.name == "adagrad" and optimizer.schedule is None and dropout is None
    return _kernel(spec) and batch == 1 and plain


def cached(spec, exercise: bool = False, dtype="float64", batch: int = 1) -> bool:
    """Whether numba's cache holds the kernels a run of this model calls (else warm_up compiles
    them): warm_up leaves a mark per family (or the exercise), dtype and threading, stamped with
    the engine's sources, whose change makes numba compile again. (numba's index files are one
    per function, whatever family or dtype they were compiled for: their names say nothing.)"""
    return _read(_mark(spec, exercise, dtype, batch)) == sources_stamp()


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


# How long warm_up takes to compile a run's kernels on a first start, in seconds, on the 2-core
# 2.6 GHz machine they were measured on (a first `charwise train --updates 1`: the exercise 16 s,
# an lstm or gru 39 to 40); on a 2-core Zen 3 VM the same took 1.3 to 2.7 times as long. A block
# that runs on threads (_parts) took 1.1 to 1.3 times a family's there (an lstm m 128 batch 1
# 58.9 s, its bulk on threads; an lstm m 256 batch 32 70.3; the lstm on one thread 52.5). warm_up
# keeps this machine's ratio to them (COMPILE_SPEED in the cache folder) and compile_estimate
# scales them by it.
COMPILE_SECONDS = {"exercise": 15.0, "family": 40.0, "threads": 50.0}
COMPILE_SPEED = "charwise-compile-speed.txt"
LOADED_SECONDS = 5.0  # a warm_up this quick loaded its kernels from numba's cache: not timed


def _compile_kind(spec, exercise: bool, batch: int) -> str:
    return "exercise" if exercise else "family" if _parts(spec, batch) == (1, 1) else "threads"


def compile_estimate(spec, exercise: bool = False, batch: int = 1) -> float:
    """About how many seconds warm_up takes where nothing of this model is in numba's cache:
    COMPILE_SECONDS times how long this machine's last whole compile took against them (1 until
    one was timed, or where the record is unreadable)."""
    try:
        ratio = float(_read(cache_folder() / COMPILE_SPEED) or "")
    except ValueError:  # none yet, or unreadable
        ratio = 1.0
    ratio = ratio if 0.05 <= ratio <= 50 else 1.0  # also NaN: a record no compile could make
    return COMPILE_SECONDS[_compile_kind(spec, exercise, batch)] * ratio


def _mark(spec, exercise: bool, dtype, batch: int) -> Path:
    parts, bulk = (1, 1) if exercise else _parts(spec, batch)
    threads = "-threads" if parts > 1 else "-bulk-threads" if bulk > 1 else ""
    panels = "-panels" if not exercise and _tiny_batch(batch) == kernels.GEMM_ROWS else ""
    return cache_folder() / f"{_marks(spec, exercise)}-{np.dtype(dtype).name}{threads}{panels}.txt"


def _marks(spec, exercise: bool) -> str:
    """The start of the names of the marks of this family (or the exercise), every dtype and
    threading."""
    return f"charwise-ready-{'exercise' if exercise else spec.family}"


def _tiny_batch(batch: int) -> int:
    """The streams of warm_up's tiny model: as many as make the steps read W the way `batch`
    streams do (packed in panels from kernels.GEMM_ROWS streams on: kernels._parts_tag)."""
    return kernels.GEMM_ROWS if batch >= kernels.GEMM_ROWS else 2


def _sampling_cached(spec) -> bool:
    return _in_cache(["fast._evaluate" if _kernel(spec) else "fast._model_evaluate"])


def _in_cache(names) -> bool:
    return all(any(cache_folder().glob(f"**/{name}-*.nbi")) for name in names)


WARM: set[tuple] = set()  # (dtype, family, exercise, parts, bulk) ready in this process


def warm_up(dtype, spec, exercise: bool = False, batch: int = 1) -> None:
    """Compile (or load from the cache) the kernels a run of this model calls, and only those:
    training in its dtype (the exercise's kernels, or a block of a tiny model of its family: two
    streams, dropout, Adam, on the threads that `batch` streams of this model run on: _parts;
    one compiled block serves every optimiser and layer count), sampling
    and validation (float64, W in the run's dtype: _packed), so that the run's first block
    measures training only. On a first start the sampling side compiles in a second process
    (_compile_aside), beside training's, and is then loaded from the cache."""
    from charwise.models import ModelSpec
    from charwise.optim import make_optimizer

    parts, bulk = (1, 1) if exercise else _parts(spec, batch)
    key = (str(dtype), spec.family, exercise, parts, bulk)
    if key in WARM:
        return
    # timed for compile_estimate on the first compile of this family (or the exercise) since
    # the engine's sources changed: one that finds another dtype's or threading's kernels in the
    # cache would time too short
    stamp = sources_stamp()
    marks = cache_folder().glob(f"{_marks(spec, exercise)}-*.txt")
    whole = not any(_read(mark) == stamp for mark in marks)
    t0 = time.perf_counter()
    aside = _compile_aside(np.dtype(dtype), spec)
    try:
        data = np.array([0, 1, 2, 1, 0], dtype=np.uint8)
        if exercise:
            params = Params.init(ModelSpec("rnn", K=3, m=2), seed=0).astype(np.dtype(dtype))
            state = TrainState.fresh(params)
            one = np.zeros(1, dtype=np.int64)
            train_block(state, data, one, one + 2, np.ones(1, bool), 0.1, 1e-8, 5.0, np.empty(1))
        else:
            tiny = Params.init(ModelSpec(spec.family, K=3, m=2, layers=2), seed=0).astype(dtype)
            adam = make_optimizer("adam", 0.01)
            B = _tiny_batch(batch)
            state = TrainState.fresh(tiny, batch=B, opt=adam.init_state(tiny))
            starts, lengths = np.array([[0, 1, 2, 0][:B]]), np.array([[2, 1, 2, 1][:B]])
            dropout = reference.Dropout(0.5, 2, np.random.default_rng(0))
            resets = np.ones((1, B), bool)
            args = (state, adam, data, starts, lengths, resets, np.empty(1), dropout)
            with _team(bulk):  # the block of the run's threads (its own types: _parts_tag, bulk)
                kernels.run_block(*args, parts, bulk)
    except BaseException:
        if aside is not None:
            aside.kill()
        raise
    if aside is not None:
        aside.wait()  # its kernels are in the cache now (or, had it failed, compile below)
    warm_sampling(np.dtype(dtype).name, spec.family, spec.layers)
    WARM.add(key)
    try:  # a read-only cache folder: numba compiles every time, and cached() stays False
        _mark(spec, exercise, dtype, batch).write_text(stamp)
        seconds = time.perf_counter() - t0
        if whole and seconds > LOADED_SECONDS:  # no mark, yet cached: marks removed by hand
            ratio = seconds / COMPILE_SECONDS[_compile_kind(spec, exercise, batch)]
            safeio.write_text(cache_folder() / COMPILE_SPEED, f"{ratio:.3f}\n")
    except OSError:
        pass


def warm_sampling(dtype: str, family: str, layers: int) -> None:
    """Compile (or load from the cache) the sampling, advance and validation kernels of a model
    of this family, layer count and dtype."""
    from charwise.models import ModelSpec

    params = Params.init(ModelSpec(family, K=3, m=2, layers=layers), seed=0).astype(dtype)
    data = np.array([0, 1, 2, 1, 0], dtype=np.uint8)
    sample(params, params.spec.zero_state(), 0, 2, np.full(2, 0.5))
    advance(params, params.spec.zero_state(), data[:2])
    evaluate(params, data)


def _compile_aside(dtype, spec):
    """A process compiling warm_sampling's kernels into numba's cache, while this one compiles
    training's (a first start then takes the longer of the two, not their sum), or None where
    that gains nothing: one core (_cores), or those kernels cached already. It imports this
    charwise and writes to this process's cache folder."""
    if _cores() < 2 or _sampling_cached(spec):
        return None
    import charwise

    env = dict(os.environ)
    source = str(Path(charwise.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([source, *filter(None, [env.get("PYTHONPATH")])])
    if numba.config.CACHE_DIR:
        env["NUMBA_CACHE_DIR"] = numba.config.CACHE_DIR
    args = f"{dtype.name!r}, {spec.family!r}, {spec.layers}"
    code = f"from charwise.engines import fast; fast.warm_sampling({args})"
    quiet = subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=quiet, stderr=quiet)


def _indices(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.int64)


def _float64(params: Params) -> Params:
    """Sampling runs in float64 like the reference, which upcasts float32 weights."""
    return params if params.dtype == np.float64 else params.astype(np.float64)


def _h(state) -> np.ndarray:
    """The h of a one-layer, one-stream state: given alone, or as the tuple (h,) of (1, 1, m)."""
    h = state[0] if isinstance(state, tuple) else state
    return np.ascontiguousarray(np.reshape(h, -1), dtype=np.float64)


def _kernel(spec) -> bool:
    """Whether the exercise's kernels run this model (the one-layer rnn)."""
    return spec.family == "rnn" and spec.layers == 1


def loss_and_grads(params: Params, x, y, h0=None, lengths=None, masks=None):
    """Loss, gradients and the last state, by full BPTT: one stream of the one-layer rnn by the
    exercise's kernel (h alone in and out, or a state tuple), else reference.loss_and_grads's
    interface and results with compiled cells."""
    one = np.ndim(x) == 1 and lengths is None and masks is None
    if not (_kernel(params.spec) and one and h0 is not None):
        batch = kernels.loss_and_grads_batch
        return reference.loss_and_grads(params, x, y, h0, lengths, masks, batch)
    x, y = _indices(x), _indices(y)
    b, c, U, W, V = params.arrays()
    arrays = (b, c, np.ascontiguousarray(U.T), W, V)
    ws, z64, grads = _workspace(arrays, len(x))
    h = np.ascontiguousarray(np.reshape(h0[0] if isinstance(h0, tuple) else h0, -1), params.dtype)
    L = _loss_and_grads(*arrays, x, y, h, ws, z64, grads)
    db, dc, dUT, dW, dV = grads
    h_last = ws[2][len(x)].copy()
    last = (h_last.reshape(1, 1, -1),) if isinstance(h0, tuple) else h_last
    return float(L), RNNParams(db, dc, dUT.T.copy(), dW, dV), last


def advance(params: Params, h0, x):
    """The state after reading the characters x from h0 (an h alone in, an h alone out)."""
    if not _kernel(params.spec):
        family, arrays, _, _ = _packed(params)
        h, c = _hc(params.spec, h0)
        with _team(arrays[2].shape[1]):
            _model_advance(family, h, c, arrays, _indices(x))
        return _state(params.spec, h, c, h0)
    p = _float64(params)
    h = _advance(p.b, p.U, p.W, _h(h0), _indices(x))
    return (h.reshape(1, 1, -1),) if isinstance(h0, tuple) else h


def sample(params: Params, h0, x0: int, n: int, uniforms, temperature=1.0, top_p=1.0, stop=-1):
    """n indices drawn one at a time, each fed back; ends early after drawing `stop`."""
    out = np.empty(n, dtype=np.int64)
    u = np.ascontiguousarray(uniforms[:n], dtype=np.float64)
    args = (int(x0), u, float(temperature), float(top_p), int(stop), out)
    if _kernel(params.spec):
        done = _sample(*_float64(params).arrays(), _h(h0), *args)
    else:
        h, c = _hc(params.spec, h0)
        family, arrays, VT, cb = _packed(params)
        with _team(arrays[2].shape[1]):
            done = _model_sample(family, h, c, arrays, VT, cb, *args)
    return out[:done]


def evaluate(params: Params, data, runs=None) -> tuple[float, int]:
    """reference.evaluate compiled: (sum of -log p, characters predicted) in float64."""
    runs = np.array([(0, len(data))] if runs is None else runs, dtype=np.int64).reshape(-1, 2)
    data = np.ascontiguousarray(data)
    if _kernel(params.spec):
        total, count = _evaluate(*_float64(params).arrays(), data, runs)
    else:
        family, arrays, VT, cb = _packed(params, evaluation=True)
        with _team(arrays[2].shape[1]):
            total, count = _model_evaluate(family, params.spec.layers, arrays, VT, cb, data, runs)
    return float(total), int(count)


def run_block(state, optimizer, data, starts, lengths, resets, losses, dropout=None) -> int:
    """reference.run_block in one compiled call: the exercise's kernels for the exercise
    (exercise()), kernels.run_block for every other model."""
    if not exercise(state.spec, optimizer, np.shape(starts)[1], dropout):
        parts, bulk = _parts(state.spec, np.shape(starts)[1])
        args = (state, optimizer, data, starts, lengths, resets, losses, dropout, parts, bulk)
        with _team(bulk):
            return kernels.run_block(*args)
    one = (np.asarray(a)[:, 0] for a in (starts, lengths, resets))
    return train_block(state, data, *one, optimizer.eta, optimizer.eps, optimizer.clip, losses)


def train_block(state: TrainState, data, starts, lengths, resets, eta, eps, clip, losses) -> int:
    """reference.train_block in one compiled call: len(starts) updates, losses[k] per update."""
    p = state.params
    cast = p.dtype.type  # AdaGrad's constants in the parameters' dtype, as numpy would use them
    fstate = np.array([state.smooth_loss, state.best_smooth])
    istate = np.array([state.updates, state.best_update, state.best_x0], dtype=np.int64)
    done = _train_block(
        p.arrays(),
        state.G.arrays(),
        state.best.arrays(),
        state.h_prev,
        state.best_h,
        fstate,
        istate,
        np.ascontiguousarray(data),
        np.ascontiguousarray(starts, dtype=np.int64),
        np.ascontiguousarray(lengths, dtype=np.int64),
        np.ascontiguousarray(resets, dtype=np.bool_),
        cast(eta),
        cast(eps),
        cast(clip),
        losses,
        p.dtype == np.float64,  # newton: see _adagrad
    )
    state.smooth_loss, state.best_smooth = float(fstate[0]), float(fstate[1])
    state.updates, state.best_update, state.best_x0 = (int(v) for v in istate)
    return int(done)
