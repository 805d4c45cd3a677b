"""The PyTorch engine: the reference math (SPEC.md) with PyTorch's own recurrent layers
(nn.RNN, nn.LSTM, nn.GRU, one per layer, so charwise's dropout masks go between them) and
autograd, on the CPU or a GPU (`--device`).

SPEC's numbers, not torch's defaults where they differ: the parameters come from charwise's
arrays (drawn by numpy), torch's b_hh is zero (the gru's is [0, 0, b_hn]), the loss is the
mean over streams of each stream's sum, every gradient entry is clipped, the optimisers are
charwise's formulas written with tensors, and dropout masks are numpy's draws. A block of
updates keeps the parameters, the optimiser state and the carried state on the device; they
go back to the TrainState's numpy arrays at the block's end. Each update reads back two
numbers (its loss and whether every gradient is finite) for the smooth loss, the best model
and the divergence rule. Checkpoints are the same files as every engine's.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from charwise.engines import reference
from charwise.errors import CharwiseError
from charwise.params import Params

MODULES = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
EVAL_PIECE = 4096  # evaluation reads a long text in pieces of this many steps, state carried
EVAL_BATCH = 256  # and short documents this many at a time, side by side
DEVICE = torch.device("cpu")  # set by use_device()
AUTOCAST = False  # bfloat16 autocast of the forward and backward passes (use_autocast)


def use_device(name: str = "auto") -> torch.device:
    """Select the device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."""
    global DEVICE
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
        mps = getattr(torch.backends, "mps", None)
        if name == "cpu" and mps is not None and mps.is_available():
            name = "mps"
    try:
        device = torch.device(name)
        torch.zeros(1, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise CharwiseError(
            f"--device {name} is not available here ({str(exc).splitlines()[0]}); "
            "use --device auto or cpu"
        ) from None
    DEVICE = device
    return device


def use_autocast(on: bool) -> None:
    """--dtype bfloat16: the layers compute in bfloat16 under torch.autocast, the weights,
    optimiser state and every update stay float32 (what checkpoints hold)."""
    global AUTOCAST
    if on and DEVICE.type == "cpu" and not cpu_has_bfloat16():
        raise CharwiseError(
            "--dtype bfloat16 needs a GPU or a CPU with AVX-512 (PyTorch's oneDNN has no "
            "bfloat16 LSTM on this one); use --dtype float32"
        )
    AUTOCAST = bool(on)


def cpu_has_bfloat16() -> bool:
    """Whether PyTorch's oneDNN computes in bfloat16 on this CPU: torch.autocast's CPU LSTM
    runs through it, and without it fails (seen on an AVX2 CPU, AMD Zen 3)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _autocast():
    return torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=AUTOCAST)


class DeviceDropout:
    """--dropout-rng device: the masks of reference.Dropout, (rand >= p) / (1 - p) in the same
    order, drawn on the device from torch's generator seeded with seed * 1000003 + 2 (other
    masks than numpy's, so runs differ from the other engines'; no copy per update)."""

    def __init__(self, p: float, tau: int, seed: int):
        self.p, self.tau = p, tau
        self.generator = torch.Generator(device=DEVICE).manual_seed(seed * 1_000_003 + 2)

    def masks(self, spec, batch: int) -> list[torch.Tensor]:
        shape = (batch, self.tau, spec.m)
        return [
            (torch.rand(shape, generator=self.generator, device=DEVICE) >= self.p) / (1 - self.p)
            for _ in range(spec.layers)
        ]

    def state(self) -> list[int]:
        return self.generator.get_state().tolist()

    def set_state(self, state) -> None:
        self.generator.set_state(torch.tensor(state, dtype=torch.uint8))


