"""TrainState: everything that changes during training, and the ONLY place that names and
checks the arrays of checkpoints and model files.

Checkpoint array names: the parameters by their own names (b, c, U, W, V, ...), each optimiser
slot as <slot>_<name> (G_W for AdaGrad, m_W and v_W for Adam), the best parameters as
best_<name>, the carried state as h_prev (and cell_prev for the lstm's c), (L, B, m), and the
best model's starting state as best_h (and best_cell), (L, m). Format-2 files hold h_prev and best_h
as (m,) (one layer, one stream); they are read as (1, 1, m) and (1, m).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from charwise.errors import CharwiseError
from charwise.models import ModelSpec
from charwise.params import Params

# Checkpoint names of the carried state ("cell" is the lstm's c, not the output bias c) ...
CARRY = {"h": "h_prev", "c": "cell_prev"}
BEST_CARRY = {"h": "best_h", "c": "best_cell"}  # ... of the best model's starting state ...
START = {"h": "h0", "c": "cell0"}  # ... and in best.npz, the state its passage starts from


@dataclass
class TrainState:
    """Parameters, optimiser state, carried state, counters and the best model (SPEC.md)."""

    params: Params
    opt: dict[str, Params]  # optimiser slots by name: G (adagrad), v (rmsprop), m and v (adam)
    carry: tuple[np.ndarray, ...]  # carried state per spec.state_names, each (L, B, m)
    updates: int = 0  # updates done so far
    smooth_loss: float = float("nan")  # undefined until the first update
    best: Params | None = None  # parameters that produced the lowest smooth loss
    best_carry: tuple[np.ndarray, ...] = field(default_factory=tuple)  # stream 0's, (L, m)
    best_x0: int = 0  # first input character of that chunk (stream 0)
    best_update: int = 0
    best_smooth: float = float("inf")

    @classmethod
    def fresh(
        cls, params: Params, slots: tuple[str, ...] = ("G",), batch: int = 1, opt=None
    ) -> TrainState:
        """The state before update 1: carried state at zero, the optimiser's state (opt, from
        its init_state) or its slots at zero."""
        spec = params.spec
        carry = spec.zero_state(batch, params.dtype)
        return cls(
            params=params,
            opt=opt if opt is not None else {slot: Params.zeros_like(params) for slot in slots},
            carry=carry,
            best=params.copy(),
            best_carry=tuple(np.zeros((spec.layers, spec.m), params.dtype) for _ in carry),
        )

    @property
    def spec(self) -> ModelSpec:
        return self.params.spec

    # the exercise's names: one layer, one stream, AdaGrad
    @property
    def G(self) -> Params:
        return self.opt["G"]

    @G.setter
    def G(self, value: Params) -> None:
        self.opt["G"] = value

    @property
    def h_prev(self) -> np.ndarray:
        """h carried by layer 1 of stream 0 (a view): the exercise's h_prev."""
        return self.carry[0][0, 0]

    @property
    def best_h(self) -> np.ndarray:
        return self.best_carry[0][0]

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array of the training state by checkpoint name (views, not copies)."""
        names = self.spec.state_names
        return (
            dict(self.params.items())
            | {f"{slot}_{n}": a for slot, p in self.opt.items() for n, a in p.items()}
            | {f"best_{n}": a for n, a in self.best.items()}
            | {CARRY[s]: a for s, a in zip(names, self.carry, strict=True)}
            | {BEST_CARRY[s]: a for s, a in zip(names, self.best_carry, strict=True)}
        )

    def model_arrays(self, best: bool = False) -> dict[str, np.ndarray]:
        """Arrays of a model file: final.npz (parameters, optimiser state, carried state) or
        best.npz (the best parameters and the state their passage starts from)."""
        names = self.spec.state_names
        if best:
            start = {START[s]: a for s, a in zip(names, self.best_carry, strict=True)}
            return dict(self.best.items()) | start
        everything = self.arrays()
        return {k: a for k, a in everything.items() if not k.startswith("best_")}

    def restore(self, arrays: dict[str, np.ndarray], where) -> None:
        """Copy a checkpoint's arrays into this state after checking names, shapes, dtypes and
        finiteness (a format-2 file's (m,) states are read as one layer and one stream)."""
        targets = self.arrays()
        if sorted(arrays) != sorted(targets):
            raise CharwiseError(
                f"{where} holds arrays {sorted(arrays)}, expected {sorted(targets)} "
                f"for {self.spec.describe()}, K={self.spec.K}; the file is corrupt"
            )
        for name, dst in targets.items():
            src = _lift(name, arrays[name], dst.shape)
            if src.shape != dst.shape or src.dtype != dst.dtype:
                raise CharwiseError(
                    f"{where}: {name} has shape {src.shape} and dtype {src.dtype}, expected "
                    f"{dst.shape} {dst.dtype}; the file is corrupt"
                )
            if not np.isfinite(src).all():
                raise CharwiseError(f"{where}: {name} holds NaN or infinity; the file is corrupt")
            dst[...] = src


def _lift(name: str, a: np.ndarray, shape: tuple) -> np.ndarray:
    """A format-2 state array, (m,), seen with the (1, 1, m) or (1, m) shape of format 3."""
    if name in (*CARRY.values(), *BEST_CARRY.values()) and a.ndim == 1 and len(shape) > 1:
        if shape[:-1] == (1,) * (len(shape) - 1):
            return a.reshape(shape[:-1] + a.shape)
    return a


def model_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Expected shapes of the arrays a model file may hold (the carried state's streams, its
    middle axis, as one: check_model_arrays accepts any)."""
    shapes = spec.shapes()
    L, m = spec.layers, spec.m
    expected = dict(shapes)
    for prefix in ("G", "v", "m", "best"):
        expected |= {f"{prefix}_{n}": s for n, s in shapes.items()}
    for s in spec.state_names:
        expected[START[s]] = (L, m)
        expected[BEST_CARRY[s]] = (L, m)
        expected[CARRY[s]] = (L, 1, m)
    return expected


def check_model_arrays(spec: ModelSpec, arrays: dict[str, np.ndarray], dtype, path) -> None:
    """Shapes, dtypes and finiteness of a model file's arrays (format 2's (m,) states allowed)."""
    expected = model_shapes(spec)
    for name, a in arrays.items():
        want = expected.get(name, a.shape)
        if name in (*CARRY.values(),) and a.ndim == 3 and a.shape[::2] == want[::2]:
            want = a.shape  # any number of streams
        if name in (*CARRY.values(), *BEST_CARRY.values(), *START.values()) and a.ndim == 1:
            want = (spec.m,) if spec.layers == 1 else want  # format 2: one layer, one stream
        if a.shape != want or a.dtype != dtype:
            raise CharwiseError(
                f"{path}: array {name} has shape {a.shape} and dtype {a.dtype}, expected "
                f"{want} {dtype} for {spec.describe()}, K={spec.K}; the file is corrupt"
            )
        if not np.isfinite(a).all():
            raise CharwiseError(f"{path}: array {name} holds NaN or infinity")
