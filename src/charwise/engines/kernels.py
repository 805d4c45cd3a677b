"""The fast engine's models beyond the exercise (any family, layers, batch, dropout, optimiser,
float64 or float32): the reference's equations (engines/reference.py, models/*.py) in the
parameters' dtype, a whole block of updates in one compiled call (run_block).

Each family's cell is a pair of compiled functions with one interface (cell_forward and
cell_backward, chosen while compiling from the family's tag): numba compiles the update and the
block once per family and dtype, only for the family in use, and caches each. Per step, the
recurrent products of all streams are engines/matvec.py's vector code (row-major (B, m) states;
W packed in panels once per update from 4 streams on: _panels), a large layer's units in parts
on numba's threads (_steps), and the gates are computed by a vectorisable sigmoid and tanh
(engines/numerics.py: no libm call per entry; float32 arithmetic for float32 arrays, else
float64); the LSTM keeps tanh(c_t) from its forward pass for the backward one.
Around the cells, _loss_and_grads does what reference.loss_and_grads_batch does, with products over
all steps at once (dL/dh^L_t for every t is one product; BLAS for large ones, _product), softmax
and loss in one pass (float64 inside), the first layer's input terms read by the steps from U^T at
the characters themselves (U's columns never gathered into a (T, B, G) array), and the input
weights' gradient gathered by a loop (numpy's np.add.at is ten times slower).
_block is the loop of reference.run_block around it: chunks, resets, dropout masks from draws taken
before the call, the finite check, the smooth loss and best snapshot, and each optimiser's step.

Rounding: the reference's sums in other orders (BLAS, engines/matvec.py), fused multiply-adds
(numerics.FASTMATH) and the exp and tanh of numerics (a few ulp): float64 results equal the
reference's to ~1e-13. In float32 every array is float32; the nonlinearities are float32 to a few
ulp (numerics), the loss and softmax are evaluated in float64 before being rounded.
"""

from __future__ import annotations

import math

import numpy as np

from charwise.engines.matvec import (
    GEMM_ROWS,
    gemm,
    gemm_nt,
    gemm_packed,
    gemm_tall,
    gemm_tall_parts,
    pack,
    split_at,
)
from charwise.engines.numerics import (
    ONE32,  # the cells' 1 - x: float32 stays float32, float64 promotes it exactly (as 1.0)
    _all_finite,
    _nll,
    _smooth,
    exact,
    jit,
    numba,
    pjit,
    sigmoid,
    tanh,
)
from charwise.params import Params


@jit
def _copy(dst, src):
    """dst[...] = src for 2-d arrays of one shape, any layout: a loop (numpy's broadcasting
    assignment compiles its error path, string formatting and all, at every use: seconds)."""
    for i in range(dst.shape[0]):
        for j in range(dst.shape[1]):
            dst[i, j] = src[i, j]


@jit
def _units(q, parts, m):
    """The units [j0, j1) of part q when a layer's m units are split in `parts`: split points
    at multiples of UNIT_STEP, so that every part but a layer's narrowest has at least
    one vector of units (see UNIT_STEP)."""
    return split_at(q, parts, m, UNIT_STEP), split_at(q + 1, parts, m, UNIT_STEP)


def _gate_products(h, W, panels, z, gates, j0, j1, first):
    """z[:, g m + j] = h @ W[g m + j]^T for each gate g and unit j in [j0, j1): these units'
    part of h @ W^T (compiled code only). From W^T's panels where panels is 1-d (_panels;
    matvec.pack, packed at the first step by the part that reads them), else by dot products
    of W's rows in place."""
    raise NotImplementedError


def _back_product(dz, W, panels, out, j0, j1, first):
    """out[:, j0:j1] = dz @ W[:, j0:j1], W^T dL/dz_{t+1} for these units (compiled code only):
    from W's panels where panels is 1-d, as _gate_products, else by W's rows in place."""
    raise NotImplementedError


def _panels(W, parts):
    """The packed copy of W that the steps read where the parts tag says so (_parts_tag), else
    a 2-d array of no entries (compiled code only): a step's products from W's panels ran
    1.3-1.8x faster than from W in place (lstm m 256, batch 32, one thread, AVX2 Zen 3)."""
    raise NotImplementedError


@numba.extending.overload(_gate_products)
def _gate_products_by_panels(h, W, panels, z, gates, j0, j1, first):
    if panels.ndim == 1:

        def from_panels(h, W, panels, z, gates, j0, j1, first):
            m = h.shape[1]
            for g in range(gates):
                a, b = g * m + j0, g * m + j1
                if first:
                    pack(W.T, panels, a, b)
                gemm_packed(h, panels, a, b, z)

        return from_panels

    def in_place(h, W, panels, z, gates, j0, j1, first):
        m = h.shape[1]
        for g in range(gates):
            a, b = g * m + j0, g * m + j1
            gemm_nt(h, W[a:b], z[:, a:b])

    return in_place


@numba.extending.overload(_back_product)
def _back_product_by_panels(dz, W, panels, out, j0, j1, first):
    if panels.ndim == 1:

        def from_panels(dz, W, panels, out, j0, j1, first):
            if first:
                pack(W, panels, j0, j1)
            gemm_packed(dz, panels, j0, j1, out)

        return from_panels
    return lambda dz, W, panels, out, j0, j1, first: gemm(dz, W[:, j0:j1], out[:, j0:j1])


