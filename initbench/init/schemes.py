"""Init schemes: the Scheme type, declare(), and the declarations of every torch.nn.init function and
of the functions torch lacks (initbench.init.functional); initbench.init.registry collects them.

A scheme fills one tensor in place from a torch.Generator and knows the mean and std its theory
predicts for a tensor of a given shape (NaN where none).
"""

import inspect
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.nn import init
from torch.nn.init import _calculate_fan_in_and_fan_out

from .structure import FACTS

REQUIRED = inspect.Parameter.empty
# The names torch's calculate_gain accepts (torch.nn.init._NonlinearityType).
NONLINEARITIES = (
    "linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "sigmoid", "tanh", "relu", "leaky_relu", "selu",
)
CHOICES = {"mode": ("fan_in", "fan_out"), "nonlinearity": NONLINEARITIES}
# Schemes that take `gain` also accept these instead: gain = calculate_gain(nonlinearity, negative_slope).
GAIN_ALTERNATIVES = ("nonlinearity", "negative_slope")

Moment = Callable[[torch.Size, dict], float]


def fans(shape: torch.Size) -> tuple[int, int]:
    """(fan_in, fan_out) of a tensor of `shape`, by torch's own rule (ValueError below 2-D)."""
    return _calculate_fan_in_and_fan_out(torch.empty(shape, device="meta"))


OptimizerFactors = Callable[[torch.Size, dict, Mapping[str, Any]], dict[str, float]]


@dataclass(frozen=True)
class Scheme:
    """One registered init scheme: `fn` fills a tensor in place; `std`/`mean` give the theory."""

    name: str
    fn: Callable[..., Tensor]
    defaults: Mapping[str, Any]  # every valid arg -> its default (REQUIRED if it has none)
    std: Moment | None = None
    mean: Moment | None = None
    std_rule: str = ""  # `std` in words, for the docs' generated scheme reference ("gain/√fan_mode")
    fan_based: bool = False  # needs fans, so a tensor of at least 2 dimensions
    check: Callable[[torch.Size, dict], str | None] | None = None  # why a shape cannot be filled
    takes_generator: bool = True
    numbers: Mapping[str, type] = field(default_factory=dict)  # args that must be numbers: int or float
    any_args: bool = False  # fn takes **kwargs: no check of arg names
    # (shape, args, optimizer config) -> {optimizer option: factor} for the parameter it fills (μP's
    # per-layer learning rates: InitPolicy.optimizer_scales); None for a scheme that leaves the optimizer alone
    optimizer_factors: OptimizerFactors | None = None

    def valid_args(self) -> list[str]:
        extra = GAIN_ALTERNATIVES if "gain" in self.defaults and "nonlinearity" not in self.defaults else ()
        return [*self.defaults, *extra]

    def resolve(self, args: Mapping[str, Any] | None) -> dict:
        """`args` checked and completed with defaults; ValueError says what is wrong and what is valid."""
        args = dict(args or {})
        unknown = [] if self.any_args else sorted(set(args) - set(self.valid_args()))
        if unknown:
            valid = ", ".join(self.valid_args()) or "none"
            raise ValueError(f"unknown args {unknown} for scheme {self.name!r}; valid args: {valid}")
        if "nonlinearity" in args and "nonlinearity" not in self.defaults:
            if "gain" in args:
                raise ValueError(f"scheme {self.name!r}: give gain or nonlinearity, not both")
            _check_choice(self.name, "nonlinearity", args["nonlinearity"])
            slope = args.pop("negative_slope", None)
            args["gain"] = init.calculate_gain(args.pop("nonlinearity"), slope)
        elif "negative_slope" in args:
            raise ValueError(f"scheme {self.name!r}: negative_slope goes with nonlinearity: leaky_relu")
        missing = [k for k, v in self.defaults.items() if v is REQUIRED and k not in args and k not in FACTS]
        if missing:
            valid = ", ".join(self.defaults)
            raise ValueError(f"scheme {self.name!r} needs args {missing}; valid args: {valid}")
        for key, value in args.items():
            if key in CHOICES:
                _check_choice(self.name, key, value)
            elif key in self.numbers and not _is_a(value, self.numbers[key]):
                kind = "an integer" if self.numbers[key] is int else "a number"
                raise ValueError(f"scheme {self.name!r}: arg {key} must be {kind}, got {value!r}")
        return {**{k: v for k, v in self.defaults.items() if v is not REQUIRED}, **args}

    def facts(self, args: Mapping[str, Any]) -> list[str]:
        """The model facts (structure.FACTS) this scheme reads that `args` do not give."""
        return [k for k in self.defaults if k in FACTS and k not in args]

    def problem(self, shape: torch.Size, args: dict) -> str | None:
        """Why this scheme cannot fill a tensor of `shape` with `args`, or None if it can."""
        if self.fan_based and len(shape) < 2:
            return (
                f"{self.name} computes fan_in/fan_out, which need a tensor of at least 2 dimensions "
                f"(this one has {len(shape)})"
            )
        return self.check(shape, args) if self.check else None

    def expected_std(self, shape: torch.Size, args: dict) -> float:
        return float(self.std(shape, args)) if self.std else math.nan

    def expected_mean(self, shape: torch.Size, args: dict) -> float:
        return float(self.mean(shape, args)) if self.mean else (0.0 if self.std else math.nan)

    def __call__(self, tensor: Tensor, generator: torch.Generator | None, args: dict) -> Tensor:
        """Fill `tensor` in place and return it. A function (a user's _target_) that returns a new tensor
        instead has it copied in, so the label never names a policy that left the old values; other
        return values, a wrong shape and non-finite values (NaN, inf) are refused with a ValueError."""
        with torch.no_grad():
            out = self.fn(tensor, generator=generator, **args) if self.takes_generator else self.fn(tensor, **args)
            if isinstance(out, Tensor) and out is not tensor:
                if out.shape != tensor.shape:
                    raise ValueError(f"{self.name} returned a tensor of shape {tuple(out.shape)} for one of shape "
                                     f"{tuple(tensor.shape)}; fill the tensor it is given in place")
                tensor.copy_(out)
            elif out is not None and out is not tensor:
                raise ValueError(f"{self.name} returned a {type(out).__name__}; an init fills the tensor it is "
                                 "given in place and returns it (or None)")
            if not torch.isfinite(tensor).all():
                raise ValueError(f"{self.name} filled non-finite values (NaN or inf): nothing can train from them")
        return tensor


