"""Optimisers (SPEC.md): objects with init_state(params) and step(params, grads, state, t), so
that any optimiser works on any model. Every gradient entry is first clipped to [-clip, clip].
"""

from __future__ import annotations

import math

import numpy as np

from charwise.errors import CharwiseError
from charwise.params import Params

ETA = 0.1  # the exercise's AdaGrad learning rate
ETA_OTHERS = 2e-3  # default learning rate of rmsprop and adam
EPS = 1e-8  # AdaGrad: inside the square root; RMSProp and Adam: added to it
CLIP = 5.0  # every gradient entry is clipped to [-CLIP, CLIP] before the step
ALPHA = 0.95  # RMSProp's decay of the squared-gradient average
BETA1, BETA2 = 0.9, 0.999  # Adam's decays of the first and second moments


def adagrad_step(params: Params, grads: Params, G: Params, eta=ETA, eps=EPS, clip=CLIP):
    """Clip grads in place, then G += g^2 and theta -= eta * g / sqrt(G + eps), in place."""
    for p, g, acc in zip(params.arrays(), grads.arrays(), G.arrays(), strict=True):
        np.clip(g, -clip, clip, out=g)
        acc += g * g
        p -= eta * g / np.sqrt(acc + eps)


SCHEDULES = ("constant", "cosine", "linear")


class LRSchedule:
    """The learning rate of update t (from 1): eta f(t). Warm-up: f = t / W for t <= W. Then
    constant: f = 1; cosine: f = r + (1 - r)(1 + cos(pi s)) / 2; linear: f = r + (1 - r)(1 - s),
    with s = (t - W) / (T - W), T the update the decay ends at (f = r after it) and r = min_lr."""

    def __init__(self, kind: str, warmup: int = 0, min_lr: float = 0.0, total: int = 0):
        self.kind, self.warmup, self.min_lr, self.total = kind, warmup, min_lr, total

    def factor(self, t: int) -> float:
        W, T, r = self.warmup, self.total, self.min_lr
        if t <= W:
            return t / W
        if self.kind == "constant":
            return 1.0
        s = min(1.0, (t - W) / max(T - W, 1))
        if self.kind == "cosine":
            return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * s))
        return r + (1.0 - r) * (1.0 - s)


class Optimizer:
    """The state slots an optimiser keeps per parameter array, and its step."""

    name = ""
    slots: tuple[str, ...] = ()

    def __init__(self, eta: float, clip: float = CLIP, eps: float = EPS):
        self.eta, self.clip, self.eps = eta, clip, eps
        self.schedule: LRSchedule | None = None  # None: eta at every update

    def lr(self, t: int) -> float:
        """The learning rate of update t (t counts from 1)."""
        return self.eta if self.schedule is None else self.eta * self.schedule.factor(t)

    def init_state(self, params: Params) -> dict[str, Params]:
        """Every slot starts at zero."""
        return {slot: Params.zeros_like(params) for slot in self.slots}

    def step(self, params: Params, grads: Params, state: dict[str, Params], t: int) -> None:
        """One update of params in place from grads (clipped in place); t counts from 1."""
        for name, g in grads.items():
            np.clip(g, -self.clip, self.clip, out=g)
            self.update(params[name], g, {s: state[s][name] for s in self.slots}, t)

    def update(self, p: np.ndarray, g: np.ndarray, slots: dict[str, np.ndarray], t: int):
        raise NotImplementedError


class AdaGrad(Optimizer):
    """G += g^2;  theta -= eta g / sqrt(G + eps)."""

    name, slots = "adagrad", ("G",)

    def step(self, params, grads, state, t):
        adagrad_step(params, grads, state["G"], self.lr(t), self.eps, self.clip)


class RMSProp(Optimizer):
    """v = alpha v + (1 - alpha) g^2;  theta -= eta g / (sqrt(v) + eps)."""

    name, slots = "rmsprop", ("v",)

    def __init__(self, eta: float, clip: float = CLIP, eps: float = EPS, alpha: float = ALPHA):
        super().__init__(eta, clip, eps)
        self.alpha = alpha

    def update(self, p, g, slots, t):
        v = slots["v"]
        v *= self.alpha
        v += (1.0 - self.alpha) * g * g
        p -= self.lr(t) * g / (np.sqrt(v) + self.eps)


class Adam(Optimizer):
    """m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  theta -= eta m^ / (sqrt(v^) + eps),
    with m^ = m / (1 - b1^t) and v^ = v / (1 - b2^t)."""

    name, slots = "adam", ("m", "v")

    def __init__(self, eta: float, clip: float = CLIP, eps: float = EPS, betas=(BETA1, BETA2)):
        super().__init__(eta, clip, eps)
        self.beta1, self.beta2 = betas

    def update(self, p, g, slots, t):
        m, v = slots["m"], slots["v"]
        m *= self.beta1
        m += (1.0 - self.beta1) * g
        v *= self.beta2
        v += (1.0 - self.beta2) * g * g
        m_hat = m / (1.0 - self.beta1**t)
        v_hat = v / (1.0 - self.beta2**t)
        p -= self.lr(t) * m_hat / (np.sqrt(v_hat) + self.eps)


OPTIMIZERS = {cls.name: cls for cls in (AdaGrad, RMSProp, Adam)}


def default_eta(name: str) -> float:
    """The default learning rate of an optimiser: 0.1 for adagrad, 2e-3 otherwise."""
    return ETA if name == "adagrad" else ETA_OTHERS


def make_optimizer(name: str, eta: float, clip: float = CLIP, alpha: float = ALPHA) -> Optimizer:
    """An optimiser by name with the run's settings."""
    if name not in OPTIMIZERS:
        raise CharwiseError(f"unknown optimizer {name!r}; choose {', '.join(OPTIMIZERS)}")
    if name == "rmsprop":
        return RMSProp(eta, clip, alpha=alpha)
    return OPTIMIZERS[name](eta, clip)


from charwise.state import TrainState  # noqa: E402, F401  (its old home; state.py owns it now)