@numba.extending.overload(_panels)
def _panels_by_tag(W, parts):
    if isinstance(parts.dtype, numba.types.Float):
        return lambda W, parts: np.empty(W.size, W.dtype)
    return lambda W, parts: np.empty((0, 0), W.dtype)


# Parts of a layer split at multiples of these many units: a float32 vector of AVX-512, so that
# every part's products run the vector code when the layer's do (a part with fewer columns
# than a vector takes scalar code, whose results, inlined there, were seen to differ in the
# last bit); fast._chunks gives each part at least 2 UNIT_STEP units.
UNIT_STEP = 16


# Each family's forward and backward step over units [j0, j1) of all streams (part q of parts);
# a step is these for every part, one per thread where parts > 1 (_steps): the forward's
# products need all of h_{t-1}, the backward's all of dL/dz_{t+1}, so the parts wait for each
# other once per step and need nothing else from each other. Every entry is computed as with
# one part (engines/matvec.py: a product's entry does not depend on the columns around it).
# The loops run over 1-d slices from 0 (LLVM vectorises those; loops over offset indices of
# the full rows ran 1.6x slower).
@jit
def _gates(row, j0, j1, n):
    """The n (3 or 4) gate blocks of a row (n m entries, gate-major), each restricted to units
    [j0, j1): a tuple (a list would be allocated at every call)."""
    m = row.size // n
    a, b, c = row[j0:j1], row[m + j0 : m + j1], row[2 * m + j0 : 2 * m + j1]
    return (a, b, c, row[3 * m + j0 : 3 * m + j1] if n == 4 else c[:0])


@jit
def _add_input(z, u, b):
    """z = (z + u) + b: the gates' sums, W h_{t-1} (in z) and the input term and bias."""
    for j in range(z.size):
        z[j] = (z[j] + u[j]) + b[j]


@jit
def _rnn_forward_units(q, parts, t, Ux, rows, W, Wp, b, h0, H, a):
    T, B, m = H.shape
    j0, j1 = _units(q, parts, m)
    _gate_products(H[t - 1] if t else h0, W, Wp, a, 1, j0, j1, t == 0)
    for k in range(B):
        _add_input(a[k, j0:j1], Ux[rows[t, k], j0:j1], b[j0:j1])
        tanh(a[k, j0:j1], H[t, k, j0:j1])


@jit
def _rnn_backward_units(q, parts, t, dH, H, W, Wp, dA, dnext):
    T, B, m = H.shape
    j0, j1 = _units(q, parts, m)
    if t < T - 1:
        _back_product(dA[t + 1], W, Wp, dnext, j0, j1, t == T - 2)
    for k in range(B):
        da, dh, dn, h = dA[t, k, j0:j1], dH[t, k, j0:j1], dnext[k, j0:j1], H[t, k, j0:j1]
        for j in range(j1 - j0):
            da[j] = (dh[j] + dn[j]) * (ONE32 - h[j] ** 2)


@jit
def _lstm_forward_units(q, parts, t, Ux, rows, W, Wp, b, h0, c0, H, C, TC, gates, z):
    """TC: tanh(c_t), kept for the backward pass."""
    T, B, m = H.shape
    j0, j1 = _units(q, parts, m)
    _gate_products(H[t - 1] if t else h0, W, Wp, z, 4, j0, j1, t == 0)
    c_prev = C[t - 1] if t else c0
    bs = _gates(b, j0, j1, 4)
    for k in range(B):
        zs, us, gs = (
            _gates(z[k], j0, j1, 4),
            _gates(Ux[rows[t, k]], j0, j1, 4),
            _gates(gates[t, k], j0, j1, 4),
        )
        for g in range(4):
            _add_input(zs[g], us[g], bs[g])
        sigmoid(zs[0], gs[0])
        sigmoid(zs[1], gs[1])
        tanh(zs[2], gs[2])
        sigmoid(zs[3], gs[3])
        i, f, g, o = gs[0], gs[1], gs[2], gs[3]
        c, cp, tc, h = C[t, k, j0:j1], c_prev[k, j0:j1], TC[t, k, j0:j1], H[t, k, j0:j1]
        for j in range(j1 - j0):
            c[j] = f[j] * cp[j] + i[j] * g[j]
        tanh(c, tc)
        for j in range(j1 - j0):
            h[j] = o[j] * tc[j]


@jit
def _lstm_backward_units(q, parts, t, dH, C, TC, gates, c0, W, Wp, dZ, dh_next, dc_next):
    T, B, m = C.shape
    j0, j1 = _units(q, parts, m)
    if t < T - 1:
        _back_product(dZ[t + 1], W, Wp, dh_next, j0, j1, t == T - 2)
    c_prev = C[t - 1] if t else c0
    for k in range(B):
        i, f, g, o = _gates(gates[t, k], j0, j1, 4)
        di, df, dg, do = _gates(dZ[t, k], j0, j1, 4)
        tc, cp, dn = TC[t, k, j0:j1], c_prev[k, j0:j1], dh_next[k, j0:j1]
        dHt, dcn = dH[t, k, j0:j1], dc_next[k, j0:j1]
        for j in range(j1 - j0):
            dh = dHt[j] + dn[j]
            dc = dcn[j] + dh * o[j] * (ONE32 - tc[j] * tc[j])
            di[j] = dc * g[j] * i[j] * (ONE32 - i[j])
            df[j] = dc * cp[j] * f[j] * (ONE32 - f[j])
            dg[j] = dc * i[j] * (ONE32 - g[j] * g[j])
            do[j] = dh * tc[j] * o[j] * (ONE32 - o[j])
            dcn[j] = dc * f[j]