def _is_a(value: Any, kind: type) -> bool:  # a YAML int is a fine float; a bool is no number
    return not isinstance(value, bool) and isinstance(value, int if kind is int else int | float)


def _check_choice(scheme: str, key: str, value: Any) -> None:
    if value not in CHOICES[key]:
        raise ValueError(f"scheme {scheme!r}: unknown {key} {value!r}; valid: {', '.join(CHOICES[key])}")


def make_scheme(name: str, fn: Callable[..., Tensor], **theory: Any) -> Scheme:
    """A Scheme for `fn(tensor, <args>, generator=None)`: its keyword args are the valid args (any
    args if it takes **kwargs); those annotated int or float must be numbers."""
    params = list(inspect.signature(fn).parameters.values())[1:]  # the first is the tensor
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    defaults = {p.name: p.default for p in params if p.name != "generator" and p.kind in named}
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: skip the type checks
        hints = {}
    numbers = {k: hints[k] for k in defaults if hints.get(k) in (float, int)}
    any_args = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)
    takes_generator = any_args or any(p.name == "generator" for p in params)
    return Scheme(name, fn, defaults, takes_generator=takes_generator, numbers=numbers, any_args=any_args,
                  **theory)


def declare(
    name: str,
    *,
    std: Moment | None = None,
    mean: Moment | None = None,
    std_rule: str = "",
    fan_based: bool = False,
    check: Callable[[torch.Size, dict], str | None] | None = None,
    optimizer_factors: OptimizerFactors | None = None,
) -> Callable[[Callable[..., Tensor]], Scheme]:
    """`declare(name, ...)(fn)`: the Scheme of `fn(tensor, <args>, generator=None)` named `name`, for its
    module's DECLARED tuple, which initbench.init.registry collects. Its keyword args are the valid args;
    `std(shape, args)` / `mean(shape, args)` give the theory (NaN if left out), `std_rule` the std in words;
    `optimizer_factors(shape, args, optimizer)` what it asks of the optimizer for the parameter it fills."""
    return lambda fn: make_scheme(name, fn, std=std, mean=mean, std_rule=std_rule, fan_based=fan_based,
                                  check=check, optimizer_factors=optimizer_factors)


# --- theory: std and mean for a tensor of `shape` ------------------------------------------------


def _kaiming_std(shape, a):
    fan = fans(shape)[0 if a["mode"] == "fan_in" else 1]
    return init.calculate_gain(a["nonlinearity"], a["a"]) / math.sqrt(fan)


def _xavier_std(shape, a):
    return a["gain"] * math.sqrt(2.0 / sum(fans(shape)))


def _phi(x):  # standard normal density and distribution function
    return math.exp(-x * x / 2) / math.sqrt(2 * math.pi), (1 + math.erf(x / math.sqrt(2))) / 2


