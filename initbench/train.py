"""The training loop for one model: data on the device, a batch is an index, metrics flushed per epoch.

fit() knows nothing of MLflow: it hands metric points (key, value, step) to a `log` callback once per
epoch. Steps: `train/loss` and `vitals/grad_norm/<param>` use the global step k = 1, 2, ... (the k-th
batch); `train/acc`, `val/loss`, `val/acc` (where the data has a validation set), `test/loss`,
`test/acc` use the epoch (1-based); the init probe's
`vitals/act_std/<layer>` and `vitals/backprop_std/<layer>` use step 0. The diagnostics share the
`vitals/` prefix, which MLflow's chart view makes one section, sorted after `test/` and `train/`.
"""

import functools
import inspect
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from hydra.utils import instantiate
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .config import SCHEDULES
from .data import Dataset
from .diagnostics import MetricPoint, epoch_points, init_points, vitals_key

logger = logging.getLogger(__name__)
LogFn = Callable[[list[MetricPoint]], None]


@dataclass
class FitResult:
    status: str  # "finished" or "diverged"
    final: dict[str, float] = field(default_factory=dict)  # last epoch's train/test loss and acc
    steps: int = 0  # optimizer steps taken


# trainer.precision -> autocast dtype; tf32 trains float32 tensors with TF32 matmuls and convolutions
PRECISIONS = {"float32": None, "tf32": None, "bf16": torch.bfloat16}
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


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


DEVICE_TYPES = ("cpu", "cuda", "mps")  # where the trainers run; meta holds no data, xla and others are untested