@jit
def _gru_forward_units(q, parts, t, Ux, rows, W, Wp, b, bhn, h0, H, gates, Hn, wh, a):
    """gates: r, z, n after their nonlinearity; Hn: W_n h_{t-1} + b_hn."""
    T, B, m = H.shape
    j0, j1 = _units(q, parts, m)
    h_prev = H[t - 1] if t else h0
    _gate_products(h_prev, W, Wp, wh, 3, j0, j1, t == 0)
    bs, bn = _gates(b, j0, j1, 3), bhn[j0:j1]
    for k in range(B):
        ws, us, gs = (
            _gates(wh[k], j0, j1, 3),
            _gates(Ux[rows[t, k]], j0, j1, 3),
            _gates(gates[t, k], j0, j1, 3),
        )
        for g in range(2):  # r, z: sigmoid((U u + b) + W h)
            u, bg, w = us[g], bs[g], ws[g]
            for j in range(j1 - j0):
                w[j] = (u[j] + bg[j]) + w[j]
            sigmoid(w, gs[g])
        r, z, n = gs[0], gs[1], gs[2]
        hn, an, u, bg, w = Hn[t, k, j0:j1], a[k, j0:j1], us[2], bs[2], ws[2]
        for j in range(j1 - j0):
            hn[j] = w[j] + bn[j]
            an[j] = (u[j] + bg[j]) + r[j] * hn[j]
        tanh(an, n)
        h, hp = H[t, k, j0:j1], h_prev[k, j0:j1]
        for j in range(j1 - j0):
            h[j] = (ONE32 - z[j]) * n[j] + z[j] * hp[j]


@jit
def _gru_backward_units(q, parts, t, dH, H, gates, Hn, h0, W, Wp, dX, dWh, dh_next, dh_all):
    T, B, m = H.shape
    j0, j1 = _units(q, parts, m)
    if t < T - 1:
        _back_product(dWh[t + 1], W, Wp, dh_next, j0, j1, t == T - 2)
        for k in range(B):
            dn, da = dh_next[k, j0:j1], dh_all[k, j0:j1]
            for j in range(j1 - j0):
                dn[j] = da[j] + dn[j]
    h_prev = H[t - 1] if t else h0
    for k in range(B):
        r, z, n, _ = _gates(gates[t, k], j0, j1, 3)
        dr, dz, dx_n, _ = _gates(dX[t, k], j0, j1, 3)
        wr, wz, wn, _ = _gates(dWh[t, k], j0, j1, 3)
        dHt, dnext, da = dH[t, k, j0:j1], dh_next[k, j0:j1], dh_all[k, j0:j1]
        hn, hp = Hn[t, k, j0:j1], h_prev[k, j0:j1]
        for j in range(j1 - j0):
            dh = dHt[j] + dnext[j]
            dn = dh * (ONE32 - z[j]) * (ONE32 - n[j] * n[j])
            dr[j] = dn * hn[j] * r[j] * (ONE32 - r[j])
            dz[j] = dh * (hp[j] - n[j]) * z[j] * (ONE32 - z[j])
            dx_n[j] = dn
            wr[j] = dr[j]
            wz[j] = dz[j]
            wn[j] = dn * r[j]
            da[j] = dh * z[j]


# ---- each family's cell behind one interface, for the compiled update below --------------------
FAMILIES = ("rnn", "lstm", "gru")
# A family as the compiled code sees it: a tuple whose length is the family's index in FAMILIES
# plus one. Its length is part of its type, so numba compiles (and caches) the update and the
# block for each family apart, with that family's cell alone, and a call from Python costs no
# more than any other.
TAGS = {family: (0,) * (i + 1) for i, family in enumerate(FAMILIES)}


def cell_forward(family, Ux, rows, W, b, bhn, h0, c0, H, S1, S2, S3, parts):
    """The forward pass of the family tagged `family` (compiled code only): writes the hidden
    states H and what backward needs, S1, S2, S3 (_workspace gives their widths; the lstm's S1
    is c), each step in `parts` parts of the units (_steps). The input term of stream k at step
    t is the row Ux[rows[t, k]] (rows (T, B)): the first layer's U^T read at the characters
    themselves, so that U's columns are not gathered into a (T, B, G) array first."""
    raise NotImplementedError


def cell_backward(family, dH, H, S1, S2, S3, h0, c0, W, dU, dZ, parts):
    """The backward pass of the family tagged `family` (compiled code only): writes dU =
    dL/d(U u_t + b) and, for the gru only, dZ = dL/dz_t, whose product with h_{t-1} is dW;
    returns the two (dU twice but for the gru)."""
    raise NotImplementedError


# Chosen while compiling, from the family's tag (TAGS): only that family's code is compiled.
@numba.extending.overload(cell_forward)
def _cell_forward(family, Ux, rows, W, b, bhn, h0, c0, H, S1, S2, S3, parts):
    step = STEP_TAGS[family.count - 1]

    def forward(family, Ux, rows, W, b, bhn, h0, c0, H, S1, S2, S3, parts):
        (T, B), G = rows.shape, Ux.shape[1]
        z = np.empty((B, G), Ux.dtype)  # the gates' sums
        a = np.empty((B, H.shape[2]), Ux.dtype)  # the gru's candidate sums
        Wp = _panels(W, parts)
        args = _forward_args(family, Ux, rows, W, Wp, b, bhn, h0, c0, H, S1, S2, S3, z, a)
        for t in range(T):
            _steps(step, parts, t, args)

    return forward


