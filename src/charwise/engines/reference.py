"""The numpy reference engine: the equations of SPEC.md for every model, written to be read.

    layer 1 reads U[:, x_t] (an index gather: x_t is one-hot), layer l > 1 reads h^{l-1}_t
    o_t = V h^L_t + c,  p_t = softmax(o_t),  L = (1/B) sum_b sum_t -log p_t[y_t]

Arrays are time-major: X, Y (T, B) character indices, states (L, B, m) per state name (h, and
c for the lstm). Streams whose chunk is shorter than T (documents) are padded: their padded
steps add nothing to the loss, so nothing to any gradient, and their carried state is the
state after their last real step.
"""

from __future__ import annotations

import math

import numpy as np

from charwise.models import ModelSpec
from charwise.optim import AdaGrad
from charwise.params import Params

EVAL_PIECE = 1000  # evaluation reads long texts in pieces of this many steps, state carried


def as_state(spec: ModelSpec, state, batch: int = 1) -> tuple[np.ndarray, ...]:
    """A state tuple of float64 (L, B, m) arrays from None (zeros), a tuple, or an h alone."""
    if state is None:
        return spec.zero_state(batch)
    if isinstance(state, tuple):
        return tuple(np.array(s, dtype=np.float64) for s in state)
    h = np.array(state, dtype=np.float64).reshape(spec.layers, batch, spec.m)
    return (h, *spec.zero_state(batch)[1:])


def log_softmax(O: np.ndarray) -> np.ndarray:
    """Row-wise log p, computed stably (the max is subtracted first)."""
    Z = O - O.max(axis=-1, keepdims=True)
    return Z - np.log(np.exp(Z).sum(axis=-1, keepdims=True))


def forward(params: Params, X: np.ndarray, state0: tuple, masks=None):
    """Logits O (T*B, K), the states of every layer and step, and what backward needs.

    masks: dropout masks (B, T, m) for the inputs of layers 2..L and for h^L, or None.
    """
    spec = params.spec
    cell = spec.cell
    T, B = X.shape
    caches, inputs, states = [], [], []
    below = None  # the input of the next layer, (T, B, m)
    for layer in range(1, spec.layers + 1):
        names = spec.layer_names(layer)
        U, W, b = params[names["U"]], params[names["W"]], params[names["b"]]
        extra = {e: params[names[e]] for e in cell.EXTRA}
        if layer == 1:
            Ux = U.T[X]  # column x_t of U, for every step and stream
        else:
            if masks is not None:
                below = below * masks[layer - 2].transpose(1, 0, 2)[:T]
            Ux = (below.reshape(T * B, spec.m) @ U.T).reshape(T, B, len(U))
        inputs.append(below)
        layer_states, cache = cell.forward(Ux, W, b, extra, tuple(s[layer - 1] for s in state0))
        states.append(layer_states)
        caches.append(cache)
        below = layer_states[0]
    if masks is not None:
        below = below * masks[-1].transpose(1, 0, 2)[:T]
    O = below.reshape(T * B, spec.m) @ params["V"].T + params["c"]
    return O, states, (caches, inputs, below)


def _chunk_losses(logP: np.ndarray, Y: np.ndarray, lengths) -> list[float]:
    """Each stream's loss: the sum over its real steps of -log p_t[y_t]."""
    T, B = Y.shape
    lp = logP[np.arange(T * B), Y.ravel()].reshape(T, B)
    return [float(-lp[: lengths[b], b].sum()) for b in range(B)]