def resolve_device(name: str, job_index: int = 0) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; any other name is passed to torch.device. On a machine
    with several GPUs, `auto` spreads the jobs of a sweep over them: job i gets cuda:(i mod count)."""
    if name != "auto":
        device = torch.device(name)
        if device.type not in DEVICE_TYPES:
            raise ValueError(f"trainer.device={name!r}: initbench trains on {', '.join(DEVICE_TYPES)} "
                             f"(auto picks one); {device.type} holds no data to train on here")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"trainer.device={name!r} but CUDA is not available here; use auto or cpu")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"trainer.device={name!r} but MPS is not available here; use auto or cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", job_index % torch.cuda.device_count())
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


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


def evaluated_splits(data: Dataset) -> tuple[str, ...]:
    """The held-out splits evaluated after each epoch: val (where the data has one), then test."""
    return ("val", "test") if data.has_val else ("test",)


def epoch_results(epoch: int, train_loss: float, train_acc: float, held_out: dict[str, tuple[float, float]]):
    """(final, accuracy points, loss points) of an epoch: `final` maps train/loss, train/acc and
    <split>/loss, <split>/acc for each held-out split to its value; the points are at step `epoch`."""
    final = {"train/loss": train_loss, "train/acc": train_acc}
    for split, (loss, acc) in held_out.items():
        final.update({f"{split}/loss": loss, f"{split}/acc": acc})
    accuracies = [("train/acc", train_acc, epoch)] + [(f"{s}/acc", acc, epoch) for s, (_, acc) in held_out.items()]
    losses = [(f"{s}/loss", loss, epoch) for s, (loss, _) in held_out.items()]
    return final, accuracies, losses


def _first_non_finite(values: list[float]) -> int | None:
    return next((i for i, v in enumerate(values) if not math.isfinite(v)), None)


Scales = Mapping[str, Mapping[str, float]]  # parameter name -> {optimizer option: factor}


def lr_scheduler(opt: torch.optim.Optimizer, schedule: str, total_steps: int):
    """torch's scheduler for trainer.schedule, to step once per training step: None for constant,
    CosineAnnealingLR(T_max=total_steps) for cosine."""
    if schedule == "constant":
        return None
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    raise ValueError(f"unknown trainer.schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")


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


@in_float32_math
def fit(model: nn.Module, data: Dataset, trainer, optimizer, seed: int, log: LogFn | None = None,
        scales: Scales | None = None) -> FitResult:
    """Train `model` on `data` for trainer.epochs; the data order comes from `seed` alone.

    trainer: epochs, batch_size, schedule (constant | cosine), eval_batch_size, progress, precision
    (float32 | tf32: TF32 matmuls and convolutions | bf16: bf16 autocast for the forward passes; see
    float32_math), compile (auto = on CUDA | true | false),
    compile_mode (optional: torch.compile's mode).
    optimizer: a Hydra `_partial_` optimizer config (torch.optim.SGD, Adam, ...), its options multiplied per
    parameter by `scales` (see build_optimizer).
    A loss that becomes NaN or inf ends the run with status "diverged" at the end of that epoch;
    the steps before it are logged.
    """
    log = log or (lambda points: None)
    device = data.train_x.device
    model.to(device).train()
    named = list(model.named_parameters())
    grad_keys = [vitals_key("grad_norm", name) for name, _ in named]
    opt = build_optimizer(optimizer, named, scales)
    n, batch = len(data.train_y), trainer.batch_size
    steps_per_epoch = math.ceil(n / batch)
    total_steps = trainer.epochs * steps_per_epoch
    schedule = lr_scheduler(opt, trainer.schedule, total_steps)
    order = torch.Generator().manual_seed(seed)
    amp = autocast_dtype(trainer)
    step = loss_and_logits(model, trainer, device)

    log(init_points(model, data.train_x[:batch], data.train_y[:batch]))  # the signal, dead units, the Jacobian
    progress = tqdm(total=total_steps, disable={"auto": None, True: False, False: True}[trainer.progress],
                    desc="train", unit="step", leave=False)
    result = FitResult("finished")
    for epoch in range(1, trainer.epochs + 1):
        first_epoch = epoch == 1
        perm = torch.randperm(n, generator=order).to(device)
        losses = torch.empty(steps_per_epoch, device=device)
        grad_norms = torch.empty(steps_per_epoch, len(named), device=device) if first_epoch else None
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        for i in range(steps_per_epoch):
            idx = perm[i * batch:(i + 1) * batch]
            x, y = data.train_x[idx], data.train_y[idx]
            opt.zero_grad()  # before the forward: under CUDA graphs the last step's gradients are the graph's memory
            loss, logits = step(x, y)
            loss.backward()
            if first_epoch:
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for _, p in named]
                grad_norms[i] = torch.stack(torch._foreach_norm(grads))
            opt.step()
            if schedule is not None:
                schedule.step()
            losses[i] = loss.detach()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.argmax(1) == y).sum()
            progress.update()
        log(epoch_points(model, data.train_x[:batch], epoch))  # diagnostics at the epoch's end

        # the one CPU-GPU synchronization of the epoch
        step_losses = losses.tolist()
        step0 = (epoch - 1) * steps_per_epoch
        bad = _first_non_finite(step_losses)
        kept = step_losses if bad is None else step_losses[:bad]
        points = [("train/loss", v, step0 + i + 1) for i, v in enumerate(kept)]
        if first_epoch:
            points += [(key, v, i + 1) for i, row in enumerate(grad_norms[:len(kept)].tolist())
                       for key, v in zip(grad_keys, row, strict=True)]
        result.steps = step0 + len(kept)
        if bad is not None:
            log(points)
            result.status = "diverged"
            break
        train_loss, train_acc = loss_sum.item() / n, correct.item() / n
        held_out = {split: evaluate(model, getattr(data, f"{split}_x"), getattr(data, f"{split}_y"),
                                    trainer.eval_batch_size, amp) for split in evaluated_splits(data)}
        result.final, accuracies, losses_out = epoch_results(epoch, train_loss, train_acc, held_out)
        if not all(math.isfinite(loss) for loss, _ in held_out.values()):  # the last steps blew the weights up
            log(points + accuracies)
            result.status = "diverged"
            break
        log(points + accuracies + losses_out)
        progress.set_postfix(epoch=epoch, loss=f"{train_loss:.4f}", test_acc=f"{held_out['test'][1]:.3f}")
        logger.info("epoch %d/%d: %s", epoch, trainer.epochs,
                    ", ".join(f"{k} {v:.4f}" for k, v in result.final.items()))
    progress.close()
    return result