def _trunc_moments(a):
    (pa, ca), (pb, cb) = _phi((a["a"] - a["mean"]) / a["std"]), _phi((a["b"] - a["mean"]) / a["std"])
    alpha, beta, z = (a["a"] - a["mean"]) / a["std"], (a["b"] - a["mean"]) / a["std"], cb - ca
    var = 1 + (alpha * pa - beta * pb) / z - ((pa - pb) / z) ** 2
    return a["mean"] + a["std"] * (pa - pb) / z, a["std"] * math.sqrt(var)


def bernoulli_std(p, scale=1.0):  # a tensor holding `scale` at a fraction p of its entries, 0 elsewhere
    return abs(scale) * math.sqrt(p * (1 - p))


def _eye_p(shape):
    return min(shape) / (shape[0] * shape[1])


def _dirac_p(shape, a):
    return a["groups"] * min(shape[0] // a["groups"], shape[1]) / math.prod(shape)


def _flat(shape):
    return shape[0], math.prod(shape) // shape[0]


def _need(dims, what):
    def check(shape, a):
        return None if len(shape) in dims else f"{what} (this one has {len(shape)})"

    return check


def ordered(lo, hi):
    def check(shape, a):
        return None if a[lo] < a[hi] else f"needs {lo} < {hi}, got {lo}={a[lo]}, {hi}={a[hi]}"

    return check


def _dirac_check(shape, a):
    if len(shape) not in (3, 4, 5):
        return f"dirac fills 3-, 4- or 5-D conv weights (this one has {len(shape)} dimensions)"
    return None if shape[0] % a["groups"] == 0 else f"dirac: dim 0 ({shape[0]}) is not divisible by groups"


def _orthogonal_check(shape, a):
    if len(shape) < 2:
        return f"orthogonal needs a tensor of at least 2 dimensions (this one has {len(shape)})"
    return None if math.prod(shape) > 0 else "orthogonal cannot fill an empty tensor"


def _nonnegative(key):
    def check(shape, a):
        return None if a[key] >= 0 else f"needs {key} >= 0, got {a[key]}"

    return check


# --- torch.nn.init, as is ----------------------------------------------------------------------------


def _zero(s, a):
    return 0.0


def _const(value):
    return lambda s, a: value


DECLARED = (  # the schemes of this module; the registry (initbench.init.registry) collects them
    declare("uniform", std_rule="(b − a)/√12", std=lambda s, a: (a["b"] - a["a"]) / math.sqrt(12),
            mean=lambda s, a: (a["a"] + a["b"]) / 2, check=ordered("a", "b"))(init.uniform_),
    declare("normal", std_rule="std", std=lambda s, a: a["std"], mean=lambda s, a: a["mean"],
            check=_nonnegative("std"))(init.normal_),
    declare("trunc_normal", std_rule="the truncated normal's std",
            std=lambda s, a: _trunc_moments(a)[1], mean=lambda s, a: _trunc_moments(a)[0],
            check=ordered("a", "b"))(init.trunc_normal_),
    declare("constant", std_rule="0", std=_zero, mean=lambda s, a: a["val"])(init.constant_),
    declare("ones", std_rule="0", std=_zero, mean=_const(1.0))(init.ones_),
    declare("zeros", std_rule="0", std=_zero, mean=_zero)(init.zeros_),
    declare("eye", std_rule="of the 0/1 pattern",
            std=lambda s, a: bernoulli_std(_eye_p(s)), mean=lambda s, a: _eye_p(s),
            check=_need((2,), "eye fills 2-D tensors only"))(init.eye_),
    declare("dirac", std_rule="of the 0/1 pattern",
            std=lambda s, a: bernoulli_std(_dirac_p(s, a)), mean=lambda s, a: _dirac_p(s, a),
            check=_dirac_check)(init.dirac_),
    declare("xavier_uniform", std_rule="gain·√(2/(fan_in + fan_out))",
            std=_xavier_std, fan_based=True)(init.xavier_uniform_),
    declare("xavier_normal", std_rule="gain·√(2/(fan_in + fan_out))",
            std=_xavier_std, fan_based=True)(init.xavier_normal_),
    declare("kaiming_uniform", std_rule="gain/√fan_mode", std=_kaiming_std, fan_based=True)(init.kaiming_uniform_),
    declare("kaiming_normal", std_rule="gain/√fan_mode", std=_kaiming_std, fan_based=True)(init.kaiming_normal_),
    # A semi-orthogonal (rows x cols) matrix has min(rows, cols) unit rows or columns: E[w^2] = 1/max(rows, cols).
    declare("orthogonal", std_rule="gain/√max(rows, cols)", std=lambda s, a: a["gain"] / math.sqrt(max(_flat(s))),
            check=_orthogonal_check)(init.orthogonal_),

)
