"""The diagnostics the trainers log, as metric points (key, value, step) under `vitals/`.

fit() and fit_batched() log, before the first step, init_points, and at the end of every epoch (after
its last step, before evaluation) epoch_points, all on the probe batch, the first trainer.batch_size
training examples; they log the first epoch's gradient norms as GRAD_NORM + <param> themselves:

| key | step | from |
|---|---|---|
| `vitals/act_std/<layer>` | 0 (init_points), then each epoch (epoch_points) | signal_probe, activation_vitals |
| `vitals/backprop_std/<layer>` | 0 (init_points) | signal_probe |
| `vitals/grad_norm/<param>` | every step of the first epoch | the trainers |
| `vitals/dead_frac/<layer>` | 0 (init_points), then each epoch | activation_vitals (layers a ReLU reads) |
| `vitals/jacobian/sv_mean`, `sv_max`, `sv_min`, `sv_log_std` | 0 (init_points) | jacobian_summary |

init_points (but for signal_probe's rows) and epoch_points leave out values that are not finite (a
layer that never ran, a model whose weights blew up in that epoch); all write layer names with the
characters MLflow refuses in a key replaced by `_` (the root, `(model)`, as `_model_`).
"""

import logging
import math
import re

import torch
from torch import nn

from .init import signal_probe
from .init.diagnostics import activation_vitals, jacobian_singular_values, jacobian_summary

logger = logging.getLogger(__name__)
MetricPoint = tuple[str, float, int]  # (key, value, step)
VITALS = "vitals/"  # one chart section in MLflow's UI, sorted after test/, train/ and val/
GRAD_NORM = VITALS + "grad_norm/"
JACOBIAN = VITALS + "jacobian/"


def metric_name(layer: str) -> str:
    """`layer` as a part of an MLflow metric key: MLflow refuses characters but for letters, digits,
    _ - . / and space (and : off Windows)."""
    return re.sub(r"[^/\w.\- ]", "_", layer)


def _finite(points: list[MetricPoint]) -> list[MetricPoint]:
    return [p for p in points if math.isfinite(p[1])]


def activation_points(model: nn.Module, x: torch.Tensor, step: int) -> list[MetricPoint]:
    """act_std and dead_frac per layer at `step` (finite values only): one forward pass, no grad."""
    table = activation_vitals(model, x)
    return _finite([(f"{VITALS}{kind}/{metric_name(row.layer)}", float(getattr(row, kind)), step)
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
    return _finite([(f"{JACOBIAN}{name}", value, step) for name, value in summary.items()])


def probe_points(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[MetricPoint]:
    """signal_probe's per-layer activation and backpropagated-gradient std on (x, y), at step 0."""
    table = signal_probe(model, x, y)
    return [(f"{VITALS}{kind}/{metric_name(row.layer)}", float(getattr(row, kind)), 0)
            for row in table.itertuples() for kind in ("act_std", "backprop_std")]


def init_points(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[MetricPoint]:
    """The step-0 diagnostics on the batch (x, y): signal_probe's act_std and backprop_std, dead_frac
    per layer and the Jacobian's spectrum. Leaves the model as it found it."""
    dead = [p for p in activation_points(model, x, 0) if p[0].startswith(VITALS + "dead_frac/")]
    return probe_points(model, x, y) + dead + jacobian_points(model, x)


def epoch_points(model: nn.Module, x: torch.Tensor, epoch: int) -> list[MetricPoint]:
    """The end of epoch `epoch`'s diagnostics on the batch x: act_std and dead_frac at step `epoch`."""
    return activation_points(model, x, epoch)