@numba.extending.overload(cell_backward)
def _cell_backward(family, dH, H, S1, S2, S3, h0, c0, W, dU, dZ, parts):
    step = STEP_TAGS[family.count + 2]

    def backward(family, dH, H, S1, S2, S3, h0, c0, W, dU, dZ, parts):
        T, B, m = H.shape
        dh_next = np.zeros((B, m), H.dtype)  # W^T dL/dz_{t+1} (the gru's: plus dL/dh_t z)
        dc_next = np.zeros((B, m), H.dtype)  # the lstm's dL/dc_{t+1} f_{t+1}
        dh_all = np.empty((B, m), H.dtype)  # the gru's dL/dh_t z_t
        Wp = _panels(W, parts)
        args = _backward_args(
            family, dH, H, S1, S2, S3, h0, c0, W, Wp, dU, dZ, dh_next, dc_next, dh_all
        )
        for t in range(T - 1, -1, -1):
            _steps(step, parts, t, args)
        return (dU, dZ) if len(family) == 3 else (dU, dU)

    return backward


def _forward_args(family, Ux, rows, W, Wp, b, bhn, h0, c0, H, S1, S2, S3, z, a):
    """The family's forward units function's arguments after (q, parts, t) (compiled only)."""
    raise NotImplementedError


def _backward_args(family, dH, H, S1, S2, S3, h0, c0, W, Wp, dU, dZ, dh_next, dc_next, dh_all):
    """The family's backward units function's arguments after (q, parts, t) (compiled only)."""
    raise NotImplementedError


@numba.extending.overload(_forward_args)
def _forward_args_by_tag(family, Ux, rows, W, Wp, b, bhn, h0, c0, H, S1, S2, S3, z, a):
    if family.count == 1:
        return lambda family, Ux, rows, W, Wp, b, bhn, h0, c0, H, S1, S2, S3, z, a: (
            (Ux, rows, W, Wp, b, h0, H, z)
        )
    if family.count == 2:
        return lambda family, Ux, rows, W, Wp, b, bhn, h0, c0, H, S1, S2, S3, z, a: (
            (Ux, rows, W, Wp, b, h0, c0, H, S1, S2, S3, z)
        )
    return lambda family, Ux, rows, W, Wp, b, bhn, h0, c0, H, S1, S2, S3, z, a: (
        (Ux, rows, W, Wp, b, bhn, h0, H, S1, S2, z, a)
    )


@numba.extending.overload(_backward_args)
def _backward_args_by_tag(
    family, dH, H, S1, S2, S3, h0, c0, W, Wp, dU, dZ, dh_next, dc_next, dh_all
):
    if family.count == 1:
        return lambda family, dH, H, S1, S2, S3, h0, c0, W, Wp, dU, dZ, dh_next, dc_next, dh_all: (
            (dH, H, W, Wp, dU, dh_next)
        )
    if family.count == 2:
        return lambda family, dH, H, S1, S2, S3, h0, c0, W, Wp, dU, dZ, dh_next, dc_next, dh_all: (
            (dH, S1, S2, S3, c0, W, Wp, dU, dh_next, dc_next)
        )
    return lambda family, dH, H, S1, S2, S3, h0, c0, W, Wp, dU, dZ, dh_next, dc_next, dh_all: (
        (dH, H, S1, S2, h0, W, Wp, dU, dZ, dh_next, dh_all)
    )


# Which units function a step runs, as a tag of that length (see TAGS).
STEP_TAGS = tuple((0,) * (i + 1) for i in range(6))


def _units_step(step, q, parts, t, args):
    """Part q of step t of the units function tagged `step`, on args (compiled code only)."""
    raise NotImplementedError


@numba.extending.overload(_units_step)
def _units_step_by_tag(step, q, parts, t, args):
    units = (
        _rnn_forward_units,
        _lstm_forward_units,
        _gru_forward_units,
        _rnn_backward_units,
        _lstm_backward_units,
        _gru_backward_units,
    )[step.count - 1]
    return lambda step, q, parts, t, args: units(q, parts, t, *args)


def _steps(step, parts, t, args):
    """Step t over all units (compiled code only): one call for parts of length 1, else one part
    per thread of numba's. parts is a tuple whose length is the count (_parts_tag), so that a run on
    one thread compiles no threaded code (numba's parallel loops took 12 of 43 s to compile)."""
    raise NotImplementedError


@numba.extending.overload(_steps)
def _steps_by_count(step, parts, t, args):
    if parts.count == 1:
        return lambda step, parts, t, args: _units_step(step, 0, 1, t, args)
    return lambda step, parts, t, args: _parallel_steps(step, len(parts), t, args)


# Products over a chunk of at least this many multiply-adds go to BLAS (numba's np.dot: SciPy's
# OpenBLAS, on its own threads): the lstm m 256, batch 32 update's dW = dZ^T H (839 M) took 20-31
# ms by matvec.gemm_tall on both cores of an AVX2 Zen 3, 14-16 by OpenBLAS, and the whole update
# 97 ms against 120 side by side; the lstm m 128 at batch 1 (dW 1.6 M) was no faster by BLAS.
BLAS_MACS = 1 << 22


def _product(A, B, C, parts):
    """C = A @ B over a whole chunk (compiled code only): BLAS from BLAS_MACS multiply-adds,
    else _own_product (the same bits for any number of parts either way)."""
    raise NotImplementedError


