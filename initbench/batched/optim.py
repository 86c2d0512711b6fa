"""torch.optim.SGD, Adam and AdamW on stacked parameters (leading dim K: one slice per model).

The updates are torch.optim's single-tensor code op for op, with the per-model learning rate as a
(K,) tensor instead of a Python float, so float64 results match separate torch.optim runs to rounding.
Everything that depends on the step number alone (the schedule's lr, Adam's bias corrections) is
computed beforehand on the host in double precision, as torch.optim does, into per-step tables.
"""

import inspect
from dataclasses import dataclass, field

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from .functional import Unbatchable

# Options that select an implementation, not the arithmetic.
_IMPLEMENTATION = {"foreach", "fused", "capturable", "differentiable"}
_SUPPORTED = {
    torch.optim.SGD: {"lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"},
    torch.optim.Adam: {"lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "decoupled_weight_decay"},
    torch.optim.AdamW: {"lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "decoupled_weight_decay"},
}


def optimizer_spec(cfg: DictConfig | dict) -> tuple[type, dict]:
    """(class, every option with torch's defaults filled in) of a Hydra `_partial_` optimizer config;
    Unbatchable for an optimizer or an option the batched trainer does not implement."""
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    cls = get_class(cfg["_target_"])
    if cls not in _SUPPORTED:
        raise Unbatchable(f"optimizer {cfg['_target_']} has no batched version; batched: "
                          f"{', '.join(f'torch.optim.{c.__name__}' for c in _SUPPORTED)}")
    defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()
                if p.default is not inspect.Parameter.empty}
    options = {**defaults, **{k: v for k, v in cfg.items() if not k.startswith("_")}}
    unknown = set(options) - _SUPPORTED[cls] - _IMPLEMENTATION - {"params"}
    if unknown:
        raise Unbatchable(f"optimizer option(s) {', '.join(sorted(unknown))} of {cls.__name__} are not "
                          "supported in batched mode")
    if cls is torch.optim.SGD and options["nesterov"] and (options["momentum"] <= 0 or options["dampening"]):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    if cls is torch.optim.AdamW:
        options["decoupled_weight_decay"] = True
    return cls, options


def lr_table(lrs: list[float], schedule: str, total_steps: int) -> list[list[float]]:
    """The lr of each model at each step (total_steps x K), from torch's own scheduler: cosine is
    CosineAnnealingLR(T_max=total_steps) stepped once per step, as initbench.train.fit does."""
    if schedule == "constant":
        return [list(lrs)] * total_steps
    if schedule != "cosine":
        raise ValueError(f"unknown trainer.schedule {schedule!r}; valid: constant, cosine")
    dummy = torch.optim.SGD([{"params": [torch.zeros(1)], "lr": lr} for lr in lrs])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(dummy, T_max=total_steps)
    table = []
    for _ in range(total_steps):
        table.append([group["lr"] for group in dummy.param_groups])
        dummy.step()
        sched.step()
    return table


@dataclass
class StackedOptimizer:
    """One optimizer for K stacked models. `coefficients(step)` gives the step's (K,) tensors;
    `update(params, grads, coef)` applies one step in place."""

    cls: type
    options: dict
    tables: dict[str, torch.Tensor]  # name -> (total_steps, K) or (total_steps,)
    state: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @classmethod
    def build(cls, cfg, lrs: list[float], schedule: str, total_steps: int, device, dtype) -> "StackedOptimizer":
        kind, options = optimizer_spec(cfg)
        lr = lr_table(lrs, schedule, total_steps)
        tables = {"lr": lr}
        if kind is not torch.optim.SGD:
            beta1, beta2 = options["betas"]
            wd = options["weight_decay"]
            # step counts are floats in torch.optim (state["step"].item()), the same powers
            tables["step_size"] = [[r / (1 - beta1 ** float(t + 1)) for r in row] for t, row in enumerate(lr)]
            tables["bc2_sqrt"] = [(1 - beta2 ** float(t + 1)) ** 0.5 for t in range(total_steps)]
            tables["decay"] = [[1 - r * wd for r in row] for row in lr]
        as_tensors = {k: torch.tensor(v, dtype=dtype, device=device) for k, v in tables.items()}
        return cls(kind, options, as_tensors)

    def coefficients(self, step: int) -> dict[str, torch.Tensor]:
        return {k: v[step] for k, v in self.tables.items()}

    def update(self, params: dict, grads: dict, coef: dict) -> None:
        if self.cls is torch.optim.SGD:
            self._sgd(params, grads, coef)
        else:
            self._adam(params, grads, coef)

    @staticmethod
    def _per_model(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t.view(-1, *[1] * (like.dim() - 1))

    def _sgd(self, params, grads, coef) -> None:
        o = self.options
        for name, p in params.items():
            g = grads[name] if not o["maximize"] else -grads[name]
            if o["weight_decay"] != 0:
                g = g.add(p, alpha=o["weight_decay"])
            if o["momentum"] != 0:
                state = self.state.setdefault(name, {})
                if "momentum_buffer" not in state:
                    buf = state["momentum_buffer"] = g.detach().clone()
                else:
                    buf = state["momentum_buffer"]
                    buf.mul_(o["momentum"]).add_(g, alpha=1 - o["dampening"])
                g = g.add(buf, alpha=o["momentum"]) if o["nesterov"] else buf
            p.sub_(g * self._per_model(coef["lr"], p))

    def _adam(self, params, grads, coef) -> None:
        o = self.options
        beta1, beta2 = o["betas"]
        for name, p in params.items():
            g = grads[name] if not o["maximize"] else -grads[name]
            state = self.state.get(name)
            if state is None:
                state = self.state[name] = {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
                if o["amsgrad"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(p)
            if o["weight_decay"] != 0:
                if o["decoupled_weight_decay"]:
                    p.mul_(self._per_model(coef["decay"], p))
                else:
                    g = g.add(p, alpha=o["weight_decay"])
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.lerp_(g, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            if o["amsgrad"]:
                torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
                denom = (state["max_exp_avg_sq"].sqrt() / coef["bc2_sqrt"]).add_(o["eps"])
            else:
                denom = (exp_avg_sq.sqrt() / coef["bc2_sqrt"]).add_(o["eps"])
            p.sub_(exp_avg / denom * self._per_model(coef["step_size"], p))
