"""Diagnostics beyond the signal probe: dead units, the input-output Jacobian's spectrum, the width check.

    table = activation_vitals(model, images)        # per layer: act_std, dead_frac (one forward, no grad)
    sv = jacobian_singular_values(model, images)    # (examples, min(classes, input dims)), float64
    jacobian_summary(sv)                            # {"sv_mean", "sv_max", "sv_min", "sv_log_std"}
    coordinate_check(build, widths, probe_x, batches, make_optimizer, steps)   # the muP coordinate check

Like signal_probe, activation_vitals and jacobian_singular_values run the model in train mode and leave
no trace (no .grad, parameters, BatchNorm statistics, train/eval modes and the global RNG as they were).
"""

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from .signal import first_tensor, parameter_owners, side_effect_free

VITALS_COLUMNS = ("layer", "act_std", "dead_frac")
JACOBIAN_STATS = ("sv_mean", "sv_max", "sv_min", "sv_log_std")
COORD_COLUMNS = ("width", "layer", "step", "size", "change")
# The functions a ReLU (nn.ReLU, F.relu, Tensor.relu, in place or not, ReLU6) runs through.
RELUS = frozenset({F.relu, F.relu_, F.relu6, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_})
JACOBIAN_EXAMPLES = 8  # per-example Jacobians taken, by default
GRAD_ROWS = 2**24  # at most this many input-gradient entries (examples x input dims) per backward chunk
MAX_JACOBIAN = 2**22  # a per-example Jacobian (classes x input dims) larger than this is not computed


class _ReLUWatch(TorchFunctionMode):
    """Within: every ReLU call's output goes to `seen(input, output)`."""

    def __init__(self, seen: Callable[[Tensor, Tensor], None]):
        super().__init__()
        self.seen = seen

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in RELUS and args and isinstance(args[0], Tensor) and isinstance(out, Tensor):
            self.seen(args[0], out)
        return out


@contextmanager
def _module_stack(model: nn.Module) -> Iterator[list[str]]:
    """Within: a list whose last item is the name of the innermost module running ('' for the root)."""
    stack: list[str] = []

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        stack.pop()

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, a, name=name: stack.append(name) or None))
        handles.append(module.register_forward_hook(leave, always_call=True))
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()


def _nan(device: torch.device | None = None) -> Tensor:
    return torch.full((), float("nan"), dtype=torch.float64, device=device)


def dead_fraction(output: Tensor) -> Tensor:
    """The fraction of units (dim 1: features or channels) that are 0 for every example (and every
    position) of `output`, as a 0-dim float64 tensor on its device; NaN if it holds non-finite values
    or has no dim 1."""
    if output.dim() < 2 or output.numel() == 0:
        return _nan(output.device)
    alive = output.detach().transpose(0, 1).reshape(output.shape[1], -1).ne(0).any(1)
    frac = 1 - alive.double().mean()
    return torch.where(torch.isfinite(output).all(), frac, torch.full_like(frac, float("nan")))


def _std(tensor: Tensor | None, device: torch.device) -> Tensor:
    if tensor is None or tensor.numel() < 2:
        return _nan(device)
    return tensor.detach().double().std().to(device)


