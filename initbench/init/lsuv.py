"""Layer-sequential unit-variance init (Mishkin & Matas 2016, "All you need is a good init").

Step 1, orthogonal weights, is an ordinary policy rule; step 2 is :func:`lsuv_`: layer by layer in
forward order, divide the weights by the std of the layer's output on a batch of real data until
that output's variance is within `tol` of 1. Unlike LSUV-pytorch (which draws from numpy's global
RNG), everything here is fixed by the batch and the generator handed in.
"""

import math
from dataclasses import dataclass, fields
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from ..vitals.signal import first_tensor, side_effect_free

LSUV_COLUMNS = ("layer", "iterations", "var_before", "var_after", "converged")


@dataclass(frozen=True)
class LSUVConfig:
    """The `lsuv:` section of a policy file."""

    tol: float = 0.1  # stop when |Var(output) - target_var| < tol
    max_iters: int = 10  # rescalings per layer at most
    target_var: float = 1.0
    modules: tuple[str, ...] = ("Conv1d", "Conv2d", "Conv3d", "Linear")  # class names, subclasses count

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "LSUVConfig":
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(cfg) - set(valid))
        if unknown:
            raise ValueError(f"unknown lsuv keys {unknown}; valid: {', '.join(valid)}")
        cfg = dict(cfg)
        if "modules" in cfg:
            cfg["modules"] = (cfg["modules"],) if isinstance(cfg["modules"], str) else tuple(cfg["modules"])
        config = cls(**cfg)
        if not (config.tol > 0 and config.target_var > 0 and config.max_iters >= 1):
            raise ValueError(f"lsuv needs tol > 0, target_var > 0 and max_iters >= 1, got {config}")
        return config


class _Stop(Exception):
    """Raised by a forward hook once the layer of interest has run: the rest is not needed."""


def lsuv_layers(model: nn.Module, batch: Tensor, modules: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    """(name, module) of the layers LSUV rescales: instances of `modules` with a weight of at least
    2 dimensions, in the order a forward pass on `batch` first calls them."""
    candidates = {
        module: name
        for name, module in model.named_modules()
        if {c.__name__ for c in type(module).__mro__} & set(modules)
        and isinstance(getattr(module, "weight", None), Tensor)
        and module.weight.dim() >= 2
    }
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, a, o: order.append(m) if m not in order else None)
             for m in candidates]
    try:
        model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    return [(candidates[m], m) for m in order]


def _output_var(model: nn.Module, batch: Tensor, layer: nn.Module) -> float:
    captured: list[Tensor] = []

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        captured.append(first_tensor(output)[0])
        raise _Stop

    handle = layer.register_forward_hook(hook)
    try:
        model(batch)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured[0].double().var().item()


def lsuv_(
    model: nn.Module,
    batch: Tensor,
    *,
    tol: float = 0.1,
    max_iters: int = 10,
    target_var: float = 1.0,
    modules: tuple[str, ...] = LSUVConfig.modules,
    generator: torch.Generator | None = None,
) -> pd.DataFrame:
    r"""Rescale each layer's weight in place until its output variance is within `tol` of `target_var`.

    Layers are Linear/Conv (`modules`) in forward order; each step is
    :math:`W \leftarrow W \sqrt{\text{target\_var} / \mathrm{Var}(\text{output})}`, at most
    `max_iters` times per layer. The forward passes run in train mode (BatchNorm uses batch
    statistics, as in training) without lasting effects; dropout, if any, draws from a seed taken
    from `generator`. Returns one row per layer: layer, iterations, var_before, var_after, converged.
    A layer whose output has zero or non-finite variance is left as is (converged False).
    """
    seed = int(torch.randint(2**62, (1,), generator=generator).item())
    param = next(model.parameters(), None)
    if param is not None:
        batch = batch.to(param.device)
    rows = []
    with side_effect_free(model, train=True, seed=seed), torch.no_grad():
        for name, layer in lsuv_layers(model, batch, modules):
            var = before = _output_var(model, batch, layer)
            iterations = 0
            while abs(var - target_var) >= tol and iterations < max_iters and 0 < var < math.inf:
                layer.weight.mul_(math.sqrt(target_var / var))
                var = _output_var(model, batch, layer)
                iterations += 1
            rows.append((name, iterations, before, var, abs(var - target_var) < tol))
    return pd.DataFrame(rows, columns=list(LSUV_COLUMNS))
