"""Signal propagation at init: per-layer activation std and backpropagated-gradient std.

Glorot & Bengio (2010) made this the standard diagnostic: weight-gradient norms alone can look
healthy while the signal fades layer after layer. One forward and one backward pass on a batch
shows vanishing or exploding signals before any training::

    table = signal_probe(model, images, labels)   # columns: layer, act_std, backprop_std
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.nn import functional as F

PROBE_COLUMNS = ("layer", "act_std", "backprop_std")


@contextmanager
def side_effect_free(model: nn.Module, train: bool = True, seed: int | None = None) -> Iterator[None]:
    """Run `model` in train (or eval) mode without lasting effects: every module's mode and every
    buffer (BatchNorm running statistics) is restored afterwards, and the global RNG is forked, so
    dropout neither advances it nor depends on it when `seed` is given."""
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    tensors = [*model.parameters(), *model.buffers()]
    devices = sorted({t.device.index or 0 for t in tensors if t.is_cuda})
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        model.train(train)
        try:
            yield
        finally:
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)
            for module, mode in modes:
                module.training = mode


def first_tensor(output: Any) -> tuple[Tensor | None, Callable[[Tensor], Any]]:
    """The tensor a module's output stands for (an LSTM's output sequence: the first of a tuple), and
    a function that puts a replacement for it back in the same structure."""
    if isinstance(output, Tensor):
        return output, lambda t: t
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0], lambda t: type(output)([t, *output[1:]])
    return None, lambda t: output


def parameter_owners(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(dotted name, module) for every module that directly owns parameters; the root is '(model)'."""
    return [
        (name or "(model)", module)
        for name, module in model.named_modules()
        if next(module.parameters(recurse=False), None) is not None
    ]


def signal_probe(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    loss_fn: Callable[[Any, Tensor], Tensor] = F.cross_entropy,
) -> pd.DataFrame:
    """One forward and backward pass of `model` (in train mode) on (`inputs`, `targets`).

    Returns one row per module that directly owns parameters, in the order their forward calls
    return (so a parent that owns parameters comes after its children; the root is '(model)' and
    modules that never ran come last, with NaNs): ``act_std``, the std of that module's output (for
    nn.LSTM the output sequence), and ``backprop_std``, the std of d loss / d output. A module
    called twice (shared) is measured at its first call. Leaves no trace: no parameter
    changes, no ``.grad`` is written (torch.autograd.grad), buffers, train/eval modes and the
    global RNG are restored.
    """
    owners = parameter_owners(model)
    names = {module: name for name, module in owners}
    seen: dict[nn.Module, Tensor | None] = {}

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if module in seen:
            return None
        tensor, rebuild = first_tensor(output)
        seen[module] = tensor
        # Hand the rest of the network a copy, so an in-place op downstream (ReLU(inplace=True))
        # cannot change the tensor we take the gradient with respect to.
        return rebuild(tensor.clone()) if tensor is not None else None

    handles = [module.register_forward_hook(hook) for _, module in owners]
    try:
        with side_effect_free(model, train=True), torch.enable_grad():
            loss = loss_fn(model(inputs), targets)
            wanted = [t for t in seen.values() if t is not None and t.requires_grad]
            grads = torch.autograd.grad(loss, wanted, allow_unused=True) if wanted else ()
    finally:
        for handle in handles:
            handle.remove()
    grad_of = {id(t): g for t, g in zip(wanted, grads, strict=True)}
    rows = []
    for module, tensor in seen.items():
        grad = grad_of.get(id(tensor)) if tensor is not None else None
        rows.append((names[module], _std(tensor), _std(grad)))
    rows += [(name, float("nan"), float("nan")) for name, module in owners if module not in seen]
    return pd.DataFrame(rows, columns=list(PROBE_COLUMNS))


def _std(tensor: Tensor | None) -> float:
    if tensor is None or tensor.numel() < 2:
        return float("nan")
    return tensor.detach().double().std().item()