@torch.no_grad()
def activation_vitals(model: nn.Module, inputs: Tensor) -> pd.DataFrame:
    """One forward pass of `model` (train mode, no grad) on `inputs`; leaves no trace, as signal_probe.

    One row per module that directly owns parameters, as signal_probe has them (same names, same
    order, same `act_std`: the std of the module's output at its first call), plus `dead_frac`: the
    fraction of that module's units (dim 1 of its output) that a ReLU applied to its output (nn.ReLU,
    F.relu, Tensor.relu, ReLU6, in place or not, through an nn.Identity) leaves 0 for every example of
    the batch; NaN where no ReLU takes the output, or the output is not finite. A ReLU applied to
    anything else (a sum, a pooled map) gets a row of its own, named after the innermost module that
    called it: that module's name if it is a leaf (an nn.ReLU), else `<module>.relu` (`relu` in the
    root's forward), numbered `.2`, `.3`, ... from its second call on; their act_std is NaN.
    """
    owners = parameter_owners(model)
    names = {module: name for name, module in owners}
    modules = dict(model.named_modules())
    device = inputs.device
    act: dict[str, Tensor] = {}
    dead: dict[str, Tensor] = {}
    produced: dict[int, tuple[str, Tensor]] = {}  # id(output) -> (owner, output): the reference keeps the id

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        name = names[module]
        tensor, _ = first_tensor(output)
        if name in act:  # a shared module: its first call
            return
        act[name] = _std(tensor, device)  # now: a ReLU in place downstream will change the tensor
        if tensor is not None:
            produced.setdefault(id(tensor), (name, tensor))

    extra: dict[str, int] = {}
    handles = [module.register_forward_hook(hook) for _, module in owners]
    try:
        with side_effect_free(model, train=True), _module_stack(model) as stack:
            def seen(inp: Tensor, out: Tensor) -> None:
                owner = produced.get(id(inp))
                if owner is not None and owner[1] is inp:
                    if owner[0] not in dead:
                        dead[owner[0]] = dead_fraction(out)
                    return
                caller = stack[-1] if stack else ""
                leaf = caller and next(modules[caller].children(), None) is None
                base = caller if leaf else f"{caller}.relu" if caller else "relu"
                extra[base] = extra.get(base, 0) + 1
                dead[base if extra[base] == 1 else f"{base}.{extra[base]}"] = dead_fraction(out)

            with _ReLUWatch(seen):
                model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    nan = _nan(device)
    layers = [*act, *(name for name, _ in owners if name not in act)]  # in the order forward calls return
    layers += [name for name in dead if name not in names.values()]
    values = torch.stack([torch.stack([act.get(n, nan), dead.get(n, nan)]) for n in layers]) \
        if layers else torch.empty(0, 2)
    rows = [(name, *pair) for name, pair in zip(layers, values.tolist(), strict=True)]  # one sync
    return pd.DataFrame(rows, columns=list(VITALS_COLUMNS))


