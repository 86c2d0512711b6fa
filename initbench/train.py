"""The training step of one model (the loop is initbench.epochs'): data on the device, a batch is an
index, metrics flushed per epoch.

fit() knows nothing of MLflow: it hands metric points (key, value, step) to a `log` callback once per
epoch. Steps: `train/loss` and `vitals/grad_norm/<param>` use the global step k = 1, 2, ... (the k-th
batch); `train/acc`, `val/loss`, `val/acc` (where the data has a validation set), `test/loss`,
`test/acc` use the epoch (1-based); the init probe's
`vitals/act_std/<layer>` and `vitals/backprop_std/<layer>` use step 0. The diagnostics share the
`vitals/` prefix, which MLflow's chart view makes one section, sorted after `test/` and `train/`.
"""

import functools
import inspect
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
from hydra.utils import instantiate
from torch import nn
from torch.nn import functional as F

from .config import COMPILE_MODES, PRECISION_NAMES, SCHEDULES
from .data import Dataset
from .epochs import EpochSums, FitResult, LogFn, train_epochs
from .metric_keys import vitals_key
from .vitals.points import MetricPoint, epoch_points, init_points

# trainer.precision -> autocast dtype; tf32 trains float32 tensors with TF32 matmuls and convolutions
PRECISIONS = dict(zip(PRECISION_NAMES, (None, None, torch.bfloat16), strict=True))


def autocast_dtype(trainer) -> torch.dtype | None:
    """trainer.precision as an autocast dtype: None for float32 (the default), bfloat16 for bf16."""
    name = trainer.get("precision", "float32")
    if name not in PRECISIONS:
        raise ValueError(f"unknown trainer.precision {name!r}; valid: {', '.join(PRECISIONS)}")
    return PRECISIONS[name]


@contextmanager
def float32_math(trainer) -> Iterator[None]:
    """Within: float32 matmuls, cuDNN convolutions and cuDNN LSTMs in IEEE float32, or in TF32
    (10-bit mantissa, on Ampere and later GPUs) if trainer.precision is tf32. PyTorch's own default
    is TF32 for cuDNN, which would make a GPU's float32 runs less faithful than a CPU's. Restores
    PyTorch's flags on exit."""
    tf32 = trainer.get("precision", "float32") == "tf32"
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def in_float32_math(train: Callable) -> Callable:
    """Decorator: run train(..., trainer, ...) within float32_math(trainer)."""
    signature = inspect.signature(train)

    @functools.wraps(train)
    def wrapped(*args, **kwargs):
        with float32_math(signature.bind(*args, **kwargs).arguments["trainer"]):
            return train(*args, **kwargs)

    return wrapped