class Net:
    """A model's arrays as torch tensors on the device, inside torch's layers."""

    def __init__(self, params: Params, dtype=None):
        spec = params.spec
        dtype = dtype or _dtype(params.dtype)
        self.spec, self.layers = spec, []
        self.tensors: dict[str, torch.Tensor] = {}  # charwise's name -> the tensor stepped
        for layer in range(1, spec.layers + 1):
            names = spec.layer_names(layer)
            n_in = spec.K if layer == 1 else spec.m
            module = MODULES[spec.family](n_in, spec.m, dtype=dtype, device=DEVICE)
            with torch.no_grad():
                module.weight_ih_l0.copy_(_tensor(params[names["U"]], dtype))
                module.weight_hh_l0.copy_(_tensor(params[names["W"]], dtype))
                module.bias_ih_l0.copy_(_tensor(params[names["b"]], dtype))
                module.bias_hh_l0.zero_()
                if spec.family == "gru":
                    module.bias_hh_l0[2 * spec.m :] = _tensor(params[names["bhn"]], dtype)
            self.layers.append(module)
            self.tensors |= {
                names["U"]: module.weight_ih_l0,
                names["W"]: module.weight_hh_l0,
                names["b"]: module.bias_ih_l0,
            }
            if spec.family == "gru":
                self.tensors[names["bhn"]] = module.bias_hh_l0
        self.V = _tensor(params["V"], dtype).requires_grad_()
        self.c = _tensor(params["c"], dtype).requires_grad_()
        self.tensors |= {"V": self.V, "c": self.c}

    def values(self, name: str) -> torch.Tensor:
        """The values of a charwise array (the gru's b_hn is the tail of torch's b_hh)."""
        t = self.tensors[name]
        return t.data[2 * self.spec.m :] if name.startswith("bhn") else t.data

    def grad(self, name: str) -> torch.Tensor:
        t = self.tensors[name]
        return t.grad[2 * self.spec.m :] if name.startswith("bhn") else t.grad

    def forward(self, X: torch.Tensor, lengths, state: tuple, masks=None):
        """Logits (T, B, K) and each stream's state after its last real step, (L, B, m) each.

        X (T, B) indices; lengths (B,) real steps (None: all); masks: dropout (T, B, m)."""
        spec = self.spec
        T, B = X.shape
        u = torch.nn.functional.one_hot(X, spec.K).to(self.V.dtype)
        last = []
        for layer, module in enumerate(self.layers):
            if layer and masks is not None:
                u = u * masks[layer - 1]
            start = tuple(s[layer : layer + 1] for s in state)
            start = start if spec.family == "lstm" else start[0]
            if lengths is None:
                u, end = module(u, start)
            else:
                packed = pack_padded_sequence(u, lengths, enforce_sorted=False)
                out, end = module(packed, start)
                u, _ = pad_packed_sequence(out, total_length=T)
            last.append(end if spec.family == "lstm" else (end,))
        if masks is not None:
            u = u * masks[-1]
        logits = u @ self.V.T + self.c
        state = tuple(torch.cat([e[i] for e in last]) for i in range(len(spec.state_names)))
        return logits, state


def _dtype(np_dtype) -> torch.dtype:
    return torch.float64 if np.dtype(np_dtype) == np.float64 else torch.float32


def _tensor(a, dtype=None) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.to(device=DEVICE, dtype=dtype or t.dtype)


def _state(spec, state, batch: int, dtype) -> tuple[torch.Tensor, ...]:
    """A state tuple on the device from anything reference.as_state takes."""
    return tuple(_tensor(s, dtype) for s in reference.as_state(spec, state, batch))


def _loss(logits, Y: torch.Tensor, lengths) -> torch.Tensor:
    """(1/B) sum_b sum_t -log p_t[y_t] over each stream's real steps."""
    T, B = Y.shape
    logp = torch.log_softmax(logits, dim=-1).gather(2, Y.unsqueeze(2)).squeeze(2)
    if lengths is not None:
        real = torch.arange(T, device=DEVICE).unsqueeze(1) < lengths.to(DEVICE).unsqueeze(0)
        logp = torch.where(real, logp, torch.zeros((), dtype=logp.dtype, device=DEVICE))
    return -logp.sum() / B


