"""The diagnostics the trainers log, as metric points (key, value, step) under `vitals/`.

fit() and fit_batched() log, before the first step, init_points, and at the end of every epoch (after
its last step, before evaluation) epoch_points, all on the probe batch, the first trainer.batch_size
training examples; they log the first epoch's gradient norms themselves:

| key | step | from |
|---|---|---|
| `vitals/act_std/<layer>` | 0 (init_points), then each epoch (epoch_points) | signal_probe, activation_vitals |
| `vitals/backprop_std/<layer>` | 0 (init_points) | signal_probe |
| `vitals/grad_norm/<param>` | every step of the first epoch | the trainers, as vitals_key("grad_norm", param) |
| `vitals/dead_frac/<layer>` | 0 (init_points), then each epoch | activation_vitals (layers a ReLU reads) |
| `vitals/jacobian/sv_mean`, `sv_max`, `sv_min`, `sv_log_std` | 0 (init_points) | jacobian_summary |

init_points (but for signal_probe's rows) and epoch_points leave out values that are not finite (a
layer that never ran, a model whose weights blew up in that epoch). Every key is made by vitals_key, which
writes a layer or parameter name as one part of an MLflow key (the root module, `(model)`, as `_model_`);
metric_name and vitals_key live in initbench.metric_keys, which the analysis imports without torch.
"""

import logging
import math

import torch
from torch import nn

from ..metric_keys import vitals_key
from .measures import activation_vitals, jacobian_singular_values, jacobian_summary
from .signal import signal_probe

logger = logging.getLogger(__name__)
MetricPoint = tuple[str, float, int]  # (key, value, step)


def _finite(points: list[MetricPoint]) -> list[MetricPoint]:
    return [p for p in points if math.isfinite(p[1])]


def activation_points(model: nn.Module, x: torch.Tensor, step: int) -> list[MetricPoint]:
    """act_std and dead_frac per layer at `step` (finite values only): one forward pass, no grad."""
    table = activation_vitals(model, x)
    return _finite([(vitals_key(kind, row.layer), float(getattr(row, kind)), step)
                    for kind in ("act_std", "dead_frac") for row in table.itertuples()])


def jacobian_points(model: nn.Module, x: torch.Tensor, step: int = 0) -> list[MetricPoint]:
    """The input-output Jacobian's spectrum on (at most 8 examples of) `x`, at `step`; none (and a
    warning) where it cannot be taken (integer inputs, logits that are not (batch, classes), a
    Jacobian too large)."""
    try:
        summary = jacobian_summary(jacobian_singular_values(model, x))
    except ValueError as err:
        logger.warning("no vitals/jacobian/ points: %s", err)
        return []
    return _finite([(vitals_key("jacobian", name), value, step) for name, value in summary.items()])


def probe_points(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[MetricPoint]:
    """signal_probe's per-layer activation and backpropagated-gradient std on (x, y), at step 0."""
    table = signal_probe(model, x, y)
    return [(vitals_key(kind, row.layer), float(getattr(row, kind)), 0)
            for row in table.itertuples() for kind in ("act_std", "backprop_std")]


def init_points(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[MetricPoint]:
    """The step-0 diagnostics on the batch (x, y): signal_probe's act_std and backprop_std, dead_frac
    per layer and the Jacobian's spectrum. Leaves the model as it found it."""
    dead = [p for p in activation_points(model, x, 0) if p[0].startswith(vitals_key("dead_frac", ""))]
    return probe_points(model, x, y) + dead + jacobian_points(model, x)


def epoch_points(model: nn.Module, x: torch.Tensor, epoch: int) -> list[MetricPoint]:
    """The end of epoch `epoch`'s diagnostics on the batch x: act_std and dead_frac at step `epoch`."""
    return activation_points(model, x, epoch)
