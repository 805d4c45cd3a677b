"""The numpy reference engine: the equations of SPEC.md, written to be read.

    a_t = W h_{t-1} + U x_t + b,   h_t = tanh(a_t),   o_t = V h_t + c,   p_t = softmax(o_t)
    L = sum_t -log p_t[y_t]

x_t is one-hot, so U x_t is the column U[:, x_t] (an index gather, not a product).
"""

from __future__ import annotations

import numpy as np

from charwise.optim import TrainState, adagrad_step
from charwise.params import RNNParams


def forward(params: RNNParams, x: np.ndarray, h0: np.ndarray):
    """Hidden states H (tau+1, m) with H[0] = h0, and logits O (tau, K)."""
    b, c, U, W, V = params.arrays()
    H = np.empty((len(x) + 1, params.m))
    H[0] = h0
    for t, xt in enumerate(x):
        H[t + 1] = np.tanh(W @ H[t] + U[:, xt] + b)
    O = H[1:] @ V.T + c
    return H, O


def log_softmax(O: np.ndarray) -> np.ndarray:
    """Row-wise log p, computed stably (the max is subtracted first)."""
    Z = O - O.max(axis=-1, keepdims=True)
    return Z - np.log(np.exp(Z).sum(axis=-1, keepdims=True))


def loss(params: RNNParams, x, y, h0) -> float:
    """L = sum_t -log p_t[y_t] (a sum over the sequence, not a mean)."""
    _, O = forward(params, x, h0)
    return float(-log_softmax(O)[np.arange(len(y)), y].sum())


def loss_and_grads(params: RNNParams, x, y, h0):
    """Loss, gradients (as RNNParams) and the last hidden state, by full BPTT."""
    b, c, U, W, V = params.arrays()
    H, O = forward(params, x, h0)
    logP = log_softmax(O)
    steps = np.arange(len(y))
    L = float(-logP[steps, y].sum())

    dO = np.exp(logP)  # dL/do_t = p_t - onehot(y_t)
    dO[steps, y] -= 1.0
    dV = dO.T @ H[1:]
    dc = dO.sum(axis=0)

    dA = np.empty((len(x), params.m))  # dL/da_t
    dh_next = np.zeros(params.m)  # dL/dh_t arriving from step t+1
    for t in reversed(steps):
        dh = V.T @ dO[t] + dh_next
        dA[t] = dh * (1.0 - H[t + 1] ** 2)
        dh_next = W.T @ dA[t]
    dW = dA.T @ H[:-1]
    db = dA.sum(axis=0)
    dU = np.zeros_like(U)
    np.add.at(dU.T, x, dA)  # column x_t of dU gets da_t
    return L, RNNParams(db, dc, dU, dW, dV), H[-1].copy()


def advance(params: RNNParams, h0, x) -> np.ndarray:
    """The hidden state after reading the characters x from h0."""
    return forward(params, x, h0)[0][-1].copy()


def probabilities(o: np.ndarray, temperature: float = 1.0, top_p: float = 1.0) -> np.ndarray:
    """softmax(o / T), then (top-p) the smallest most-probable set with mass >= top_p.

    Temperature 0 means greedy: all mass on the first maximum. The result is not
    renormalised after top-p; the sampler scales u by the kept mass instead.
    """
    if temperature == 0.0:
        p = np.zeros_like(o)
        p[np.argmax(o)] = 1.0
        return p
    z = o / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        keep = min(int(np.searchsorted(np.cumsum(p[order]), top_p)), len(p) - 1)
        p[order[keep + 1 :]] = 0.0
    return p


def draw(p: np.ndarray, u: float) -> int:
    """The first index i with cumsum(p)[i] > u * sum(p) (SPEC.md, u ~ U[0, 1))."""
    cs = np.cumsum(p)
    return int(np.searchsorted(cs, u * cs[-1], side="right"))


def sample(params: RNNParams, h0, x0: int, n: int, uniforms, temperature=1.0, top_p=1.0, stop=-1):
    """n indices drawn one at a time, each fed back; ends early after drawing `stop`."""
    b, c, U, W, V = params.arrays()
    h, x = np.array(h0, dtype=np.float64), int(x0)
    out = []
    for i in range(n):
        h = np.tanh(W @ h + U[:, x] + b)
        x = draw(probabilities(V @ h + c, temperature, top_p), uniforms[i])
        out.append(x)
        if x == stop:
            break
    return np.array(out, dtype=np.int64)


def train_block(state: TrainState, data, starts, lengths, resets, eta, eps, clip, losses) -> int:
    """Run len(starts) updates of the protocol (SPEC.md) on `state`; losses[k] gets each loss.

    Chunk k reads inputs data[s : s+n] and targets data[s+1 : s+n+1] (s = starts[k],
    n = lengths[k]) from h_prev, which is first zeroed when resets[k] is set. Stops early
    and returns the count done when a loss is not finite (that update is not applied).
    """
    for k in range(len(starts)):
        if resets[k]:
            state.h_prev[:] = 0.0
        s, n = int(starts[k]), int(lengths[k])
        x, y = data[s : s + n], data[s + 1 : s + n + 1]
        L, grads, h_last = loss_and_grads(state.params, x, y, state.h_prev)
        losses[k] = L
        if not np.isfinite(L) or not all(np.isfinite(g).all() for g in grads.arrays()):
            return k
        state.smooth_loss = L if state.updates == 0 else 0.999 * state.smooth_loss + 0.001 * L
        if state.smooth_loss < state.best_smooth:
            state.params.copy_into(state.best)
            state.best_h[:] = state.h_prev
            state.best_x0 = int(x[0])
            state.best_update = state.updates + 1
            state.best_smooth = state.smooth_loss
        adagrad_step(state.params, grads, state.G, eta, eps, clip)
        state.h_prev[:] = h_last
        state.updates += 1
    return len(starts)