def forward(model: nn.Module, x: torch.Tensor, amp: torch.dtype | None) -> torch.Tensor:
    """model(x), under autocast to `amp` if given; the logits in float32 (or the model's dtype)."""
    if amp is None:
        return model(x)
    with torch.autocast(x.device.type, dtype=amp):
        return model(x).float()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             amp: torch.dtype | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on (x, y), in eval mode."""
    was_training = model.training
    model.eval()
    loss = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device)
    for start in range(0, len(y), batch_size):
        logits = forward(model, x[start:start + batch_size], amp)
        target = y[start:start + batch_size]
        loss += F.cross_entropy(logits, target, reduction="sum")
        correct += (logits.argmax(1) == target).sum()
    model.train(was_training)
    return loss.item() / len(y), correct.item() / len(y)


def compiles(trainer, device: torch.device) -> bool:
    """Whether trainer.compile (auto = on CUDA only | true | false) compiles the training step on `device`."""
    setting = trainer.get("compile", "auto")
    if setting not in ("auto", True, False):
        raise ValueError(f"unknown trainer.compile {setting!r}; valid: auto, true, false")
    return device.type == "cuda" if setting == "auto" else setting


def loss_and_logits(model: nn.Module, trainer, device: torch.device) -> Callable:
    """(x, y) -> (mean cross-entropy, logits detached) for training; under torch.compile if trainer.compile
    (auto = on CUDA only), in trainer.compile_mode (null: torch's default; reduce-overhead: CUDA
    graphs), falling back to eager, with a warning, if compiling fails."""
    amp = autocast_dtype(trainer)

    def eager(x, y):
        logits = forward(model, x, amp)
        # detached: under CUDA graphs an output kept alive that awaits a backward slows the next replay
        return F.cross_entropy(logits, y), logits.detach()

    mode = trainer.get("compile_mode")
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown trainer.compile_mode {mode!r}; valid: null, {', '.join(COMPILE_MODES[1:])}")
    if not compiles(trainer, device):
        return eager
    compiled = torch.compile(eager, dynamic=False, mode=mode)

    def step(x, y):
        nonlocal compiled
        if compiled is not None:
            try:
                return compiled(x, y)
            except Exception as err:  # an op or a model torch.compile cannot handle
                warnings.warn(f"torch.compile failed, training eagerly: {type(err).__name__}: {err}", stacklevel=2)
                compiled = None
        return eager(x, y)

    return step


Scales = Mapping[str, Mapping[str, float]]  # parameter name -> {optimizer option: factor}


def decay_exempt(model: nn.Module) -> list[str]:
    """The parameters that transformer recipes keep out of weight decay (timm's param_groups_weight_decay,
    GPT-2's and nanoGPT's groups): those of one dimension or none (biases, normalization weights, branch
    gates) and the weights of nn.Embedding modules (a ViT's class token and positions)."""
    embeddings = {f"{name}.weight".lstrip(".") for name, module in model.named_modules()
                  if isinstance(module, nn.Embedding)}
    return [name for name, p in model.named_parameters() if p.dim() <= 1 or name in embeddings]


def with_decay_exempt(scales: Scales | None, model: nn.Module, trainer) -> Scales | None:
    """`scales` with a weight_decay factor of 0 for decay_exempt(model), where trainer.decay_exempt
    (optional key, default false) is true; else `scales` unchanged."""
    if not trainer.get("decay_exempt", False):
        return scales
    merged = {name: dict(factors) for name, factors in (scales or {}).items()}
    for name in decay_exempt(model):
        merged.setdefault(name, {})["weight_decay"] = 0.0
    return merged


def lr_factor(step: int, schedule: str, total_steps: int, warmup_steps: int = 0) -> float:
    """The lr multiplier of 0-based training `step`: a linear warmup, min(1, (step + 1) / warmup_steps), times
    the schedule's decay over the steps after it: 1 for constant, (1 + cos(pi (step - w) / (total_steps - w))) / 2
    for cosine (from 1 down to 0 at the last step; w = warmup_steps)."""
    warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule == "constant":
        return warmup
    if schedule == "cosine":
        after = max(0, step - warmup_steps) / max(1, total_steps - warmup_steps)
        return warmup * (1 + math.cos(math.pi * after)) / 2
    raise ValueError(f"unknown trainer.schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")


def lr_scheduler(opt: torch.optim.Optimizer, trainer, total_steps: int):
    """torch's scheduler for trainer.schedule and trainer.warmup_steps (optional key, 0: none), to step once
    per training step: None for a constant lr without warmup, else LambdaLR of lr_factor."""
    schedule, warmup = trainer.schedule, trainer.get("warmup_steps", 0)
    lr_factor(0, schedule, total_steps, warmup)  # an unknown schedule fails here
    if schedule == "constant" and warmup == 0:
        return None
    return torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(
        lr_factor, schedule=schedule, total_steps=total_steps, warmup_steps=warmup))


def build_optimizer(optimizer, named: list[tuple[str, nn.Parameter]], scales: Scales | None = None):
    """The optimizer of a Hydra `_partial_` config over the `named` parameters. scales[name] = {option: factor}
    multiplies the optimizer's numeric options (lr, weight_decay, eps, ...) for that parameter, as an init policy
    asks (muP's per-layer learning rates): one parameter group per distinct set of factors."""
    make = instantiate(optimizer)
    if not scales:
        return make([p for _, p in named])
    unknown = sorted(set(scales) - {name for name, _ in named})
    if unknown:
        raise ValueError(f"optimizer scales for parameters the model lacks: {unknown}; "
                         f"its parameters: {', '.join(name for name, _ in named)}")
    options = {k: p.default for k, p in inspect.signature(make.func).parameters.items()
               if p.default is not inspect.Parameter.empty}
    options.update(make.keywords)
    numeric = sorted(k for k, v in options.items() if isinstance(v, int | float) and not isinstance(v, bool))
    groups: dict[tuple, list[nn.Parameter]] = {}
    for name, param in named:
        factors = tuple(sorted(scales.get(name, {}).items()))
        bad = [option for option, _ in factors if option not in numeric]
        if bad:
            raise ValueError(f"cannot scale {bad} of {make.func.__name__} for {name}: "
                             f"its numeric options are {', '.join(numeric)}")
        groups.setdefault(factors, []).append(param)
    return make([{"params": params, **{k: options[k] * f for k, f in factors}} for factors, params in groups.items()])