def jacobian_singular_values(model: nn.Module, inputs: Tensor, max_examples: int = JACOBIAN_EXAMPLES) -> Tensor:
    """The singular values of d logits_i / d x_i, the input-output Jacobian of example i, for the
    first `max_examples` examples of `inputs`: a float64 CPU tensor (examples, min(classes, input
    dims)), each row in descending order.

    Those examples are one batch, run in train mode as signal_probe runs the model (with BatchNorm,
    example i's Jacobian holds the others fixed); leaves no trace. Cost: one forward pass of that
    batch and examples x classes backward passes of it, batched with vmap (torch.autograd.grad's
    is_grads_batched; a plain loop where vmap cannot batch the backward) in chunks of at most
    GRAD_ROWS input-gradient entries. A Jacobian of more than MAX_JACOBIAN entries (classes x input
    dims) is refused with ValueError, as are logits that are not (batch, classes).
    """
    n = min(max_examples, len(inputs))
    if n < 1:
        raise ValueError("jacobian_singular_values needs at least one example")
    if not inputs.is_floating_point():
        raise ValueError(f"the input-output Jacobian needs floating-point inputs, got {inputs.dtype}")
    dims = inputs[0].numel()
    with side_effect_free(model, train=True), torch.enable_grad():
        x = inputs[:n].detach().clone().requires_grad_(True)
        logits = model(x)
        if not isinstance(logits, Tensor) or logits.dim() != 2 or len(logits) != n:
            raise ValueError(f"the input-output Jacobian needs (batch, classes) logits, got "
                             f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}")
        classes = logits.shape[1]
        if classes * dims > MAX_JACOBIAN:
            raise ValueError(f"a {classes} x {dims} Jacobian per example is more than the {MAX_JACOBIAN} "
                             "entries jacobian_singular_values computes")
        pairs = [(i, c) for i in range(n) for c in range(classes)]  # (example, class) = one Jacobian row
        chunk = max(1, GRAD_ROWS // (n * dims))
        rows = torch.cat([_input_grads(logits, x, pairs[k:k + chunk]) for k in range(0, len(pairs), chunk)])
    jac = rows.detach().reshape(n, classes, dims).cpu().double()
    return torch.linalg.svdvals(jac)


def _input_grads(logits: Tensor, x: Tensor, pairs: list[tuple[int, int]]) -> Tensor:
    """d logits[i, c] / d x[i] for each (i, c) of `pairs`, flattened: (len(pairs), input dims)."""
    examples = torch.tensor([i for i, _ in pairs], device=logits.device)
    cotangents = torch.zeros(len(pairs), *logits.shape, dtype=logits.dtype, device=logits.device)
    cotangents[torch.arange(len(pairs)), examples, torch.tensor([c for _, c in pairs])] = 1
    try:
        (grads,) = torch.autograd.grad(logits, x, cotangents, retain_graph=True, is_grads_batched=True)
    except RuntimeError:  # a backward op vmap cannot batch: one row at a time
        grads = torch.stack([torch.autograd.grad(logits, x, g, retain_graph=True)[0] for g in cotangents])
    return grads[torch.arange(len(pairs)), examples].reshape(len(pairs), -1)


def jacobian_summary(singular_values: Tensor) -> dict[str, float]:
    """The spectrum in four numbers, over all examples' singular values together: sv_mean, sv_max,
    sv_min, and sv_log_std, the (population) std of their logs: 0 at dynamical isometry (all equal), NaN
    if one is 0. A net whose Jacobian is an orthogonal matrix times c has sv_mean = sv_max = sv_min = c."""
    sv = singular_values.double().flatten()
    if sv.numel() == 0:
        return dict.fromkeys(JACOBIAN_STATS, float("nan"))
    log_std = sv.log().std(correction=0).item() if bool((sv > 0).all()) else float("nan")
    return {"sv_mean": sv.mean().item(), "sv_max": sv.max().item(), "sv_min": sv.min().item(),
            "sv_log_std": log_std}


@torch.no_grad()
def _outputs(model: nn.Module, inputs: Tensor) -> dict[str, Tensor]:
    """Each parameter-owning module's output (first call, first tensor), in train mode, leaving no trace."""
    names = {module: name for name, module in parameter_owners(model)}
    out: dict[str, Tensor] = {}

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        tensor, _ = first_tensor(output)
        if tensor is not None and names[module] not in out:
            out[names[module]] = tensor.detach().clone()

    handles = [module.register_forward_hook(hook) for module in names]
    try:
        with side_effect_free(model, train=True):
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return out


def coordinate_check(build: Callable[[int], nn.Module], widths: Sequence[int], probe: Tensor,
                     batches: Iterable[tuple[Tensor, Tensor]] | Callable[[], Iterable[tuple[Tensor, Tensor]]],
                     make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer], steps: int,
                     loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy) -> pd.DataFrame:
    """The muP "coordinate check" (Yang et al., Tensor Programs V): how the size of each layer's
    activations depends on the width, at init and after `steps` training steps.

    For each width w, `build(w)` gives a model (built and initialized as for training); it trains for
    `steps` steps (loss_fn, make_optimizer(parameters), on the first `steps` of `batches`: the same
    batches for every width; a callable is called once per width) and is measured on `probe` (one
    batch, train mode, no grad, no trace) before and after. Returns one row per (width, layer, step),
    step 0 and `steps`, layers as signal_probe names them: `size`, the mean |activation| of the layer's
    output, and `change`, the mean |activation - its value at init| (0 at step 0).

    Flat lines over width mean a parametrization that keeps activations and their updates the same
    size as the width grows (muP); in the standard parametrization with a fixed learning rate, the
    output layer's change grows about linearly with the width.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    rows = []
    for width in widths:
        model = build(width)
        start = _outputs(model, probe)
        opt = make_optimizer([p for p in model.parameters() if p.requires_grad])
        model.train()
        source = batches() if callable(batches) else batches
        taken = 0
        for x, y in source:
            if taken == steps:
                break
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
            taken += 1
        if taken < steps:
            raise ValueError(f"coordinate_check: {steps} steps asked, the batches gave {taken}")
        end = _outputs(model, probe)
        for step, now in ((0, start), (steps, end)):
            for layer, value in now.items():
                change = (value - start[layer]).abs().double().mean().item()
                rows.append((width, layer, step, value.abs().double().mean().item(), change))
    return pd.DataFrame(rows, columns=list(COORD_COLUMNS))


def width_slopes(table: pd.DataFrame, column: str, step: int) -> pd.Series:
    """Per layer, the slope of log(`column`) against log(width) at `step` (least squares over the
    widths): about 0 for flat lines, 1 for growth proportional to the width; NaN where a value is <= 0."""
    import numpy as np

    part = table[table.step == step]
    slopes = {}
    for layer, rows in part.groupby("layer", sort=False):
        values = rows[column].to_numpy(dtype=float)
        widths = rows["width"].to_numpy(dtype=float)
        ok = len(values) > 1 and bool((values > 0).all())
        slopes[layer] = float(np.polyfit(np.log(widths), np.log(values), 1)[0]) if ok else float("nan")
    return pd.Series(slopes, name=f"{column} slope")
