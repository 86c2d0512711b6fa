"""torch.optim.SGD, Adam and AdamW on stacked parameters (leading dim K: one slice per model).

The updates are torch.optim's single-tensor code op for op, with the per-model learning rate as a
(K,) tensor instead of a Python float, so float64 results match separate torch.optim runs to rounding.
Each model may scale the lr, weight decay and eps of each parameter (an init policy's factors, as
initbench.train.build_optimizer applies them to torch.optim's parameter groups): (K,) factors per parameter.
Everything that depends on the step number alone (the schedule's lr, Adam's bias corrections) is
computed beforehand on the host in double precision, as torch.optim does, into per-step tables.
"""

import inspect
from dataclasses import dataclass, field

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from ..train import lr_scheduler
from .stacking import Unbatchable

# Options that select an implementation, not the arithmetic.
_IMPLEMENTATION = {"foreach", "fused", "capturable", "differentiable"}
_SUPPORTED = {
    torch.optim.SGD: {"lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"},
    torch.optim.Adam: {"lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "decoupled_weight_decay"},
    torch.optim.AdamW: {"lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "decoupled_weight_decay"},
}
# The options a per-parameter factor may scale.
_SCALABLE = {torch.optim.SGD: ("lr", "weight_decay"), torch.optim.Adam: ("lr", "weight_decay", "eps"),
             torch.optim.AdamW: ("lr", "weight_decay", "eps")}


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


def lr_table(lrs: list[float], trainer, total_steps: int) -> list[list[float]]:
    """The lr of each model at each step (total_steps x K), from the scheduler initbench.train.fit
    steps once per step (lr_scheduler: trainer.schedule and trainer.warmup_steps)."""
    dummy = torch.optim.SGD([{"params": [torch.zeros(1)], "lr": lr} for lr in lrs])
    sched = lr_scheduler(dummy, trainer, total_steps)
    if sched is None:
        return [list(lrs)] * total_steps
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
    # parameter -> {"lr": factor, "weight_decay": value, "eps": value, "lr_wd": lr factor * weight decay}, (K,)
    scaled: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @classmethod
    def build(cls, cfg, lrs: list[float], trainer, total_steps: int, device, dtype,
              scales: list | None = None) -> "StackedOptimizer":
        """scales[k]: model k's {parameter: {option: factor}} (None or {}: none scaled)."""
        kind, options = optimizer_spec(cfg)
        lr = lr_table(lrs, trainer, total_steps)
        tables = {"lr": lr}
        if kind is not torch.optim.SGD:
            beta1, beta2 = options["betas"]
            wd = options["weight_decay"]
            # step counts are floats in torch.optim (state["step"].item()), the same powers
            tables["step_size"] = [[r / (1 - beta1 ** float(t + 1)) for r in row] for t, row in enumerate(lr)]
            tables["bc2_sqrt"] = [(1 - beta2 ** float(t + 1)) ** 0.5 for t in range(total_steps)]
            tables["decay"] = [[1 - r * wd for r in row] for row in lr]
        as_tensors = {k: torch.tensor(v, dtype=dtype, device=device) for k, v in tables.items()}
        return cls(kind, options, as_tensors, scaled=_scaled(kind, options, scales or [], device, dtype))

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

    def _decay(self, name: str, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The gradient plus the coupled weight decay (as a per-model tensor where a factor scales it)."""
        wd = self.scaled.get(name, {}).get("weight_decay")
        if wd is not None:
            return g.add(p * self._per_model(wd, p))
        return g.add(p, alpha=self.options["weight_decay"]) if self.options["weight_decay"] != 0 else g

    def _lr(self, name: str, lr: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        factor = self.scaled.get(name, {}).get("lr")
        return self._per_model(lr if factor is None else lr * factor, like)

    def _sgd(self, params, grads, coef) -> None:
        o = self.options
        for name, p in params.items():
            g = grads[name] if not o["maximize"] else -grads[name]
            g = self._decay(name, p, g)
            if o["momentum"] != 0:
                state = self.state.setdefault(name, {})
                if "momentum_buffer" not in state:
                    buf = state["momentum_buffer"] = g.detach().clone()
                else:
                    buf = state["momentum_buffer"]
                    buf.mul_(o["momentum"]).add_(g, alpha=1 - o["dampening"])
                g = g.add(buf, alpha=o["momentum"]) if o["nesterov"] else buf
            p.sub_(g * self._lr(name, coef["lr"], p))

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
            scaled = self.scaled.get(name, {})
            if o["weight_decay"] != 0:
                if o["decoupled_weight_decay"]:
                    decay = coef["decay"] if "lr_wd" not in scaled else 1 - coef["lr"] * scaled["lr_wd"]
                    p.mul_(self._per_model(decay, p))
                else:
                    g = self._decay(name, p, g)
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.lerp_(g, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            eps = self._per_model(scaled["eps"], p) if "eps" in scaled else o["eps"]
            if o["amsgrad"]:
                torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
                denom = (state["max_exp_avg_sq"].sqrt() / coef["bc2_sqrt"]).add_(eps)
            else:
                denom = (exp_avg_sq.sqrt() / coef["bc2_sqrt"]).add_(eps)
            p.sub_(exp_avg / denom * self._lr(name, coef["step_size"], p))


def _scaled(kind: type, options: dict, scales: list, device, dtype) -> dict[str, dict[str, torch.Tensor]]:
    """StackedOptimizer.scaled from each model's {parameter: {option: factor}}: per scaled parameter, the lr
    factor, the weight decay and eps as values, and lr factor * weight decay (decoupled decay), each (K,),
    1 (the option as configured) for the models that do not scale it. Unbatchable for other options."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name in dict.fromkeys(n for per_model in scales for n in (per_model or {})):
        factors = [dict((per_model or {}).get(name, {})) for per_model in scales]
        unknown = sorted({opt for f in factors for opt in f} - set(_SCALABLE[kind]))
        if unknown:
            raise Unbatchable(f"{name}: per-parameter factors on {unknown} of {kind.__name__} are not supported in "
                              f"batched mode; scalable: {', '.join(_SCALABLE[kind])}")

        def column(option, f=factors):
            return torch.tensor([x.get(option, 1.0) for x in f], dtype=torch.float64)

        values = {"lr": column("lr")}
        if options["weight_decay"] != 0 and any("weight_decay" in f for f in factors):
            values["weight_decay"] = column("weight_decay") * options["weight_decay"]
            values["lr_wd"] = values["lr"] * values["weight_decay"]
        if any("eps" in f for f in factors):
            values["eps"] = column("eps") * options["eps"]
        out[name] = {k: v.to(device=device, dtype=dtype) for k, v in values.items()}
    return out