def loss_and_grads_batch(params: Params, X, Y, lengths, state0: tuple, masks=None):
    """Loss (mean over streams of each stream's sum), gradients (Params) and the carried state
    after each stream's last real step, by full back-propagation through time."""
    spec = params.spec
    cell = spec.cell
    T, B = X.shape
    O, states, (caches, inputs, top) = forward(params, X, state0, masks)
    logP = log_softmax(O)
    loss = math.fsum(_chunk_losses(logP, Y, lengths)) / B

    dO = np.exp(logP)  # dL/do_t = (p_t - onehot(y_t)) / B on real steps, 0 on padded ones
    dO[np.arange(T * B), Y.ravel()] -= 1.0
    dO /= B
    padded = (np.arange(T)[:, None] >= np.asarray(lengths)[None, :]).ravel()
    dO[padded] = 0.0
    grads = {"V": dO.T @ top.reshape(T * B, spec.m), "c": dO.sum(axis=0)}
    dO = dO.reshape(T, B, spec.K)
    dH = np.empty((T, B, spec.m))
    for t in range(T):  # dL/dh^L_t = V^T dL/do_t (one product per step, as the exercise's loop)
        dH[t] = dO[t] @ params["V"]
    if masks is not None:
        dH *= masks[-1].transpose(1, 0, 2)[:T]
    for layer in range(spec.layers, 0, -1):
        names = spec.layer_names(layer)
        U, W = params[names["U"]], params[names["W"]]
        extra = {e: params[names[e]] for e in cell.EXTRA}
        dUx, dW, db, dextra = cell.backward(dH, caches[layer - 1], W, extra)
        flat = dUx.reshape(T * B, len(U))
        if layer == 1:
            dU = np.zeros_like(U)
            np.add.at(dU.T, X.ravel(), flat)  # column x_t of dU gets dL/d(U u_t)
        else:
            dU = flat.T @ inputs[layer - 1].reshape(T * B, spec.m)
            dH = (flat @ U).reshape(T, B, spec.m)
            if masks is not None:
                dH *= masks[layer - 2].transpose(1, 0, 2)[:T]
        grads |= {names["U"]: dU, names["W"]: dW, names["b"]: db}
        grads |= {names[e]: g for e, g in dextra.items()}
    state_last = _last_states(state0, states, lengths)
    ordered = {name: grads[name] for name in params.names()}
    return loss, Params._make(ordered, spec), state_last


def _last_states(state0: tuple, states: list, lengths) -> tuple[np.ndarray, ...]:
    """Each stream's state after its last real step (its starting state if it has none)."""
    B = len(lengths)
    return tuple(
        np.stack(
            [
                np.concatenate([s0[None], s])[lengths, np.arange(B)]
                for s0, s in zip(s0s, seq, strict=True)
            ]
        )
        for s0s, seq in zip(state0, zip(*states, strict=True), strict=True)
    )


def loss_and_grads(params: Params, x, y, state0=None, lengths=None, masks=None, batch=None):
    """Loss, gradients and last state for one stream (x, y of shape (T,), h0 (m,)) or B
    streams (x, y of shape (T, B), state0 a tuple of (L, B, m) arrays, lengths (B,)).

    batch: the function that computes them for B streams (default loss_and_grads_batch; the
    fast engine passes its own)."""
    x, y = np.asarray(x), np.asarray(y)
    one = x.ndim == 1
    X, Y = (x[:, None], y[:, None]) if one else (x, y)
    B = X.shape[1]
    lengths = [len(X)] * B if lengths is None else lengths
    state = as_state(params.spec, state0, B)
    loss, grads, last = (batch or loss_and_grads_batch)(params, X, Y, lengths, state, masks)
    if isinstance(state0, tuple):
        return loss, grads, last
    return loss, grads, last[0][-1, 0].copy() if one else last[0]


def loss(params: Params, x, y, h0) -> float:
    """L = sum_t -log p_t[y_t] for one stream (a sum over the sequence, not a mean)."""
    X = np.asarray(x).reshape(-1, 1)
    O, _, _ = forward(params, X, as_state(params.spec, h0))
    return float(-log_softmax(O)[np.arange(len(X)), np.asarray(y)].sum())


def _run(params: Params, x, state: tuple) -> tuple:
    """The state after reading the indices x (one stream) from state, and the logits."""
    O, states, _ = forward(params, np.asarray(x).reshape(-1, 1), state)
    last = (np.stack([s[-1] for s in layer], axis=0) for layer in zip(*states, strict=True))
    return tuple(last), O


def advance(params: Params, h0, x):
    """The state after reading the characters x from h0: a state tuple for a tuple, an h
    alone for an h alone (in float64, float32 weights upcast)."""
    params, state = params.astype(np.float64), as_state(params.spec, h0)
    if not len(x):
        return state if isinstance(h0, tuple) else np.array(h0, dtype=np.float64)
    last, _ = _run(params, x, state)
    return last if isinstance(h0, tuple) else last[0][-1, 0].copy()


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


def sample(params: Params, h0, x0: int, n: int, uniforms, temperature=1.0, top_p=1.0, stop=-1):
    """n indices drawn one at a time, each fed back; ends early after drawing `stop`.

    h0: the starting state (a tuple of (L, 1, m) arrays, or an h alone). In float64, float32
    weights upcast (as evaluate)."""
    params, state, x = params.astype(np.float64), as_state(params.spec, h0), int(x0)
    out = []
    for i in range(n):
        state, O = _run(params, [x], state)
        x = draw(probabilities(O[0], temperature, top_p), uniforms[i])
        out.append(x)
        if x == stop:
            break
    return np.array(out, dtype=np.int64)


