"""fit() for K models at once: the same epoch loop (initbench.epochs: data order, metrics, divergence
rule), one vmapped step.

Each model keeps its own seed (its data order), its own learning rate and its own metrics; a model
whose loss turns non-finite stops at the end of that epoch, like fit(): its state is copied out and no
longer logged, while the others go on. All per-step metrics stay on the device; the one host
synchronization is at the epoch's end.
"""

import math
import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn import functional as F

from ..data import Dataset
from ..epochs import EpochSums, FitResult, LogFn, train_epochs
from ..metric_keys import vitals_key
from ..train import Scales, autocast_dtype, in_float32_math, with_decay_exempt
from ..vitals.points import epoch_points, init_points
from .optim import StackedOptimizer, optimizer_spec
from .stacking import param_names, stack_models, unstack_into

EVAL_ROWS = 65536  # at most this many test examples (all models together) per evaluation pass


class BatchedSteps:
    """The vmapped training step and evaluation of K stacked models of one `template`.

    train(params, buffers, x, y, coef, with_norms) updates params (and BatchNorm buffers) in place and
    returns each model's loss (K,), correct predictions (K,) and, if asked, gradient norms (P, K).
    """

    def __init__(self, template: nn.Module, names: list[str], optimizer: StackedOptimizer,
                 device: torch.device, autocast: torch.dtype | None = None,
                 compile: bool = False, compile_mode: str | None = None, grad_clip: float | None = None):
        self.template, self.names, self.optimizer, self.grad_clip = template, names, optimizer, grad_clip
        self.device_type, self.autocast = device.type, autocast

        def loss_and_logits(params, buffers, x, y):
            with torch.autocast(self.device_type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                logits = functional_call(template, (params, buffers), (x,))
            return F.cross_entropy(logits.float() if autocast else logits, y), logits

        self._grads = vmap(grad_and_value(loss_and_logits, has_aux=True))
        self._compiled = torch.compile(self._step, dynamic=False, mode=compile_mode) if compile else None
        self._static: set[int] = set()
        self._warm = False  # whether the eager first step (which creates the optimizer state) has run

    def _step(self, params, buffers, x, y, coef, with_norms: bool):
        grads, (loss, logits) = self._grads(params, buffers, x, y)
        # reshape, not flatten(1): a scalar parameter (a residual gate) has stacked grads of shape (K,)
        clip = self.grad_clip is not None
        norms = torch.stack([torch.linalg.vector_norm(grads[n].reshape(len(grads[n]), -1), dim=1)
                             for n in self.names]) if with_norms or clip else None
        if clip:  # torch.nn.utils.clip_grad_norm_ per model: the global norm over its parameters
            factor = (self.grad_clip / (torch.linalg.vector_norm(norms, dim=0) + 1e-6)).clamp(max=1.0)
            grads = {n: g * factor.view(-1, *[1] * (g.dim() - 1)) for n, g in grads.items()}
        self.optimizer.update(params, grads, coef)
        return loss, (logits.argmax(-1) == y).sum(-1), norms if with_norms else None

    @torch.no_grad()
    def train(self, params, buffers, x, y, coef, with_norms: bool):
        self.template.train()
        # The first step runs eagerly: it creates the optimizer state and shows that vmap works. Nothing
        # the compiled step reads may change between steps but tensors: dynamo would recompile.
        if self._compiled is not None and self._warm:
            self._mark_static(params, buffers)
            try:
                # one graph per (architecture, K, batch size, with_norms), reused by later chunks of
                # the same shapes; a sweep over many architectures needs more than dynamo's default 8
                with torch._dynamo.config.patch(recompile_limit=1024, accumulated_recompile_limit=1024):
                    return self._compiled(params, buffers, x, y, coef, with_norms)
            except Exception as err:  # an op torch.compile cannot handle: go on eagerly
                warnings.warn(f"torch.compile of the batched step failed, training eagerly: "
                              f"{type(err).__name__}: {err}", stacklevel=2)
                self._compiled = None
        self._warm = True
        return self._step(params, buffers, x, y, coef, with_norms)

    def _mark_static(self, params, buffers) -> None:
        """The state is updated in place, so its addresses never change: telling dynamo lets a
        CUDA-graph mode (compile_mode="reduce-overhead") capture the step without copying it."""
        if self.device_type != "cuda":
            return
        state = [t for s in self.optimizer.state.values() for t in s.values()]
        for tensor in [*params.values(), *buffers.values(), *state]:
            if id(tensor) not in self._static:
                torch._dynamo.mark_static_address(tensor)
                self._static.add(id(tensor))

    @torch.no_grad()
    def evaluate(self, params, buffers, x, y, batch_size: int) -> tuple[list[float], list[float]]:
        """Each model's mean cross-entropy and accuracy on (x, y), in eval mode, as fit's evaluate()
        computes them (float32 sums, divided on the host)."""
        k = next(iter(params.values())).shape[0]
        batch_size = max(1, min(batch_size, EVAL_ROWS // k))
        logits_of = vmap(lambda p, b, xs: functional_call(self.template, (p, b), (xs,)), in_dims=(0, 0, None))
        loss_sum = vmap(lambda logits, t: F.cross_entropy(logits, t, reduction="sum"), in_dims=(0, None))
        self.template.eval()
        loss = torch.zeros(k, device=x.device)
        correct = torch.zeros(k, device=x.device)
        try:
            for start in range(0, len(y), batch_size):
                target = y[start:start + batch_size]
                with torch.autocast(self.device_type, dtype=self.autocast or torch.bfloat16,
                                    enabled=self.autocast is not None):
                    logits = logits_of(params, buffers, x[start:start + batch_size])
                loss += loss_sum(logits.float() if self.autocast else logits, target)
                correct += (logits.argmax(-1) == target).sum(-1)
        finally:
            self.template.train()
        return [v / len(y) for v in loss.tolist()], [v / len(y) for v in correct.tolist()]


class BatchedEpoch:
    """EpochSteps for K stacked models: a pass of BatchedSteps.train per epoch, each model's vitals on its
    own unstacked state, and the state copied back into the models that stop. A stopped model keeps its
    slot (its state no longer changes what the others compute): the batch keeps its shape, so a compiled
    step is never compiled again for a smaller K."""

    def __init__(self, steps: BatchedSteps, models: Sequence[nn.Module], params, buffers, data: Dataset,
                 trainer, opt: StackedOptimizer):
        self.steps, self.models, self.params, self.buffers = steps, models, params, buffers
        self.data, self.trainer, self.opt = data, trainer, opt

    def train(self, perms: torch.Tensor, step0: int, with_norms: bool, progress) -> EpochSums:
        k, n, batch = len(self.models), perms.shape[1], self.trainer.batch_size
        steps, device = math.ceil(n / batch), perms.device
        losses = torch.empty(steps, k, device=device)
        grad_norms = torch.empty(steps, len(self.steps.names), k, device=device) if with_norms else None
        loss_sum = torch.zeros(k, device=device)
        correct = torch.zeros(k, device=device)
        for i in range(steps):
            idx = perms[:, i * batch:(i + 1) * batch]
            x, y = self.data.train_x[idx], self.data.train_y[idx]
            loss, right, norms = self.steps.train(self.params, self.buffers, x, y, self.opt.coefficients(step0 + i),
                                                  with_norms)
            losses[i] = loss
            loss_sum += loss * idx.shape[1]
            correct += right
            if with_norms:
                grad_norms[i] = norms
            progress.update()
        return EpochSums(losses, loss_sum, correct, grad_norms)

    def epoch_points(self, j: int, epoch: int) -> list:
        unstack_into([self.models[j]], self.params, self.buffers, [j])
        return epoch_points(self.models[j], self.data.train_x[:self.trainer.batch_size], epoch)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[float]]:
        return self.steps.evaluate(self.params, self.buffers, x, y, self.trainer.eval_batch_size)

    def stop(self, stopped: list[int]) -> None:
        unstack_into([self.models[j] for j in stopped], self.params, self.buffers, stopped)


@in_float32_math
def fit_batched(models: Sequence[nn.Module], data: Dataset, trainer, optimizer, seeds: Sequence[int],
                logs: Sequence[LogFn | None] | None = None, lrs: Sequence[float] | None = None, *,
                compile: bool | str = "auto", compile_mode: str | None = None,
                scales: Sequence[Scales | None] | None = None) -> list[FitResult]:
    """Train `models` (one architecture, any inits) together; what fit() does for each, at once.

    seeds[k] orders model k's data; lrs[k] (default: optimizer.lr) is its learning rate; scales[k] its
    per-parameter factors on the optimizer's options (fit()'s `scales`); logs[k]
    receives its metric points exactly as fit()'s `log` would. The trained state is copied back into
    each model (on the data's device). compile: "auto" (on CUDA), True or False; a step torch.compile
    cannot handle runs eagerly. trainer.precision (optional key) is fit()'s: float32, tf32 or bf16.
    Unbatchable is raised before anything is logged when the models cannot be trained together.
    """
    k = len(models)
    if len(seeds) != k or any(given is not None and len(given) != k for given in (logs, lrs, scales)):
        raise ValueError(f"fit_batched: {k} models need as many seeds, logs, lrs and scales")
    logs = [log or (lambda points: None) for log in (logs or [None] * k)]
    device = data.train_x.device
    _, options = optimizer_spec(optimizer)
    lrs = [float(options["lr"])] * k if lrs is None else [float(lr) for lr in lrs]
    batch = trainer.batch_size
    total_steps = trainer.epochs * math.ceil(len(data.train_y) / batch)
    autocast = autocast_dtype(trainer)
    template, params, buffers = stack_models(list(models), device)
    names = param_names(models[0])
    dtype = params[names[0]].dtype
    scales = [with_decay_exempt(s, models[0], trainer) for s in (scales or [None] * k)]
    opt = StackedOptimizer.build(optimizer, lrs, trainer, total_steps, device, dtype, scales=scales)
    steps = BatchedSteps(template, names, opt, device, autocast,
                         compile=device.type == "cuda" if compile == "auto" else bool(compile),
                         compile_mode=compile_mode, grad_clip=trainer.get("grad_clip"))

    for model, log in zip(models, logs, strict=True):
        log(init_points(model.to(device).train(), data.train_x[:batch], data.train_y[:batch]))  # as fit() does
    stacked = BatchedEpoch(steps, models, params, buffers, data, trainer, opt)
    return train_epochs(stacked, data, trainer, seeds, logs, [vitals_key("grad_norm", name) for name in names])
