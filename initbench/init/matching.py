"""What a rule's `where:` clause matches: module class, parameter role, name glob, LSTM/GRU gate."""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from torch import nn

WHERE_KEYS = ("module", "param", "name", "gate")
# PyTorch's gate order in the stacked weights and biases of its recurrent layers.
LSTM_GATES, GRU_GATES = "ifgo", "rzn"
GATES = {"i": "LSTM input", "f": "LSTM forget", "g": "LSTM cell", "o": "LSTM output",
         "r": "GRU reset", "z": "GRU update", "n": "GRU new"}
GATED_ROLES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_LAYER_SUFFIX = re.compile(r"_l\d+(_reverse)?$")


def role_of(local_name: str) -> str:
    """A parameter's role: its name in its module without the layer suffix (weight_ih_l0 -> weight_ih)."""
    return _LAYER_SUFFIX.sub("", local_name)


def gates_of(module: nn.Module, role: str) -> str | None:
    """The gate letters stacked along dim 0 of `module`'s parameter `role`, or None if not gated."""
    if role not in GATED_ROLES:
        return None
    if isinstance(module, nn.LSTM | nn.LSTMCell):
        return LSTM_GATES
    if isinstance(module, nn.GRU | nn.GRUCell):
        return GRU_GATES
    return None


@dataclass(frozen=True)
class Alias:
    name: str  # dotted, as in named_parameters
    module: nn.Module  # the module that directly owns it
    role: str


@dataclass(frozen=True)
class ParamRef:
    """A unique parameter tensor and every name it is reachable under (shared parameters have several)."""

    tensor: nn.Parameter
    aliases: tuple[Alias, ...]

    @property
    def name(self) -> str:
        return self.aliases[0].name

    @property
    def module(self) -> nn.Module:
        return self.aliases[0].module

    @property
    def role(self) -> str:
        return self.aliases[0].role


def collect_params(model: nn.Module) -> list[ParamRef]:
    """Every unique parameter of `model` in model.named_parameters() order, with all its aliases."""
    aliases: dict[int, list[Alias]] = {}
    tensors: dict[int, nn.Parameter] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        for local, tensor in module.named_parameters(recurse=False):
            name = f"{prefix}.{local}" if prefix else local
            tensors.setdefault(id(tensor), tensor)
            aliases.setdefault(id(tensor), []).append(Alias(name, module, role_of(local)))
    return [ParamRef(tensors[key], tuple(aliases[key])) for key in tensors]


def _names(value: object, key: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items or not all(isinstance(v, str) for v in items):
        raise ValueError(f"where.{key} must be a name or a non-empty list of names, got {value!r}")
    return tuple(items)


@dataclass(frozen=True)
class Where:
    """Empty fields match anything. module: class names (subclasses count); param: roles; name: globs on
    the dotted parameter name; gate: LSTM/GRU gate letters (the rule then fills those rows only)."""

    module: tuple[str, ...] = ()
    param: tuple[str, ...] = ()
    name: tuple[str, ...] = ()
    gate: tuple[str, ...] = ()

    def matches(self, ref: ParamRef, gate: str | None = None) -> bool:
        if self.gate and (gate is None or gate not in self.gate):
            return False
        return any(self._matches(alias) for alias in ref.aliases)

    def _matches(self, alias: Alias) -> bool:
        if self.module and not {c.__name__ for c in type(alias.module).__mro__} & set(self.module):
            return False
        if self.param and alias.role not in self.param:
            return False
        return not self.name or any(fnmatchcase(alias.name, glob) for glob in self.name)

    def __str__(self) -> str:
        parts = []
        for key in WHERE_KEYS:
            values = getattr(self, key)
            if values:
                parts.append(f"{key}: {values[0] if len(values) == 1 else '[' + ', '.join(values) + ']'}")
        return "{" + ", ".join(parts) + "}"


def parse_where(raw: object) -> Where:
    """A Where from a rule's `where:` mapping (None or {} match every parameter); ValueError if malformed."""
    if raw is None:
        return Where()
    if not isinstance(raw, Mapping):
        raise ValueError(f"where must be a mapping with keys {', '.join(WHERE_KEYS)}, got {raw!r}")
    unknown = sorted(set(raw) - set(WHERE_KEYS))
    if unknown:
        raise ValueError(f"unknown where keys {unknown}; valid: {', '.join(WHERE_KEYS)}")
    fields = {key: _names(value, key) for key, value in raw.items()}
    bad = [g for g in fields.get("gate", ()) if g not in GATES]
    if bad:
        valid = ", ".join(f"{k} ({v})" for k, v in GATES.items())
        raise ValueError(f"unknown gates {bad}; valid: {valid}")
    return Where(**fields)
