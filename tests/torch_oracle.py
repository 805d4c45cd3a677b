"""The same networks built from PyTorch's own modules (nn.RNN, nn.LSTM, nn.GRU, one per
layer) loaded with charwise's arrays: an independent oracle whose gradients come from
autograd. Tests only; torch is never a runtime dependency."""

from __future__ import annotations

import numpy as np
import torch

from charwise.params import Params

MODULES = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def layers(params: Params) -> list[torch.nn.Module]:
    """One float64 torch module per layer with charwise's weights (SPEC.md: torch's b_ih is
    b, its b_hh is zero, or [0, 0, b_hn] for the gru)."""
    spec = params.spec
    modules = []
    for layer in range(1, spec.layers + 1):
        names = spec.layer_names(layer)
        n_in = spec.K if layer == 1 else spec.m
        module = MODULES[spec.family](n_in, spec.m, dtype=torch.float64)
        with torch.no_grad():
            module.weight_ih_l0.copy_(torch.from_numpy(params[names["U"]]))
            module.weight_hh_l0.copy_(torch.from_numpy(params[names["W"]]))
            module.bias_ih_l0.copy_(torch.from_numpy(params[names["b"]]))
            module.bias_hh_l0.zero_()
            if spec.family == "gru":
                module.bias_hh_l0[2 * spec.m :] = torch.from_numpy(params[names["bhn"]])
        modules.append(module)
    return modules


def output(params: Params) -> torch.nn.Linear:
    linear = torch.nn.Linear(params.spec.m, params.spec.K, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(params["V"]))
        linear.bias.copy_(torch.from_numpy(params["c"]))
    return linear


def loss(params: Params, modules, linear, X, Y, state0: tuple, masks=None) -> torch.Tensor:
    """(1/B) sum_b sum_t -log p_t[y_t] over X, Y (T, B) from state0 (tuples of (L, B, m));
    masks: dropout masks (B, T, m) for the inputs of layers 2..L and for h^L."""
    spec = params.spec
    B = X.shape[1]
    u = torch.nn.functional.one_hot(torch.tensor(X), spec.K).to(torch.float64)  # (T, B, K)
    for layer, module in enumerate(modules):
        if layer and masks is not None:
            u = u * torch.tensor(masks[layer - 1].transpose(1, 0, 2))
        start = tuple(torch.tensor(s[layer : layer + 1]) for s in state0)
        u, _ = module(u, start if spec.family == "lstm" else start[0])
    if masks is not None:
        u = u * torch.tensor(masks[-1].transpose(1, 0, 2))
    logits = linear(u).reshape(-1, spec.K)
    return (
        torch.nn.functional.cross_entropy(logits, torch.tensor(Y).reshape(-1), reduction="sum") / B
    )


def grads(params: Params, modules, linear) -> dict[str, np.ndarray]:
    """The torch gradients under charwise's names (after loss(...).backward())."""
    spec = params.spec
    out = {"V": linear.weight.grad.numpy(), "c": linear.bias.grad.numpy()}
    for layer, module in enumerate(modules, start=1):
        names = spec.layer_names(layer)
        out[names["U"]] = module.weight_ih_l0.grad.numpy()
        out[names["W"]] = module.weight_hh_l0.grad.numpy()
        out[names["b"]] = module.bias_ih_l0.grad.numpy()
        if spec.family == "gru":
            out[names["bhn"]] = module.bias_hh_l0.grad.numpy()[2 * spec.m :]
    return out