@numba.extending.overload(_product)
def _product_by_size(A, B, C, parts):
    def product(A, B, C, parts):
        if A.shape[0] * A.shape[1] * B.shape[1] >= BLAS_MACS:
            np.dot(A, B, C)
        else:
            _own_product(A, B, C, parts)

    return product


def _own_product(A, B, C, parts):
    """C = A @ B by matvec.gemm_tall, its rows in parts on numba's threads for parts of length
    over 1 (the same bits; compiled code only)."""
    raise NotImplementedError


@numba.extending.overload(_own_product)
def _own_product_by_count(A, B, C, parts):
    if parts.count == 1:
        return lambda A, B, C, parts: gemm_tall(A, B, C)
    return lambda A, B, C, parts: gemm_tall_parts(A, B, C, len(parts))


def _parts_tag(n: int, B: int) -> tuple:
    """The parts argument of the compiled code for n parts of the units of B streams: a tuple of
    that length, of floats where the steps read W packed in panels (from GEMM_ROWS streams, a
    block of gemm_packed's rows: _panels), else of ints, so that a run compiles one of the two
    ways (both in one function took a threaded lstm's update from 66 to 99 s to compile)."""
    return (0.0 if B >= GEMM_ROWS else 0,) * n


@pjit
def _parallel_steps(step, parts, t, args):
    for q in numba.prange(parts):
        _units_step(step, q, parts, t, args)


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
def _scatter_rows(x, rows, out):
    """out[x[r]] += rows[r] for every r in order (np.add.at's order), out zeroed first."""
    out[:] = 0.0
    for r in range(x.size):
        o, src = out[x[r]], rows[r]
        for j in range(src.size):
            o[j] = o[j] + src[j]


@jit
def _row_sums(A, out):
    """out = the sum of the rows of A, in row order."""
    out[:] = 0.0
    for r in range(A.shape[0]):
        for j in range(out.size):
            out[j] = out[j] + A[r, j]


@jit
def _workspace(family, L, T, B, V, G, drop):
    """The arrays one update of up to T steps writes, in V's dtype: (Ux (the input terms of
    layers 2..L; none for one layer), then H, S1, S2, S3 of every layer (S1-S3 as wide as the
    family's cell needs), the layers' masked inputs and h^L (dropout), dL/do, dL/dh, dU and dZ
    (the cell backward's), h_{t-1}, dU^T of layer 1)."""
    K, m = V.shape
    dt = V.dtype
    code = len(family) - 1
    w1, w2, w3 = (0, 0, 0) if code == 0 else (m, m, G) if code == 1 else (G, m, 0)
    d = L if drop else 0
    return (
        np.empty((T if L > 1 else 0, B, G), dt),
        np.empty((L, T, B, m), dt),
        np.empty((L, T, B, w1), dt),
        np.empty((L, T, B, w2), dt),
        np.empty((L, T, B, w3), dt),
        np.empty((d, T, B, m), dt),
        np.empty((T if drop else 0, B, m), dt),
        np.empty((T * B, K), dt),
        np.empty((T, B, m), dt),
        np.empty((T, B, G), dt),
        np.empty((T if code == 2 else 0, B, G), dt),
        np.empty((T, B, m), dt),
        np.empty((K, G), dt),
    )