def evaluate(params: Params, data: np.ndarray, runs=None) -> tuple[float, int]:
    """(sum of -log p over the predicted characters, their count), in float64, for the runs
    data[a:b] (default: all of data), each read once from a zero state with the state carried
    (a held-out text, or each held-out document)."""
    params = params.astype(np.float64)
    runs = [(0, len(data))] if runs is None else runs
    sums, count = [], 0
    for a, b in runs:
        state = params.spec.zero_state()
        for s in range(a, b - 1, EVAL_PIECE):
            e = min(s + EVAL_PIECE, b - 1)
            x = np.asarray(data[s:e], dtype=np.int64)
            y = np.asarray(data[s + 1 : e + 1], dtype=np.int64)
            state, O = _run(params, x, state)
            sums.append(-log_softmax(O)[np.arange(len(y)), y].sum())
            count += len(y)
    return math.fsum(sums), count


def chunk_arrays(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray):
    """X, Y (T, B) for chunks of the given starts and lengths, padded to the longest with 0."""
    T = int(lengths.max())
    steps = np.arange(T)[:, None]
    real = steps < lengths[None, :]
    idx = np.where(real, starts[None, :] + steps, 0)
    X = np.where(real, data[idx], 0).astype(np.int64)
    Y = np.where(real, data[np.where(real, idx + 1, 0)], 0).astype(np.int64)
    return X, Y


class Dropout:
    """Inverted dropout masks (SPEC.md): (rng.random((B, tau, m)) >= p) / (1 - p), one per
    masked place and update: the inputs of layers 2..L, then h^L."""

    def __init__(self, p: float, tau: int, rng: np.random.Generator):
        self.p, self.tau, self.rng = p, tau, rng

    def masks(self, spec: ModelSpec, batch: int) -> list[np.ndarray]:
        shape = (batch, self.tau, spec.m)
        return [(self.rng.random(shape) >= self.p) / (1.0 - self.p) for _ in range(spec.layers)]

    def state(self):
        """The generator's state, for the checkpoint."""
        return self.rng.bit_generator.state

    def set_state(self, state) -> None:
        self.rng.bit_generator.state = state


def run_block(state, optimizer, data, starts, lengths, resets, losses, dropout=None) -> int:
    """Run len(starts) updates of the protocol (SPEC.md) on `state`; losses[k] gets each loss.

    Update k reads, for stream b, inputs data[s : s+n] and targets data[s+1 : s+n+1]
    (s = starts[k, b], n = lengths[k, b]) from its carried state, first zeroed when resets[k, b]
    is set. Stops early and returns the count done when a loss or gradient is not finite
    (that update is not applied).
    """
    spec = state.spec
    for k in range(len(starts)):
        for s in state.carry:
            s[:, resets[k]] = 0.0
        X, Y = chunk_arrays(data, starts[k], lengths[k])
        masks = dropout.masks(spec, X.shape[1]) if dropout is not None else None
        state0 = as_state(spec, state.carry)
        L, grads, carry = loss_and_grads_batch(state.params, X, Y, lengths[k], state0, masks)
        losses[k] = L
        if not np.isfinite(L) or not all(np.isfinite(g).all() for g in grads.arrays()):
            return k
        state.smooth_loss = L if state.updates == 0 else 0.999 * state.smooth_loss + 0.001 * L
        if state.smooth_loss < state.best_smooth:
            state.params.copy_into(state.best)
            for best, s in zip(state.best_carry, state.carry, strict=True):
                best[...] = s[:, 0]
            state.best_x0 = int(X[0, 0])
            state.best_update = state.updates + 1
            state.best_smooth = state.smooth_loss
        optimizer.step(state.params, grads, state.opt, state.updates + 1)
        for s, new in zip(state.carry, carry, strict=True):
            s[...] = new
        state.updates += 1
    return len(starts)


def train_block(state, data, starts, lengths, resets, eta, eps, clip, losses) -> int:
    """The exercise's form of run_block: one stream (1-d starts, lengths, resets), AdaGrad."""
    one = (np.asarray(a)[:, None] for a in (starts, lengths, resets))
    return run_block(state, AdaGrad(eta, clip, eps), data, *one, losses)