class SingleSteps:
    """EpochSteps for one model (K = 1): eager, or its loss under torch.compile (loss_and_logits)."""

    def __init__(self, model: nn.Module, data: Dataset, trainer, opt: torch.optim.Optimizer, schedule, named):
        self.model, self.data, self.trainer, self.opt, self.schedule = model, data, trainer, opt, schedule
        self.params = [p for _, p in named]
        self.amp = autocast_dtype(trainer)
        self.step = loss_and_logits(model, trainer, data.train_x.device)
        self.grad_clip = trainer.get("grad_clip")

    def train(self, perms: torch.Tensor, step0: int, with_norms: bool, progress) -> EpochSums:
        device, batch, (perm,) = self.data.train_x.device, self.trainer.batch_size, perms
        steps = math.ceil(len(perm) / batch)
        losses = torch.empty(steps, device=device)
        grad_norms = torch.empty(steps, len(self.params), device=device) if with_norms else None
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        for i in range(steps):
            idx = perm[i * batch:(i + 1) * batch]
            x, y = self.data.train_x[idx], self.data.train_y[idx]
            self.opt.zero_grad()  # before the forward: under CUDA graphs, the last step's gradients are graph memory
            loss, logits = self.step(x, y)
            loss.backward()
            if with_norms:
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
                grad_norms[i] = torch.stack(torch._foreach_norm(grads))
            if self.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.params, self.grad_clip)
            self.opt.step()
            if self.schedule is not None:
                self.schedule.step()
            losses[i] = loss.detach()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.argmax(1) == y).sum()
            progress.update()
        return EpochSums(losses[:, None], loss_sum[None], correct[None],
                         grad_norms[:, :, None] if with_norms else None)

    def epoch_points(self, j: int, epoch: int) -> list[MetricPoint]:
        return epoch_points(self.model, self.data.train_x[:self.trainer.batch_size], epoch)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[float]]:
        loss, acc = evaluate(self.model, x, y, self.trainer.eval_batch_size, self.amp)
        return [loss], [acc]

    def stop(self, stopped: list[int]) -> None:
        """Nothing to copy: the model trains in place."""


@in_float32_math
def fit(model: nn.Module, data: Dataset, trainer, optimizer, seed: int, log: LogFn | None = None,
        scales: Scales | None = None) -> FitResult:
    """Train `model` on `data` for trainer.epochs; the data order comes from `seed` alone.

    trainer: epochs, batch_size, schedule (constant | cosine), eval_batch_size, progress, precision
    (float32 | tf32: TF32 matmuls and convolutions | bf16: bf16 autocast for the forward passes; see
    float32_math), compile (auto = on CUDA | true | false), compile_mode (optional: torch.compile's mode);
    optional: warmup_steps (a linear lr warmup, composing with the schedule: lr_factor), grad_clip (the
    global gradient norm clipped to it before each step, as clip_grad_norm_; the logged norms are from
    before), decay_exempt (true: no weight decay for decay_exempt(model)).
    optimizer: a Hydra `_partial_` optimizer config (torch.optim.SGD, Adam, ...), its options multiplied per
    parameter by `scales` (see build_optimizer).
    A loss that becomes NaN or inf ends the run with status "diverged" at the end of that epoch;
    the steps before it are logged (initbench.epochs: the loop).
    """
    log = log or (lambda points: None)
    model.to(data.train_x.device).train()
    named = list(model.named_parameters())
    opt = build_optimizer(optimizer, named, with_decay_exempt(scales, model, trainer))
    total_steps = trainer.epochs * math.ceil(len(data.train_y) / trainer.batch_size)
    steps = SingleSteps(model, data, trainer, opt, lr_scheduler(opt, trainer, total_steps), named)
    batch = trainer.batch_size
    log(init_points(model, data.train_x[:batch], data.train_y[:batch]))  # the signal, dead units, the Jacobian
    [result] = train_epochs(steps, data, trainer, [seed], [log], [vitals_key("grad_norm", name) for name, _ in named])
    return result