@jit
def _loss_and_grads(
    family, X, Y, lengths, h0, c0, masks, layers, V, c, grads, last, ws, parts, bulk
):
    """reference.loss_and_grads_batch for B streams, in the parameters' dtype: returns the loss;
    fills grads and last = (h, c) after each stream's last real step.

    layers = (U, W, b, b_hn) typed lists, one entry per layer (b_hn of no entries but for the
    gru); grads = the same four lists, then dV, dc; h0, c0 (L, B, m) (c0 of no units but for
    the lstm); masks (L, T', B, m) with T' >= T, or an empty array for no dropout; ws: a
    _workspace of at least T steps; parts: the steps' (_steps), bulk: the products' over the
    chunk (_product), each a tuple whose length is the count.
    """
    Us, Ws, bs, bhns = layers
    dUs, dWs, dbs, dbhns, dV, dc = grads
    Ux, Hs, S1s, S2s, S3s, inputs, top, dO, dH, dU, dZ, H_prev, dUT = ws
    T, B = X.shape
    L, G, m = len(Ws), Ws[0].shape[0], Ws[0].shape[1]
    TB = T * B
    drop = masks.size > 0
    x, y = X.ravel(), Y.ravel()
    real = np.empty(TB, np.bool_)
    for t in range(T):
        for k in range(B):
            real[t * B + k] = t < lengths[k]
    Ux, dO, dH, dU, dZ, H_prev = Ux[:T], dO[:TB], dH[:T], dU[:T], dZ[:T], H_prev[:T]
    for l in range(L):
        if l == 0:  # U's column x_t (the row x_t of U^T) for every step and stream
            inputs_l, rows = np.ascontiguousarray(Us[0].T), X
        else:
            below = Hs[l - 1, :T]
            if drop:  # the layer's input: the layer below's h, masked
                below = np.multiply(below, masks[l - 1, :T], inputs[l, :T])
            inputs_l, rows = Ux.reshape(TB, G), np.arange(TB).reshape(T, B)  # Ux's rows in order
            _product(below.reshape(TB, m), np.ascontiguousarray(Us[l].T), inputs_l, bulk)
        H, S1, S2, S3 = Hs[l, :T], S1s[l, :T], S2s[l, :T], S3s[l, :T]
        args = (inputs_l, rows, Ws[l], bs[l], bhns[l], h0[l], c0[l], H, S1, S2, S3, parts)
        cell_forward(family, *args)
    h_top = Hs[L - 1, :T]
    if drop:
        h_top = np.multiply(h_top, masks[L - 1, :T], top[:T])
    flat_top = h_top.reshape(TB, m)
    _product(flat_top, np.ascontiguousarray(V.T), dO, bulk)
    loss = _softmax_loss(dO, c, y, real, 1.0 / B) / B
    _product(dO.T, flat_top, dV, bulk)
    _row_sums(dO, dc)
    _product(dO, V, dH.reshape(TB, m), bulk)
    if drop:
        dH *= masks[L - 1, :T]
    for l in range(L - 1, -1, -1):
        H, S1, S2, S3 = Hs[l, :T], S1s[l, :T], S2s[l, :T], S3s[l, :T]
        args = (dH, H, S1, S2, S3, h0[l], c0[l], Ws[l], dU, dZ, parts)
        dUx, dZx = cell_backward(family, *args)
        _copy(H_prev[0], h0[l])
        _copy(H_prev[1:].reshape((T - 1) * B, m), H[: T - 1].reshape((T - 1) * B, m))
        flat, flat_z = dUx.reshape(TB, G), dZx.reshape(TB, G)
        _product(flat_z.T, H_prev.reshape(TB, m), dWs[l], bulk)
        _row_sums(flat, dbs[l])
        if bhns[l].size:
            _row_sums(flat_z[:, 2 * m :], dbhns[l])
        if l == 0:
            _scatter_rows(x, flat, dUT)
            _copy(dUs[0], dUT.T)
        else:
            below = inputs[l, :T] if drop else Hs[l - 1, :T]
            _product(flat.T, below.reshape(TB, m), dUs[l], bulk)
            _product(flat, Us[l], dH.reshape(TB, m), bulk)
            if drop:
                dH *= masks[l - 1, :T]
    h_last, c_last = last
    for l in range(L):
        for k in range(B):
            n = lengths[k]
            _copy(h_last[l, k : k + 1], Hs[l, n - 1, k : k + 1] if n > 0 else h0[l, k : k + 1])
            if c_last.shape[2]:  # the lstm's c
                cl = S1s[l, n - 1, k : k + 1] if n > 0 else c0[l, k : k + 1]
                _copy(c_last[l, k : k + 1], cl)
    return loss


# ---- the optimisers' steps (optim.py), compiled: one pass over each array ---------------------
ADAGRAD, RMSPROP, ADAM = 0, 1, 2
OPTIMIZER_CODES = {"adagrad": ADAGRAD, "rmsprop": RMSPROP, "adam": ADAM}


@jit
def _clip(g, clip):
    return clip if g > clip else -clip if g < -clip else g


@jit
def _in(p, *values):
    """The values as p's dtype, in an array: numpy's rule for a Python float meeting a float32
    array (optim.py's steps run in the array's dtype), so that a float32 step is float32
    arithmetic, as the reference's, and a float64 one unchanged."""
    out = np.empty(len(values), p.dtype)
    for i in range(len(values)):
        out[i] = values[i]
    return out


@exact(4)
def _adagrad(p, g, G, k):
    """k = (lr, eps, clip) in p's dtype (_in)."""
    lr, eps, clip = k
    for i in range(p.size):
        gi = _clip(g[i], clip)
        G[i] = G[i] + gi * gi
        p[i] = p[i] - lr * gi / math.sqrt(G[i] + eps)


@exact(4)
def _rmsprop(p, g, v, k):
    """k = (lr, eps, clip, alpha, 1 - alpha) in p's dtype."""
    lr, eps, clip, alpha, rest = k
    for i in range(p.size):
        gi = _clip(g[i], clip)
        v[i] = alpha * v[i] + rest * gi * gi
        p[i] = p[i] - lr * gi / (math.sqrt(v[i]) + eps)


@exact(5)
def _adam(p, g, m, v, k):
    """k = (lr, eps, clip, beta1, 1 - beta1, beta2, 1 - beta2, 1 - beta1^t, 1 - beta2^t) in p's
    dtype."""
    lr, eps, clip, beta1, rest1, beta2, rest2, c1, c2 = k
    for i in range(p.size):
        gi = _clip(g[i], clip)
        m[i] = beta1 * m[i] + rest1 * gi
        v[i] = beta2 * v[i] + rest2 * gi * gi
        p[i] = p[i] - lr * (m[i] / c1) / (math.sqrt(v[i] / c2) + eps)


@jit
def _step(code, consts, ps, gs, s1, s2, lr, t, q, parts):
    """Part q of `parts` of one update of every array of ps (flat views) from gs: the same part
    of each array; s1, s2: the optimiser's slots (G; v; m and v); consts = (eps, clip, alpha,
    beta1, beta2)."""
    eps, clip, alpha, beta1, beta2 = consts
    for i in range(len(ps)):
        n = ps[i].size
        k = slice(split_at(q, parts, n, STEP_ALIGN), split_at(q + 1, parts, n, STEP_ALIGN))
        p, g, a = ps[i][k], gs[i][k], s1[i][k]
        if code == ADAM:
            c1, c2 = 1.0 - beta1**t, 1.0 - beta2**t
            ks = _in(p, lr, eps, clip, beta1, 1.0 - beta1, beta2, 1.0 - beta2, c1, c2)
            _adam(p, g, a, s2[i][k], ks)
        elif code == RMSPROP:
            _rmsprop(p, g, a, _in(p, lr, eps, clip, alpha, 1.0 - alpha))
        else:
            _adagrad(p, g, a, _in(p, lr, eps, clip))


