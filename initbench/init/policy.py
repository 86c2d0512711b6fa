"""Init policies: an ordered list of rules; the first rule that matches a parameter decides its init.

    policy = build_policy({"name": "kaiming", "rules": [
        {"where": {"module": ["Conv2d", "Linear"], "param": "weight"},
         "scheme": "kaiming_normal", "args": {"nonlinearity": "relu"}},
        {"where": {"module": ["Conv2d", "Linear"], "param": "bias"}, "scheme": "zeros"}]})
    report = policy.apply(model, torch.Generator().manual_seed(0))

A parameter no rule matches keeps PyTorch's default. apply checks every rule against the model
before it changes anything, and restores the model if a fill fails: it is all or nothing.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from .lsuv import LSUVConfig, lsuv_
from .matching import ParamRef, collect_params, gates_of
from .registry import SCHEMES
from .report import InitReport, default_moments, report_row, shape_text
from .rules import DEFAULT, InitError, Rule, parse_rule
from .schemes import Scheme
from .structure import FACTS, facts_for

# `requires`: what a model must have for the policy, in words (printed when it cannot be applied); any
# other key is a parameter: a number its rules' schemes read
POLICY_KEYS = ("name", "rules", "lsuv", "requires")


@dataclass
class _Unit:
    """A whole parameter, or one gate's rows of it, the rule that decided it (None: default), and the
    scheme's args: the rule's, plus the model facts the scheme reads (structure.FACTS)."""

    rule: Rule | None
    gate: str | None = None
    rows: slice | None = None
    args: dict | None = None

    @property
    def fills(self) -> bool:
        return self.rule is not None and self.rule.scheme is not None


@dataclass
class _Plan:
    ref: ParamRef
    units: list[_Unit]

    def target(self, unit: _Unit) -> Tensor:
        data = self.ref.tensor.detach()
        return data if unit.rows is None else data[unit.rows]


def build_policy(cfg: DictConfig | Mapping) -> "InitPolicy":
    """The InitPolicy a conf/init/*.yaml file describes; InitError on anything it cannot use."""
    return InitPolicy.from_config(cfg)


class InitPolicy:
    """A named, ordered list of rules (and optionally LSUV, which needs a batch of data). `params` are
    the policy's own numbers (critical's sigma_w, ...), which a sweep sets as init.<name>=<value>."""

    def __init__(self, name: str, rules: list[Rule] | tuple[Rule, ...] = (), lsuv: LSUVConfig | None = None,
                 params: Mapping[str, float] | None = None, requires: str | None = None):
        self.name = name
        self.rules = tuple(rules)
        self.lsuv = lsuv
        self.params = dict(params or {})
        self.requires = requires

    @property
    def needs_data(self) -> bool:
        return self.lsuv is not None

    def __str__(self) -> str:
        given = f" ({', '.join(f'{k}={v}' for k, v in self.params.items())})" if self.params else ""
        lines = [f"init policy {self.name!r}{given}:"] + [f"  {rule}, args: {dict(rule.args)}" for rule in self.rules]
        lines += [f"  then LSUV: {self.lsuv}"] if self.lsuv else []
        return "\n".join(lines if self.rules or self.lsuv else [f"init policy {self.name!r}: PyTorch's default"])

    @classmethod
    def from_config(cls, cfg: DictConfig | Mapping) -> "InitPolicy":
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        if not isinstance(cfg, Mapping):
            raise InitError(f"an init policy config is a mapping with keys {POLICY_KEYS}, got {cfg!r}")
        name = cfg.get("name")
        if not isinstance(name, str):
            raise InitError(f"an init policy needs `name: <str>` (the file's name), got {name!r}")
        params = {key: value for key, value in cfg.items() if key not in POLICY_KEYS}
        not_numbers = sorted(key for key, value in params.items() if isinstance(value, bool)
                             or not isinstance(value, int | float))
        if not_numbers:
            raise InitError(f"init policy {name!r}: unknown keys {not_numbers}; valid: {', '.join(POLICY_KEYS)}, "
                            "and numbers that the policy's schemes read (parameters such as sigma_w)")
        requires = cfg.get("requires")
        if requires is not None and not isinstance(requires, str):
            raise InitError(f"init policy {name!r}: `requires` is a sentence saying what a model needs, "
                            f"got {requires!r}")
        raw_rules = cfg.get("rules") or []
        if not isinstance(raw_rules, list | tuple):
            raise InitError(f"init policy {name!r}: `rules` must be a list of rules, got {raw_rules!r}")
        rules = [parse_rule(name, i, raw, params) for i, raw in enumerate(raw_rules)]
        read = {key for rule in rules if rule.scheme is not None for key in rule.scheme.valid_args()}
        unread = sorted(set(params) - read)
        if unread:
            raise InitError(f"init policy {name!r}: parameters {unread} are read by none of its rules' schemes; "
                            f"valid keys: {', '.join(POLICY_KEYS)}, and the args of its schemes")
        lsuv = None
        if cfg.get("lsuv") is not None:
            try:
                lsuv = LSUVConfig.from_dict(cfg["lsuv"])
            except (TypeError, ValueError) as err:
                raise InitError(f"init policy {name!r}, lsuv: {err}") from None
        return cls(name, rules, lsuv, params, requires)

    def apply(self, model: nn.Module, generator: torch.Generator, batch: Tensor | None = None) -> InitReport:
        """Fill `model`'s parameters by the rules, drawing only from `generator`; see the module doc.

        Raises InitError, with the model untouched, if any rule cannot be applied to this model, or
        if the policy needs data and `batch` (real training inputs, (N, ...)) is None.
        """
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"apply needs a torch.Generator (torch.Generator().manual_seed(seed)), got {generator!r}")
        if self.needs_data and batch is None:
            raise InitError(
                f"init policy {self.name!r} is data-dependent (LSUV) and needs a batch of real training "
                "inputs: policy.apply(model, generator, batch=inputs)"
            )
        plans = self._plan(model)  # every check happens here, before anything changes
        touched = list(model.parameters()) if self.lsuv else [p.ref.tensor for p in plans
                                                              if any(u.fills for u in p.units)]
        saved = [(t, t.detach().clone()) for t in touched]
        plan, unit, trace = None, None, None
        try:
            for plan in plans:
                for unit in plan.units:
                    if unit.fills:
                        _fill(plan.target(unit), unit, generator)
            plan = unit = None
            if self.lsuv:
                trace = lsuv_(model, batch, generator=generator, **vars(self.lsuv))
        except Exception as err:
            with torch.no_grad():
                for tensor, old in saved:
                    tensor.copy_(old)
            at = f"{plan.ref.name} (shape {shape_text(plan.ref.tensor.shape)}) <- {unit.rule}" if plan else "LSUV"
            raise InitError(
                f"init policy {self.name!r} failed at {at}: {type(err).__name__}: {err}\n"
                "  the model was restored as it was; fix the rule's scheme or args"
            ) from err
        return self._report(model, plans, trace)

    def optimizer_scales(self, model: nn.Module, optimizer: Mapping) -> dict[str, dict[str, float]]:
        """{parameter name: {optimizer option: factor}} for the parameters whose rule scales the optimizer:
        its scheme's (Scheme.optimizer_factors; muP's per-layer learning rates, given the optimizer's config,
        `_target_` and its options) times the rule's own `lr_factor` (Fixup's lr/10 for its scalars). The
        trainer multiplies those options for those parameters. Empty for other policies. InitError if the
        rules do not fit `model`, or a scheme has no rule for this optimizer."""
        scales = {}
        for plan in self._plan(model):
            scaled = [u for u in plan.units if u.fills and (u.rule.scheme.optimizer_factors is not None
                                                              or u.rule.lr_factor != 1)]
            if not scaled:
                continue
            unit = scaled[0]
            if len(plan.units) > 1:
                raise InitError(f"init policy {self.name!r}: {plan.ref.name} <- {unit.rule}: a rule that scales the "
                                "optimizer must fill the whole parameter, not one gate of it")
            try:
                factors = (unit.rule.scheme.optimizer_factors(plan.ref.tensor.shape, dict(unit.args), optimizer)
                           if unit.rule.scheme.optimizer_factors else {})
            except ValueError as err:
                raise InitError(f"init policy {self.name!r}: {plan.ref.name} <- {unit.rule}: {err}") from None
            factors = {**factors, "lr": factors.get("lr", 1.0) * unit.rule.lr_factor}
            factors = {option: factor for option, factor in factors.items() if factor != 1}
            if factors:
                scales[plan.ref.name] = factors
        return scales

    def _plan(self, model: nn.Module) -> list[_Plan]:
        plans, matched, problems = [], set(), []
        for ref in collect_params(model):
            gates = gates_of(ref.module, ref.role)
            deciders = []
            for gate in gates or [None]:
                hits = [r for r in self.rules if r.where.matches(ref, gate)]
                matched.update(r.index for r in hits)
                deciders.append(hits[0] if hits else None)
            if all(d is deciders[0] for d in deciders) and (deciders[0] is None or not deciders[0].where.gate):
                units = [_Unit(deciders[0])]
            else:
                size = ref.tensor.shape[0] // len(gates)
                units = [
                    _Unit(d, g, slice(k * size, (k + 1) * size))
                    for k, (g, d) in enumerate(zip(gates, deciders, strict=True))
                ]
            plan = _Plan(ref, units)
            plans.append(plan)
            for unit in units:
                if unit.fills:
                    wanted = unit.rule.scheme.facts(unit.rule.args)
                    facts, lacking = facts_for(model, ref.name.rpartition(".")[0], wanted)
                    unit.args = {**unit.rule.args, **facts}
                    if lacking:
                        problem = (f"{unit.rule.scheme.name} needs {'; '.join(FACTS[f] for f in lacking)}, and "
                                   f"{type(model).__name__} has none")
                        fix = "use a model with that structure, or give the rule's args " + ", ".join(lacking)
                    else:
                        problem = unit.rule.scheme.problem(plan.target(unit).shape, dict(unit.args))
                        fix = _fix_for(unit.rule.scheme)
                    if problem:
                        problems.append(_param_problem(plan, unit, problem, fix))
        problems += _forget_bias_problems(plans)
        unmatched = [r for r in self.rules if r.index not in matched and not r.optional]
        problems += [
            f"- {rule} matches no parameter of this model\n    fix: correct the where-clause (see the "
            "model below), or add `optional: true` to the rule if it is for other models"
            for rule in unmatched
        ]
        if problems:
            head = f"init policy {self.name!r} cannot be applied to {type(model).__name__}"
            text = f"{head} ({len(problems)} problem{'s' * (len(problems) > 1)}):\n" + "\n".join(problems)
            needs = f"\npolicy {self.name!r} requires: {self.requires}" if self.requires else ""
            raise InitError(text + needs + (_describe_model(plans) if unmatched else ""))
        return plans

    def _report(self, model: nn.Module, plans: list[_Plan], trace) -> InitReport:
        calibrated = set()
        if trace is not None:
            modules = dict(model.named_modules())
            calibrated = {id(modules[name].weight) for name in trace["layer"]}
        rows = []
        for plan in plans:
            label, expected = _label(plan), _expected_std(plan)
            if id(plan.ref.tensor) in calibrated:
                label, expected = f"{label}+lsuv", math.nan
            rows.append(report_row(plan.ref.name, plan.ref.tensor, label, expected))
        return InitReport.from_rows(rows, policy=self.name, torch_version=torch.__version__, lsuv=trace)


def _fill(target: Tensor, unit: _Unit, generator: torch.Generator) -> None:
    """Fill `target` in place; a tensor on another device than the generator is filled via a copy."""
    if target.device == generator.device:
        unit.rule.scheme(target, generator, dict(unit.args))
    else:
        scratch = torch.empty(target.shape, dtype=target.dtype, device=generator.device)
        unit.rule.scheme(scratch, generator, dict(unit.args))
        with torch.no_grad():
            target.copy_(scratch)


def _label(plan: _Plan) -> str:
    if len(plan.units) == 1:
        return plan.units[0].rule.label if plan.units[0].rule else DEFAULT
    by_label: dict[str, list[str]] = {}
    for unit in plan.units:
        by_label.setdefault(unit.rule.label if unit.rule else DEFAULT, []).append(unit.gate)
    return "+".join(f"{label}[{','.join(gates)}]" for label, gates in by_label.items())


def _expected_std(plan: _Plan) -> float:
    """The std the theory predicts for the whole parameter: a mixture over its gate slices."""
    moments = []
    for unit in plan.units:
        target = plan.target(unit)
        if not unit.fills:
            mean, std = default_moments(plan.ref.module, plan.ref.role, target)  # NaN if re-initialized
        else:
            args = dict(unit.args)
            mean, std = (
                unit.rule.scheme.expected_mean(target.shape, args),
                unit.rule.scheme.expected_std(target.shape, args),
            )
        moments.append((target.numel(), mean, std))
    total = sum(n for n, _, _ in moments)
    if total == 0:
        return math.nan
    mean = sum(n * m for n, m, _ in moments) / total
    square = sum(n * (s * s + m * m) for n, m, s in moments) / total
    return math.sqrt(max(square - mean * mean, 0.0))


# --- problem messages ------------------------------------------------------------------------------


def _param_problem(plan: _Plan, unit: _Unit, problem: str, fix: str) -> str:
    gate = f", gate {unit.gate} rows {unit.rows.start}:{unit.rows.stop}" if unit.gate else ""
    shape = shape_text(plan.ref.tensor.shape)
    return f"- {plan.ref.name} (shape {shape}{gate}) <- {unit.rule}: {problem}\n    fix: {fix}"


def _fix_for(scheme: Scheme) -> str:
    if scheme.fan_based:
        return (
            "give 1-D parameters (biases) an earlier rule, e.g. {where: {param: bias}, scheme: zeros}, "
            "or narrow this rule to weights: where: {param: weight}"
        )
    return "narrow this rule's where (module/param/name) to shapes the scheme can fill, or use another scheme"


def _describe_model(plans: list[_Plan]) -> str:
    modules = ", ".join(sorted({type(p.ref.module).__name__ for p in plans}))
    roles = ", ".join(sorted({p.ref.role for p in plans}))
    params = ", ".join(f"{p.ref.name} ({shape_text(p.ref.tensor.shape)})" for p in plans[:12])
    more = f", ... ({len(plans)} in all)" if len(plans) > 12 else ""
    return f"\nthe model has modules: {modules}\n  param roles: {roles}\n  parameters: {params}{more}"


def _forget_bias_problems(plans: list[_Plan]) -> list[str]:
    """lstm_forget_bias puts value/2 in each of bias_ih and bias_hh: both must get it, or the sum is off."""
    by_name = {p.ref.name: p for p in plans}
    problems = []
    for plan in plans:
        for unit in plan.units:
            if not (unit.rule and unit.rule.scheme is SCHEMES.get("lstm_forget_bias")):
                continue
            ref = plan.ref
            if (
                unit.gate is not None
                or ref.role not in ("bias_ih", "bias_hh")
                or gates_of(ref.module, ref.role) != "ifgo"
            ):
                what = f"gate {unit.gate} of it" if unit.gate else f"the {ref.role} of a {type(ref.module).__name__}"
                problem = f"lstm_forget_bias fills a whole bias_ih/bias_hh of an nn.LSTM or LSTMCell, not {what}"
                fix = "where: {module: LSTM, param: [bias_ih, bias_hh]}, with no gate key"
                problems.append(_param_problem(plan, unit, problem, fix))
                continue
            other = "bias_hh" if ref.role == "bias_ih" else "bias_ih"
            head, _, local = ref.name.rpartition(".")
            partner = by_name.get(f"{head}.{local.replace(ref.role, other)}".lstrip("."))
            p_rule = partner.units[0].rule if partner and len(partner.units) == 1 else None
            if not p_rule or p_rule.scheme is not unit.rule.scheme or p_rule.args != unit.rule.args:
                problems.append(_param_problem(plan, unit, (
                    f"PyTorch adds {ref.role} and {other}, and lstm_forget_bias puts value/2 in each, but "
                    f"{partner.ref.name if partner else other} does not get the same lstm_forget_bias"
                ), "match both in one rule: where: {module: LSTM, param: [bias_ih, bias_hh]}"))
    return problems