def loss_and_grads(params: Params, x, y, state0=None, lengths=None, masks=None):
    """Loss, gradients (numpy Params) and the last state, as reference.loss_and_grads."""
    x, y = np.asarray(x), np.asarray(y)
    one = x.ndim == 1
    X, Y = (x[:, None], y[:, None]) if one else (x, y)
    net = Net(params)
    dtype = net.V.dtype
    state = _state(params.spec, state0, X.shape[1], dtype)
    lens = None if lengths is None else torch.as_tensor(np.asarray(lengths), dtype=torch.long)
    tmasks = _masks(masks, X.shape[0], dtype)
    logits, last = net.forward(_long(X), lens, state, tmasks)
    loss = _loss(logits, _long(Y), lens)
    loss.backward()
    grads = Params._make({n: _numpy(net.grad(n)) for n in params.names()}, params.spec)
    last = tuple(_numpy(s) for s in last)
    if isinstance(state0, tuple):
        return loss.item(), grads, last
    return loss.item(), grads, last[0][-1, 0].copy() if one else last[0]


def _long(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.int64), device=DEVICE)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu").numpy().copy()


def _masks(masks, T: int, dtype):
    """Dropout masks (B, tau, m), numpy's or the device's, as device tensors (T, B, m)."""
    if masks is None:
        return None
    if isinstance(masks[0], torch.Tensor):
        return [m.transpose(0, 1)[:T].to(dtype) for m in masks]
    return [_tensor(np.ascontiguousarray(m.transpose(1, 0, 2)[:T]), dtype) for m in masks]


# ---- optimisers: charwise's formulas with tensors (optim.py) ------------------------------------
def _step(optimizer, p, g, slots, t: int) -> None:
    """One update of p from g (clipped in place), the optimiser's slots updated in place."""
    g.clamp_(-optimizer.clip, optimizer.clip)
    eta = optimizer.lr(t)
    if optimizer.name == "adagrad":
        G = slots["G"]
        G += g * g
        p -= eta * g / torch.sqrt(G + optimizer.eps)
    elif optimizer.name == "rmsprop":
        v = slots["v"]
        v *= optimizer.alpha
        v += (1.0 - optimizer.alpha) * g * g
        p -= eta * g / (torch.sqrt(v) + optimizer.eps)
    else:
        m, v = slots["m"], slots["v"]
        m *= optimizer.beta1
        m += (1.0 - optimizer.beta1) * g
        v *= optimizer.beta2
        v += (1.0 - optimizer.beta2) * g * g
        m_hat = m / (1.0 - optimizer.beta1**t)
        v_hat = v / (1.0 - optimizer.beta2**t)
        p -= eta * m_hat / (torch.sqrt(v_hat) + optimizer.eps)


# ---- the block of updates -----------------------------------------------------------------------
def run_block(state, optimizer, data, starts, lengths, resets, losses, dropout=None) -> int:
    """reference.run_block with the state on the device for the whole block."""
    spec = state.spec
    net = Net(state.params)
    dtype = net.V.dtype
    names = state.params.names()
    slots = {s: {n: _tensor(a, dtype) for n, a in p.items()} for s, p in state.opt.items()}
    best = {n: _tensor(a, dtype) for n, a in state.best.items()}
    carry = tuple(_tensor(s, dtype) for s in state.carry)
    best_carry = tuple(_tensor(s, dtype) for s in state.best_carry)
    done = len(starts)
    for k in range(len(starts)):
        reset = torch.as_tensor(resets[k], device=DEVICE)
        carry = tuple(torch.where(reset.view(1, -1, 1), torch.zeros_like(s), s) for s in carry)
        X, Y = reference.chunk_arrays(data, starts[k], lengths[k])
        full = bool((lengths[k] == X.shape[0]).all())
        lens = None if full else torch.as_tensor(lengths[k], dtype=torch.long)
        masks = dropout.masks(spec, X.shape[1]) if dropout is not None else None
        for t in net.tensors.values():
            t.grad = None
        with _autocast():
            tmasks = _masks(masks, X.shape[0], dtype)
            logits, new_carry = net.forward(_long(X), lens, carry, tmasks)
            loss = _loss(logits.float() if AUTOCAST else logits, _long(Y), lens)
        loss.backward()
        finite = torch.stack([torch.isfinite(net.grad(n)).all() for n in names]).all()
        L, ok = (v.item() for v in (loss.detach(), finite))
        losses[k] = L
        if not (math.isfinite(L) and ok):
            done = k  # this update is not applied
            break
        state.smooth_loss = L if state.updates == 0 else 0.999 * state.smooth_loss + 0.001 * L
        with torch.no_grad():
            if state.smooth_loss < state.best_smooth:
                for n in names:
                    best[n].copy_(net.values(n))
                for b, s in zip(best_carry, carry, strict=True):
                    b.copy_(s[:, 0])
                state.best_x0 = int(X[0, 0])
                state.best_update = state.updates + 1
                state.best_smooth = state.smooth_loss
            for n in names:
                slot = {s: slots[s][n] for s in slots}
                _step(optimizer, net.values(n), net.grad(n), slot, state.updates + 1)
        carry = tuple(s.detach().to(dtype) for s in new_carry)
        state.updates += 1
    for n in names:  # back to the TrainState's arrays at the block's end
        state.params[n][...] = _numpy(net.values(n))
        state.best[n][...] = _numpy(best[n])
        for s in slots:
            state.opt[s][n][...] = _numpy(slots[s][n])
    for dst, src in zip((*state.carry, *state.best_carry), (*carry, *best_carry), strict=True):
        dst[...] = _numpy(src)
    return done