STEP_ALIGN = 16  # a part of an array starts at a multiple of this many entries (a cache line)


def _update(code, consts, ps, gs, s1, s2, lr, t, bulk):
    """One update of every array (_step): one call for bulk of length 1, else one part of each
    array per thread of numba's (the same bits: every entry's step is its own; compiled code
    only). bulk is a tuple whose length is the count, as _steps' parts."""
    raise NotImplementedError


@numba.extending.overload(_update)
def _update_by_count(code, consts, ps, gs, s1, s2, lr, t, bulk):
    if bulk.count == 1:
        return lambda code, consts, ps, gs, s1, s2, lr, t, bulk: _step(
            code, consts, ps, gs, s1, s2, lr, t, 0, 1
        )
    return lambda code, consts, ps, gs, s1, s2, lr, t, bulk: _parallel_update(
        code, consts, ps, gs, s1, s2, lr, t, len(bulk)
    )


@pjit
def _parallel_update(code, consts, ps, gs, s1, s2, lr, t, parts):
    for q in numba.prange(parts):
        _step(code, consts, ps, gs, s1, s2, lr, t, q, parts)


# ---- a block of updates in one call -----------------------------------------------------------
@jit
def _block(family, data, starts, lengths, resets, uniforms, p, lrs, losses, model, run):
    """The loop of reference.run_block over len(starts) updates; returns how many were done.

    model = (layers, V, c, grads, flat): as _loss_and_grads, and flat = (params, grads, best,
    slot 1, slot 2) as typed lists of flat views, in the order of Params.names();
    run = (carry (h, c), best carry (h, c), fstate [smooth, best_smooth], istate [updates,
    best_update, best_x0], optimiser code, its constants, the parts of each step (_steps), the
    bulk tag: the parts of the products over a chunk and of the optimiser's step (_update));
    uniforms (updates, L, B, tau, m): the dropout draws (rate p), or empty.
    """
    layers, V, c, grads, flat = model
    carry, best_carry, fstate, istate, code, consts, parts, bulk = run
    ps, gs, best, s1, s2 = flat
    h, cc = carry
    L, B, m = h.shape
    dt = V.dtype
    keep = 1.0 / (1.0 - p)  # a kept unit's mask value, rounded to dt as the reference's cast
    last = (np.empty_like(h), np.empty_like(cc))
    G, drop = layers[1][0].shape[0], uniforms.size > 0
    Tmax = max(lengths.max(), 1)
    ws = _workspace(family, L, Tmax, B, V, G, drop)
    XY = np.zeros((2, Tmax, B), np.int64)
    masks = np.empty((L if drop else 0, Tmax, B, m), dt)
    for k in range(len(starts)):
        for b in range(B):
            if resets[k, b]:
                h[:, b] = 0.0
                cc[:, b] = 0.0
        T = max(lengths[k].max(), 1)
        X, Y = XY[0, :T], XY[1, :T]
        X[:] = 0
        Y[:] = 0
        for b in range(B):
            for t in range(lengths[k, b]):
                X[t, b] = data[starts[k, b] + t]
                Y[t, b] = data[starts[k, b] + t + 1]
        for l in range(masks.shape[0]):
            for t in range(T):
                for b in range(B):
                    for j in range(m):
                        masks[l, t, b, j] = keep if uniforms[k, l, b, t, j] >= p else 0.0
        loss = _loss_and_grads(
            family, X, Y, lengths[k], h, cc, masks, layers, V, c, grads, last, ws, parts, bulk
        )
        losses[k] = loss
        finite = math.isfinite(loss)
        for g in gs:
            finite = finite and _all_finite(g)
        if not finite:
            return k
        fstate[0] = loss if istate[0] == 0 else _smooth(fstate[0], loss)
        if fstate[0] < fstate[1]:
            for i in range(len(ps)):
                _copy(best[i].reshape(1, -1), ps[i].reshape(1, -1))
            _copy(best_carry[0], h[:, 0])
            _copy(best_carry[1], cc[:, 0])
            istate[2] = X[0, 0]
            istate[1] = istate[0] + 1
            fstate[1] = fstate[0]
        _update(code, consts, ps, gs, s1, s2, lrs[k], istate[0] + 1, bulk)
        _copy(h.reshape(L * B, m), last[0].reshape(L * B, m))
        w = cc.shape[2]  # m for the lstm's c, else 0
        _copy(cc.reshape(L * B, w), last[1].reshape(L * B, w))
        istate[0] += 1
    return len(starts)


# ---- the engine's entry points ----------------------------------------------------------------
MASK_BYTES = 64 * 2**20  # dropout draws held at once: a block runs in parts of at most this


def _lists(params: Params):
    """The layers' (U, W, b, b_hn) as typed lists of the arrays themselves (b_hn zeros but for
    the gru), then V and c."""
    spec = params.spec
    names = [spec.layer_names(layer) for layer in range(1, spec.layers + 1)]
    bhn = [params[n["bhn"]] if "bhn" in n else np.zeros(0, params.dtype) for n in names]
    return (
        (
            numba.typed.List([params[n["U"]] for n in names]),
            numba.typed.List([params[n["W"]] for n in names]),
            numba.typed.List([params[n["b"]] for n in names]),
            numba.typed.List(bhn),
        ),
        params["V"],
        params["c"],
    )


