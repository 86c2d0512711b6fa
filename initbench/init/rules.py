"""Parsing a policy file's rules: where-clause, scheme (or _target_), args, optional."""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from hydra.utils import instantiate

from .matching import GATES, Where, parse_where
from .registry import SCHEMES
from .schemes import Scheme, make_scheme

RULE_KEYS = ("where", "scheme", "_target_", "args", "optional", "lr_factor")
DEFAULT = "default"  # the scheme name that keeps PyTorch's own init


class InitError(ValueError):
    """An init policy that cannot be applied as written; the message says where, and how to fix it."""


@dataclass(frozen=True)
class Rule:
    """One rule of a policy: parameters matching `where` are filled by `scheme` (None: keep default)."""

    index: int
    where: Where
    label: str  # the scheme's registry name, 'default', or the _target_ path
    scheme: Scheme | None = None
    args: Mapping = field(default_factory=dict)
    optional: bool = False
    lr_factor: float = 1.0  # the trainer multiplies the learning rate of the parameters this rule fills by it

    def __str__(self) -> str:
        return f"rule {self.index} (where: {self.where}, scheme: {self.label})"


def flow(value: object) -> str:
    """`value` written as YAML flow style, the way a policy file has it: {where: {param: bias}}."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    return "null" if value is None else str(value)


def parse_rule(policy: str, index: int, raw: object, params: Mapping | None = None) -> Rule:
    """The Rule that entry `index` of a policy's `rules:` describes; InitError naming it if malformed.
    `params` are the policy's parameters (e.g. sigma_w): a scheme argument the rule's args leave out is
    taken from the parameter of the same name."""

    def fail(problem: str, fix: str) -> InitError:
        return InitError(f"init policy {policy!r}, rule {index} {flow(raw)}: {problem}\n  fix: {fix}")

    if not isinstance(raw, Mapping):
        raise fail("a rule is a mapping", "write it as {where: {...}, scheme: <name>, args: {...}}")
    unknown = sorted(set(raw) - set(RULE_KEYS))
    if unknown:
        raise fail(f"unknown keys {unknown}", f"use only {', '.join(RULE_KEYS)}")
    try:
        where = parse_where(raw.get("where"))
    except ValueError as err:
        raise fail(str(err), f"a where-clause takes module, param, name and gate ({', '.join(GATES)})") from None
    scheme_name, target = raw.get("scheme"), raw.get("_target_")
    if (scheme_name is None) == (target is None):
        raise fail("a rule needs exactly one of scheme or _target_", "scheme: <registry name> or _target_: pkg.fn")
    if not isinstance(raw.get("optional", False), bool):
        raise fail(f"optional must be true or false, got {raw['optional']!r}", "optional: true")
    args = raw.get("args") or {}
    if not isinstance(args, Mapping):
        raise fail(f"args must be a mapping, got {args!r}", "args: {name: value, ...}")
    optional = raw.get("optional", False)
    lr_factor = raw.get("lr_factor", 1.0)
    if isinstance(lr_factor, bool) or not isinstance(lr_factor, int | float) or not 0 < lr_factor < math.inf:
        raise fail(f"lr_factor must be a positive number, got {lr_factor!r}", "lr_factor: 0.1")
    if scheme_name == DEFAULT:
        if args:
            raise fail("scheme default (keep PyTorch's init) takes no args", "drop args")
        return Rule(index, where, DEFAULT, None, {}, optional, float(lr_factor))
    if target is not None:
        scheme = _import_target(target, fail)
    elif scheme_name in SCHEMES:
        scheme = SCHEMES[scheme_name]
    else:
        valid = ", ".join(sorted([*SCHEMES, DEFAULT]))
        raise fail(f"unknown scheme {scheme_name!r}; valid: {valid}", "use one of those, or _target_: pkg.fn")
    taken = {key: value for key, value in (params or {}).items() if key in scheme.valid_args() and key not in args}
    try:
        resolved = scheme.resolve({**taken, **args})
    except ValueError as err:
        raise fail(str(err), "correct the rule's args") from None
    return Rule(index, where, scheme.name, scheme, resolved, optional, float(lr_factor))


def import_object(path: str) -> object:
    """The callable at dotted `path` (pkg.module.fn or pkg.module.Class.method), located as Hydra's
    instantiate locates a `_target_`, so that Hydra's target policy (which refuses os.system,
    subprocess.Popen, eval and the like) applies to a policy's functions too."""
    return instantiate({"_target_": path, "_partial_": True}).func


def _import_target(path: object, fail) -> Scheme:
    try:
        fn = import_object(str(path))
        if not callable(fn):
            raise TypeError(f"{path} is a {type(fn).__name__}, not a function")
    except Exception as err:
        raise fail(
            f"cannot import _target_ {path!r}: {err}", "give the dotted path of an importable function"
        ) from None
    scheme = make_scheme(str(path), fn)
    if not scheme.takes_generator:
        raise fail(
            f"_target_ {path!r} does not take a generator= keyword",
            "define it as fn(tensor, *, generator=None, **args) and draw every random number from generator",
        )
    return scheme
