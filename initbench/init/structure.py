"""What some schemes need to know of a model's structure, found by the naming convention models follow.

A residual model names each residual branch `branch` (a module whose output is added to the stream) and
the last weight layer of a branch `out`; an attention module holds its head count as `heads`. A scheme
whose keyword arguments include a fact's name (and whose rule does not give it) gets the fact::

    num_branches   the number of residual branches (modules named `branch`): Fixup's L, GPT-2's 2*n_layer
    branch_layers  the number of weight layers (2-D or more) in one branch: Fixup's m
    heads          the `heads` attribute of the parameter's module or its nearest ancestor that has one
    attn_power     likewise `attn_power`: attention logits q.k / d_head**attn_power (1/2 standard, 1 muP)
    fan_in         the fan-in of the weight (2-D or more) of the parameter's module: a bias's layer's fan-in

A model that lacks the structure gets a problem, naming what it lacks, before anything is filled.
"""

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.init import _calculate_fan_in_and_fan_out

FACTS = {
    "num_branches": "residual branches (modules named `branch`, as initbench's resmlp, resnet and transformer "
    "have)",
    "branch_layers": "residual branches with weight layers (modules named `branch`)",
    "heads": "an attention module with a `heads` attribute above this parameter",
    "attn_power": "an attention module with an `attn_power` attribute above this parameter",
    "fan_in": "a weight of 2 or more dimensions in the parameter's module (a layer's fan-in)",
}


def _branches(model: nn.Module) -> list[nn.Module]:
    return [module for name, module in model.named_modules() if name.rpartition(".")[2] == "branch"]


def _num_branches(model: nn.Module, owner: str) -> int | None:
    return len(_branches(model)) or None


def _branch_layers(model: nn.Module, owner: str) -> int | None:
    """The number of weight layers of a branch; None if there are no branches or they differ."""
    counts = {sum(1 for m in branch.modules() if getattr(m, "weight", None) is not None and m.weight.dim() >= 2)
              for branch in _branches(model)}
    return counts.pop() if len(counts) == 1 and 0 not in counts else None


def _attribute(name: str, kind: type) -> Callable[[nn.Module, str], int | float | None]:
    """The `name` attribute (of type `kind`) of the module `owner` or its nearest ancestor that has one."""

    def find(model: nn.Module, owner: str):
        parts = owner.split(".") if owner else []
        for depth in range(len(parts), -1, -1):
            value = getattr(model.get_submodule(".".join(parts[:depth])), name, None)
            if isinstance(value, kind) and not isinstance(value, bool):
                return value
        return None

    return find


def _fan_in(model: nn.Module, owner: str) -> int | None:
    weight = getattr(model.get_submodule(owner), "weight", None)
    is_weight = isinstance(weight, torch.Tensor) and weight.dim() >= 2
    return _calculate_fan_in_and_fan_out(weight)[0] if is_weight else None


_FINDERS: dict[str, Callable[[nn.Module, str], int | None]] = {
    "num_branches": _num_branches,
    "branch_layers": _branch_layers,
    "heads": _attribute("heads", int),
    "attn_power": _attribute("attn_power", float),
    "fan_in": _fan_in,
}


def facts_for(model: nn.Module, owner: str, names: list[str]) -> tuple[dict[str, int], list[str]]:
    """({fact: value}, [facts the model lacks]) for the facts `names`, at the module named `owner`."""
    found, missing = {}, []
    for name in names:
        value = _FINDERS[name](model, owner)
        if value is None:
            missing.append(name)
        else:
            found[name] = value
    return found, missing