def _flat(params: Params) -> numba.typed.List:
    return numba.typed.List([a.reshape(-1) for a in params.arrays()])


def _carry(state: tuple, like: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(h, c) as contiguous arrays in like's dtype (the arrays themselves when they are); c of
    no units but for the lstm."""
    h = np.ascontiguousarray(state[0], dtype=like.dtype)
    empty = np.zeros(h.shape[:-1] + (0,), like.dtype)
    return h, np.ascontiguousarray(state[1], dtype=like.dtype) if len(state) > 1 else empty


def _model(params: Params):
    """(layers, V, c) of _lists, the gradients' Params, and the gradients as _loss_and_grads
    fills them (views of that Params)."""
    layers, V, c = _lists(params)
    grads = Params.zeros_like(params)
    glayers, _, _ = _lists(grads)
    return layers, V, c, grads, (*glayers, grads["V"], grads["c"])


def loss_and_grads_batch(
    params: Params, X, Y, lengths, state0: tuple, masks=None, parts=1, bulk=None
):
    """reference.loss_and_grads_batch in the parameters' dtype, compiled; each step in `parts`
    parts (threads) of the units, the products over the chunk in `bulk` (as many unless
    given)."""
    spec = params.spec
    T, B = X.shape
    layers, V, c, grads, gviews = _model(params)
    h0, c0 = _carry(state0, V)
    last = (np.empty_like(h0), np.empty_like(c0))
    if masks is None:
        drop = np.empty((0, 0, 0, 0), params.dtype)
    else:  # (B, tau, m) each -> (L, T, B, m)
        drop = np.ascontiguousarray(np.stack(masks).transpose(0, 2, 1, 3)[:, :T], params.dtype)
    args = (_c(X, np.int64), _c(Y, np.int64), _c(lengths, np.int64), h0, c0, drop, layers, V, c)
    G = spec.cell.GATES * spec.m
    ws = _workspace(TAGS[spec.family], spec.layers, T, B, V, G, masks is not None)
    tags = (_parts_tag(parts, B), (0,) * (bulk or parts))
    loss = _loss_and_grads(TAGS[spec.family], *args, gviews, last, ws, *tags)
    return float(loss), grads, last[: len(spec.state_names)]


def run_block(
    state, optimizer, data, starts, lengths, resets, losses, dropout=None, parts=1, bulk=None
):
    """reference.run_block, a block of updates per compiled call, each step in `parts` parts
    (threads) of the units, the products over a chunk and the optimiser's step in `bulk` parts
    (as many as parts unless given; with dropout, the block in parts too, whose draws are taken
    at once: the same numbers, in the same order, as the reference's one draw per mask)."""
    spec, params = state.spec, state.params
    n, B = np.shape(starts)
    layers, V, c, grads, gviews = _model(params)
    slots = [_flat(state.opt[s]) for s in optimizer.slots]  # Adam's m and v; else one
    flat = (_flat(params), _flat(grads), _flat(state.best), slots[0], slots[-1])
    model = (layers, V, c, gviews, flat)
    carry = _carry(state.carry, V)
    best_carry = _carry(state.best_carry, V)
    fstate = np.array([state.smooth_loss, state.best_smooth])
    istate = np.array([state.updates, state.best_update, state.best_x0], dtype=np.int64)
    consts = (
        float(optimizer.eps),
        float(optimizer.clip),
        float(getattr(optimizer, "alpha", 0.0)),
        *(float(b) for b in (getattr(optimizer, "beta1", 0.0), getattr(optimizer, "beta2", 0.0))),
    )
    run = (
        carry,
        best_carry,
        fstate,
        istate,
        OPTIMIZER_CODES[optimizer.name],
        consts,
        _parts_tag(parts, B),
        (0,) * (bulk or parts),
    )
    lrs = np.array([optimizer.lr(state.updates + 1 + k) for k in range(n)])
    data, starts = np.ascontiguousarray(data), _c(starts, np.int64)
    lengths, resets = _c(lengths, np.int64), _c(resets, np.bool_)
    shape = (spec.layers, B, dropout.tau, spec.m) if dropout is not None else (0, 0, 0, 0)
    part = max(1, MASK_BYTES // (8 * math.prod(shape))) if dropout is not None else n
    p = float(dropout.p) if dropout is not None else 0.0
    done = 0
    while done < n:
        size = min(part, n - done)
        if dropout is not None:
            before = dropout.state()
            uniforms = dropout.rng.random((size, *shape))
        else:
            uniforms = np.empty((0, 0, 0, 0, 0))
        k = slice(done, done + size)
        args = (data, starts[k], lengths[k], resets[k], uniforms, p, lrs[k], losses[k])
        did = _block(TAGS[spec.family], *args, model, run)
        done += did
        if did < size:
            if dropout is not None:  # the draws of the updates done and of the failed one
                dropout.set_state(before)
                dropout.rng.random((did + 1, *shape))
            break
    for s, new in zip(state.carry, carry, strict=False):
        s[...] = new
    for s, new in zip(state.best_carry, best_carry, strict=False):
        s[...] = new
    state.smooth_loss, state.best_smooth = float(fstate[0]), float(fstate[1])
    state.updates, state.best_update, state.best_x0 = (int(v) for v in istate)
    return done


def _c(a, dtype) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=dtype)
