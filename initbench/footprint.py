"""The memory a job will need, from its config, before anything is allocated: a model too large for its
device is refused in under a second, naming its size keys, instead of filling the memory (the OOM killer
on a shared host) or dying in the allocator.

    bytes = 4 * (parameters * (2 + optimizer states) + 2 * batch_size * activations per example)

counted in float32: weights and gradients, the optimizer's per-parameter state (SGD's momentum buffer,
Adam's two moments) and, for backward, each module's output for one batch, kept and then its gradient.
The model is built on the meta device (shapes, no storage) and run on a meta batch with a hook on every
module that has no children. A family's parameters and activations are affine in its depth (the blocks
after the first have one shape), so a family deeper than EXACT_DEPTH is built at its two smallest valid
depths and extrapolated, which is exact and keeps a 100,000-layer MLP a matter of milliseconds.
"""

import functools
import json
import math
from dataclasses import dataclass

import psutil
import torch

from .models import FAMILIES, DataShape, build_model

DEPTH_KEYS = ("depth", "num_layers")
SIZE_KEYS = ("depth", "num_layers", "width", "hidden_size", "channels", "mlp_ratio", "image_size")
EXACT_DEPTH = 16  # deeper built-in families are measured at two small depths and extrapolated
FLOAT32_BYTES = 4
OPTIMIZER_STATES = {"SGD": 1, "Adam": 2, "AdamW": 2}  # per-parameter tensors; SGD's only with momentum > 0


class TooLarge(ValueError):
    """A job whose model cannot fit its device; the message names the model's size keys and the figures."""


@dataclass(frozen=True)
class Size:
    parameters: int
    activations: int | None  # float32 values per example over the modules' outputs; None if meta cannot run it


def _measure(model_cfg: dict, shape: DataShape, input_shape: tuple[int, ...]) -> Size:
    with torch.device("meta"):
        model = build_model(model_cfg, shape)
    leaves = [m for m in model.modules() if not next(m.children(), None)]
    counted = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: counted.append(_numel(out))) for m in leaves]
    try:
        with torch.no_grad():
            model(torch.empty((1, *input_shape), device="meta"))
        activations = sum(counted)
    except Exception:  # noqa: BLE001  (an op without a meta kernel: the parameters still count)
        activations = None
    finally:
        for hook in hooks:
            hook.remove()
    return Size(sum(p.numel() for p in model.parameters()), activations)


def _numel(out) -> int:
    if isinstance(out, torch.Tensor):
        return out.numel()
    if isinstance(out, tuple | list):
        return sum(_numel(o) for o in out)
    return 0


def model_size(model_cfg: dict, shape: DataShape, input_shape: tuple[int, ...]) -> Size:
    """Parameters and activations per example of the model `model_cfg` builds for `shape`; kept for the
    next jobs of the process that build the same model (a sweep over inits and seeds measures it once)."""
    return _model_size(json.dumps(model_cfg, sort_keys=True, default=str), shape, tuple(input_shape))


@functools.lru_cache(maxsize=8)
def _model_size(model_json: str, shape: DataShape, input_shape: tuple[int, ...]) -> Size:
    model_cfg = json.loads(model_json)
    key = next((k for k in DEPTH_KEYS if isinstance(model_cfg.get(k), int) and model_cfg[k] > EXACT_DEPTH), None)
    if key is None or model_cfg.get("name") not in FAMILIES or "_target_" in model_cfg:
        return _measure(model_cfg, shape, input_shape)
    small = []
    for depth in range(1, 8 * EXACT_DEPTH):  # the two smallest depths the family builds (a ResNet's are 6n+2)
        try:
            small.append((depth, _measure({**model_cfg, key: depth}, shape, input_shape)))
        except ValueError:
            continue
        if len(small) == 2:
            break
    (d1, a), (d2, b) = small
    steps = (model_cfg[key] - d1) / (d2 - d1)
    parameters = a.parameters + round(steps * (b.parameters - a.parameters))
    both = a.activations is not None and b.activations is not None
    return Size(parameters, a.activations + round(steps * (b.activations - a.activations)) if both else None)


def optimizer_states(optimizer_cfg: dict) -> int:
    kind = str(optimizer_cfg.get("_target_", "")).rsplit(".", 1)[-1]
    if kind == "SGD":
        return OPTIMIZER_STATES["SGD"] if optimizer_cfg.get("momentum", 0) else 0
    return OPTIMIZER_STATES.get(kind, 2)  # an optimizer we do not know: as much as Adam


def free_bytes(device: torch.device) -> int:
    """What the device can still give: free GPU memory, or the host's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def check_fits(model_cfg: dict, optimizer_cfg: dict, batch_size: int, shape: DataShape,
               input_shape: tuple[int, ...], device: torch.device) -> Size:
    """The model's Size; TooLarge where training it needs more than the device has free (see the module doc)."""
    size = model_size(model_cfg, shape, input_shape)
    states = optimizer_states(optimizer_cfg)
    values = size.parameters * (2 + states) + 2 * batch_size * (size.activations or 0)
    needed, free = FLOAT32_BYTES * values, free_bytes(device)
    if needed > free:
        keys = ", ".join(f"model.{k}={model_cfg[k]}" for k in SIZE_KEYS if k in model_cfg) or "the model"
        activations = f" and the activations of a batch of {batch_size}" if size.activations else ""
        raise TooLarge(f"{keys}: the model has {size.parameters:,} parameters; training it needs about "
                       f"{_gib(needed)} (weights, gradients, {states} optimizer state(s) per parameter{activations}), "
                       f"more than the {_gib(free)} free on {device.type}. Make it smaller "
                       "(the keys above) or trainer.batch_size smaller")
    return size


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n < 2**60 else f"10^{math.log10(n):.0f} bytes"


__all__ = ["Size", "TooLarge", "check_fits", "model_size"]
