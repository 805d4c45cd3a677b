"""Engines: interchangeable implementations of the same math (same interface, same numbers).

Each engine module provides
    loss_and_grads(params, x, y, h0) -> (loss, grads, h_last)
    sample(params, h0, x0, n, uniforms, temperature=1.0, top_p=1.0, stop=-1) -> indices
    advance(params, h0, x) -> h_last
    train_block(state, data, starts, lengths, resets, eta, eps, clip, losses) -> updates done
"""

from __future__ import annotations

import importlib
from types import ModuleType

from charwise.errors import CharwiseError

ENGINES = ("fast", "reference")


def get_engine(name: str) -> ModuleType:
    """The engine module by name; imported on first use so `import charwise` stays light."""
    if name not in ENGINES:
        raise CharwiseError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    return importlib.import_module(f"charwise.engines.{name}")
