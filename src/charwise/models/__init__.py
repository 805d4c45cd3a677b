"""Model families (SPEC.md, "Beyond the exercise"): one file per cell, and the model's shape.

A model is L layers of one cell family between a one-hot input and a softmax output:
layer 1 reads U[:, x_t], layer l > 1 reads h^{l-1}_t, and o_t = V h^L_t + c. A cell file holds
only its recurrence: the parameters it adds per layer, its initial draw, and forward and
backward over a sequence given the input term U u_t of every step.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from charwise.errors import CharwiseError

FAMILIES = ("rnn", "lstm", "gru")
SIG = 0.01  # the exercise's initial weight scale (rnn only)


def cell(family: str) -> ModuleType:
    """The module of a cell family (rnn, lstm or gru)."""
    if family not in FAMILIES:
        raise CharwiseError(f"unknown model {family!r}; choose one of {', '.join(FAMILIES)}")
    return importlib.import_module(f"charwise.models.{family}")


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function 1 / (1 + exp(-z)); exp overflows to inf for z << 0, giving 0."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def suffix(layer: int) -> str:
    """Array-name suffix of a layer (1-based): none for layer 1 (the exercise's names), else l."""
    return "" if layer == 1 else str(layer)


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a model: family, vocabulary size K, hidden size m, layers L."""

    family: str = "rnn"
    K: int = 1
    m: int = 100
    layers: int = 1

    def __post_init__(self):
        cell(self.family)  # refuses an unknown family
        if min(self.K, self.m, self.layers) < 1:
            raise CharwiseError("a model needs m >= 1, K >= 1 and at least one layer")

    @property
    def cell(self) -> ModuleType:
        return cell(self.family)

    @property
    def state_names(self) -> tuple[str, ...]:
        """What a layer carries from step to step: h, and c for the lstm."""
        return self.cell.STATE

    def layer_names(self, layer: int) -> dict[str, str]:
        """Generic role -> array name for one layer: U, W, b and the cell's extra biases."""
        s = suffix(layer)
        return {role: role + s for role in ("U", "W", "b", *self.cell.EXTRA)}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every array by name, in the canonical order: biases, c, matrices, V (layer order).

        For the exercise (rnn, one layer) this is b, c, U, W, V.
        """
        G, m, K = self.cell.GATES, self.m, self.K
        biases, matrices = {}, {}
        for layer in range(1, self.layers + 1):
            names = self.layer_names(layer)
            biases[names["b"]] = (G * m,)
            for extra in self.cell.EXTRA:
                biases[names[extra]] = (m,)
            n_in = K if layer == 1 else m
            matrices[names["U"]] = (G * m, n_in)
            matrices[names["W"]] = (G * m, m)
        return biases | {"c": (K,)} | matrices | {"V": (K, m)}

    def names(self) -> list[str]:
        return list(self.shapes())

    def draw(self, seed: int = 1, sig: float = SIG) -> dict[str, np.ndarray]:
        """Initial arrays drawn exactly as SPEC.md prescribes, from one generator, float64.

        For each layer U then W, then V, from default_rng(seed): sig * standard normal for
        the rnn, uniform(-1/sqrt(m), 1/sqrt(m)) for lstm and gru; biases zero, except the
        lstm forget gate's, which is 1.
        """
        rng = np.random.default_rng(seed)
        draw = self.cell.drawer(rng, self.m, sig)
        shapes = self.shapes()
        arrays = {name: np.zeros(shape) for name, shape in shapes.items()}
        for layer in range(1, self.layers + 1):
            names = self.layer_names(layer)
            arrays[names["U"]] = draw(shapes[names["U"]])
            arrays[names["W"]] = draw(shapes[names["W"]])
            self.cell.init_biases(arrays[names["b"]], self.m)
        arrays["V"] = draw((self.K, self.m))
        return arrays

    def zero_state(self, batch: int = 1, dtype=np.float64) -> tuple[np.ndarray, ...]:
        """The carried state of `batch` streams at the start of an epoch: zeros (L, B, m)."""
        return tuple(np.zeros((self.layers, batch, self.m), dtype) for _ in self.state_names)

    def to_json(self) -> dict:
        return {"family": self.family, "K": self.K, "m": self.m, "layers": self.layers}

    def describe(self) -> str:
        layers = f"{self.layers}-layer " if self.layers > 1 else ""
        return f"{layers}{self.family} m = {self.m}"
