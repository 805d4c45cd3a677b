"""Engines: interchangeable implementations of the same math (same interface, same numbers).

Each engine module provides
    run_block(state, optimizer, data, starts, lengths, resets, losses, dropout) -> updates done
    loss_and_grads(params, x, y, state0) -> (loss, grads, state_last)
    sample(params, state0, x0, n, uniforms, temperature=1.0, top_p=1.0, stop=-1) -> indices
    advance(params, state0, x) -> state_last
    evaluate(params, data, runs=None) -> (sum of -log p, characters predicted)
and, for the exercise's one stream and AdaGrad,
    train_block(state, data, starts, lengths, resets, eta, eps, clip, losses) -> updates done
Which engine runs which combination is decided here (why_not), without importing them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from charwise.errors import CharwiseError

ENGINES = ("fast", "reference")  # in order of preference for --engine auto (the CPU)
CHOICES = ("auto", *ENGINES, "torch")
TORCH_HINT = 'pip install -e ".[torch]" (the CPU build alone: pip install torch==2.13.0+cpu)'


def get_engine(name: str) -> ModuleType:
    """The engine module by name; imported on first use so `import charwise` stays light."""
    if name not in CHOICES[1:]:
        raise CharwiseError(f"unknown engine {name!r}; choose one of {', '.join(CHOICES)}")
    try:
        return importlib.import_module(f"charwise.engines.{name}")
    except ImportError as exc:
        if name == "torch" and exc.name == "torch":
            raise CharwiseError(f"--engine torch needs PyTorch: {TORCH_HINT}") from None
        raise


def why_not(
    name: str, spec, optimizer: str, batch: int, dropout: float, dtype: str, scheduled=False
) -> str | None:
    """None when engine `name` runs this combination (scheduled: a learning rate that changes
    over the run), else the reason (without importing it)."""
    if name == "reference":
        return None if dtype == "float64" else "the reference engine is float64 only"
    if name == "torch":
        return None  # every model; whether torch is installed is get_engine's to say
    if dtype not in ("float64", "float32"):
        return f"the {name} engine does not run --dtype {dtype} (it runs float64 and float32)"
    return None


def storage_dtype(dtype: str) -> str:
    """The numpy type of the arrays: bfloat16 (torch's autocast) keeps float32 weights."""
    return "float32" if dtype == "bfloat16" else dtype


def pick(
    name: str, spec, optimizer: str, batch: int, dropout: float, dtype: str, scheduled=False
) -> str:
    """The engine for a run: `name`, or for auto the first of ENGINES that runs it."""
    if name == "auto":
        for candidate in ENGINES:
            if why_not(candidate, spec, optimizer, batch, dropout, dtype, scheduled) is None:
                return candidate
        raise CharwiseError(
            f"no engine runs {spec.describe()} in {dtype} on its own; use --engine torch"
        )
    get_engine(name)  # refuses an unknown name
    reason = why_not(name, spec, optimizer, batch, dropout, dtype, scheduled)
    if reason:
        hint = {
            "fast": "use --engine auto (or reference, in float64) or --engine torch",
            "reference": "use --engine fast or torch for float32",
        }[name]
        raise CharwiseError(f"{reason}; {hint}")
    return name
