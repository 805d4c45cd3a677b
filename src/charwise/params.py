"""Params: the named arrays of a model (SPEC.md), in the model's canonical order.

Any optimiser steps any model through this one interface: names, arrays, copies.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from charwise.models import SIG, ModelSpec


class Params:
    """Named arrays (name -> ndarray) of one model; `spec` says which model they belong to.

    Arrays are reachable as params["W"] or params.W.
    """

    def __init__(self, arrays: dict[str, np.ndarray], spec: ModelSpec):
        self.__dict__["_arrays"] = dict(arrays)
        self.__dict__["spec"] = spec

    @classmethod
    def _make(cls, arrays: dict[str, np.ndarray], spec: ModelSpec) -> Params:
        obj = cls.__new__(cls)  # the same class as the original (RNNParams stays RNNParams)
        Params.__init__(obj, arrays, spec)
        return obj

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self.__dict__["_arrays"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value) -> None:
        if name not in self._arrays:
            raise AttributeError(f"{type(self).__name__} has no array {name!r}")
        self._arrays[name] = value

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        self.__setattr__(name, value)

    def __contains__(self, name: str) -> bool:
        return name in self._arrays

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def names(self) -> list[str]:
        return list(self._arrays)

    def arrays(self) -> tuple[np.ndarray, ...]:
        return tuple(self._arrays.values())

    def items(self):
        return self._arrays.items()

    @classmethod
    def init(cls, spec: ModelSpec, seed: int = 1, sig: float = SIG, dtype=np.float64) -> Params:
        """A model's initial parameters (ModelSpec.draw), in dtype."""
        return cls._make(spec.draw(seed, sig), spec).astype(dtype)

    @property
    def m(self) -> int:
        return self.spec.m

    @property
    def K(self) -> int:
        return self.spec.K

    @property
    def dtype(self) -> np.dtype:
        return next(iter(self._arrays.values())).dtype

    @classmethod
    def zeros_like(cls, other: Params) -> Params:
        return other._make({k: np.zeros_like(a) for k, a in other.items()}, other.spec)

    def copy(self) -> Params:
        return self._make({k: a.copy() for k, a in self.items()}, self.spec)

    def astype(self, dtype) -> Params:
        return self._make(
            {k: np.ascontiguousarray(a, dtype=dtype) for k, a in self.items()}, self.spec
        )

    def copy_into(self, dst: Params) -> None:
        for name, a in self.items():
            dst[name][...] = a


class RNNParams(Params):
    """The exercise's five arrays: b (m,), c (K,), U (m, K), W (m, m), V (K, m)."""

    def __init__(self, b, c, U, W, V):
        spec = ModelSpec("rnn", K=np.shape(c)[0], m=np.shape(b)[0], layers=1)
        super().__init__(dict(b=b, c=c, U=U, W=W, V=V), spec)

    @classmethod
    def init(cls, m: int, K: int, sig: float = 0.01, seed: int = 0, dtype=np.float64):
        """U, W, V drawn in that order from default_rng(seed), scaled by sig; b, c zero."""
        spec = ModelSpec("rnn", K=K, m=m)
        return cls._make(spec.draw(seed, sig), spec).astype(dtype)
