"""RNNParams: the five arrays of the vanilla RNN, created exactly as SPEC.md prescribes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NAMES = ("b", "c", "U", "W", "V")  # the order used everywhere (tables, checkpoints)


@dataclass
class RNNParams:
    """b: (m,), c: (K,), U: (m, K), W: (m, m), V: (K, m)."""

    b: np.ndarray
    c: np.ndarray
    U: np.ndarray
    W: np.ndarray
    V: np.ndarray

    @classmethod
    def init(cls, m: int, K: int, sig: float = 0.01, seed: int = 0, dtype=np.float64):
        """U, W, V drawn in that order from default_rng(seed), scaled by sig; b, c zero."""
        rng = np.random.default_rng(seed)
        U = sig * rng.standard_normal((m, K))
        W = sig * rng.standard_normal((m, m))
        V = sig * rng.standard_normal((K, m))
        return cls(np.zeros(m), np.zeros(K), U, W, V).astype(dtype)

    @classmethod
    def zeros_like(cls, other: RNNParams) -> RNNParams:
        return cls(*(np.zeros_like(a) for a in other.arrays()))

    @property
    def m(self) -> int:
        return self.b.shape[0]

    @property
    def K(self) -> int:
        return self.c.shape[0]

    @property
    def dtype(self):
        return self.b.dtype

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.b, self.c, self.U, self.W, self.V)

    def items(self):
        return zip(NAMES, self.arrays(), strict=True)

    def copy(self) -> RNNParams:
        return RNNParams(*(a.copy() for a in self.arrays()))

    def astype(self, dtype) -> RNNParams:
        return RNNParams(*(np.ascontiguousarray(a, dtype=dtype) for a in self.arrays()))

    def copy_into(self, dst: RNNParams) -> None:
        for s, d in zip(self.arrays(), dst.arrays(), strict=True):
            d[...] = s