# ---- sampling and evaluation --------------------------------------------------------------------
def advance(params: Params, h0, x):
    """The state after reading x from h0 (an h alone in, an h alone out), as the reference."""
    with torch.no_grad():
        net = Net(params, torch.float64)
        state = _state(params.spec, h0, 1, torch.float64)
        if len(x):
            _, state = net.forward(_long(np.asarray(x).reshape(-1, 1)), None, state)
    last = tuple(_numpy(s) for s in state)
    return last if isinstance(h0, tuple) else last[0][-1, 0].copy()


def sample(params: Params, h0, x0: int, n: int, uniforms, temperature=1.0, top_p=1.0, stop=-1):
    """n indices drawn one at a time on the device's logits, with the reference's draw."""
    out = []
    with torch.no_grad():
        net = Net(params, torch.float64)
        state = _state(params.spec, h0, 1, torch.float64)
        x = int(x0)
        for i in range(n):
            logits, state = net.forward(_long([[x]]), None, state)
            p = reference.probabilities(_numpy(logits[0, 0]), temperature, top_p)
            x = reference.draw(p, uniforms[i])
            out.append(x)
            if x == stop:
                break
    return np.array(out, dtype=np.int64)


def evaluate(params: Params, data: np.ndarray, runs=None) -> tuple[float, int]:
    """reference.evaluate on the device in float64: long runs in pieces with the state
    carried, short ones (documents) side by side in batches."""
    runs = [(0, len(data))] if runs is None else runs
    sums, count = [], 0
    with torch.no_grad():
        net = Net(params, torch.float64)
        long = [r for r in runs if r[1] - r[0] > EVAL_PIECE]
        short = [r for r in runs if 1 < r[1] - r[0] <= EVAL_PIECE]
        for a, b in long:
            state = _state(params.spec, None, 1, torch.float64)
            for s in range(a, b - 1, EVAL_PIECE):
                e = min(s + EVAL_PIECE, b - 1)
                X, Y = _long(data[s:e]).view(-1, 1), _long(data[s + 1 : e + 1]).view(-1, 1)
                logits, state = net.forward(X, None, state)
                sums.append(_loss(logits, Y, None).item())
                count += e - s
        for i in range(0, len(short), EVAL_BATCH):
            batch = short[i : i + EVAL_BATCH]
            starts = np.array([a for a, _ in batch], dtype=np.int64)
            lengths = np.array([b - a - 1 for a, b in batch], dtype=np.int64)
            X, Y = reference.chunk_arrays(data, starts, lengths)
            lens = torch.as_tensor(lengths)
            state = _state(params.spec, None, len(batch), torch.float64)
            logits, _ = net.forward(_long(X), lens, state)
            sums.append(_loss(logits, _long(Y), lens).item() * len(batch))
            count += int(lengths.sum())
    return math.fsum(sums), count
