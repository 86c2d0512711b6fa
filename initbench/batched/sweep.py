"""A multirun's jobs trained together where they can be: grouped, chunked, logged one MLflow run each.

Jobs whose resolved configs differ only in `seed`, `init` and `optimizer.lr` form a group: one dataset
(loaded once), one architecture. A group trains in chunks of at most `max_models` models with
fit_batched, or one job after another with fit() where batching would not pay (one job, an optimizer
or a model the batched trainer lacks, or a CPU where vmap measures slower). Each job is logged through
initbench.run's start_run / finish_run / fail_run, so its MLflow run is the one `python -m initbench`
would have made: same name, params, tags, artifacts and metric points.
"""

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn import functional as F

from ..epochs import FitResult
from ..run import Prepared, close_failed, fail_run, finish_run, kill_run, open_job, run_name, start_run, train_and_log
from ..tracking import Tracker
from ..train import autocast_dtype
from .optim import StackedOptimizer
from .stacking import Unbatchable, param_names, stack_models
from .trainer import BatchedSteps, fit_batched

PER_MODEL = ("seed", "init", "optimizer.lr")  # what may differ between the models of one batch
MODES = ("auto", "batched", "sequential")
SHORT_RUN = 20  # on the CPU, runs of fewer steps per model go sequentially: measuring would cost more
CPU_WIN = 0.9  # on the CPU, batch only when vmap measures at most this fraction of fit()'s time per model


@dataclass
class JobOutcome:
    """What one job of the sweep came to: a result, or the error that stopped it."""

    result: FitResult | None = None  # None with no error: skipped, an earlier run of it is done
    error: BaseException | None = None

    def value(self) -> float | None:
        """The task's return value, as initbench.__main__.main returns it; raises the job's error."""
        if self.error is not None:
            raise self.error
        return self.result.final.get("test/acc") if self.result else None


def group_key(cfg: DictConfig) -> str:
    """The resolved config without the per-model keys: jobs with equal keys can train together."""
    config = OmegaConf.to_container(cfg, resolve=True)
    for dotted in PER_MODEL:
        *parents, leaf = dotted.split(".")
        node = config
        for parent in parents:
            node = node.get(parent, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return json.dumps(config, sort_keys=True, default=str)


def group_jobs(cfgs: list[DictConfig]) -> list[list[int]]:
    """Indices of `cfgs` grouped by group_key, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        groups.setdefault(group_key(cfg), []).append(i)
    return list(groups.values())


def _probe_batch(models, data, trainer, optimizer, timed_steps: int, scales=None) -> tuple[float, int]:
    """One eager warm-up step of the batched trainer on copies of `models` (with their optimizer `scales`;
    it raises if they cannot train together), then `timed_steps` more: (seconds per model-step, peak CUDA
    bytes per model)."""
    device = data.train_x.device
    k, batch = len(models), trainer.batch_size
    template, params, buffers = stack_models([copy.deepcopy(m) for m in models], device)
    lrs = [float(OmegaConf.select(optimizer, "lr"))] * k
    opt = StackedOptimizer.build(optimizer, lrs, trainer, 1 + timed_steps, device, params[next(iter(params))].dtype,
                                 scales=scales)
    steps = BatchedSteps(template, param_names(models[0]), opt, device, autocast_dtype(trainer),
                         grad_clip=trainer.get("grad_clip"))
    if device.type == "cuda":  # the peak counts the models' batches, gradients, activations and optimizer state
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    x = data.train_x[:batch].expand(k, *data.train_x[:batch].shape).contiguous()
    y = data.train_y[:batch].expand(k, -1).contiguous()
    steps.train(params, buffers, x, y, opt.coefficients(0), True)
    peak = (torch.cuda.max_memory_allocated(device) - base) // k if device.type == "cuda" else 0
    start = time.perf_counter()
    for i in range(timed_steps):
        steps.train(params, buffers, x, y, opt.coefficients(1 + i), False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / max(1, timed_steps * k), peak


def _probe_single(model, data, trainer, optimizer, timed_steps: int) -> float:
    """Seconds per step of fit()'s loop body for one copy of `model`, after one warm-up step."""
    model = copy.deepcopy(model).to(data.train_x.device).train()
    opt = instantiate(optimizer)(list(model.parameters()))
    x, y = data.train_x[:trainer.batch_size], data.train_y[:trainer.batch_size]
    for i in range(1 + timed_steps):
        if i == 1:
            start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / max(1, timed_steps)


def batching_pays(models, data, trainer, optimizer, batched: float | None = None) -> tuple[bool, float, float]:
    """(pays, batched, single): whether len(models) models at once take at most CPU_WIN of fit()'s time
    per model-step, measured (best of two, interleaved: the CPU may be shared), and both times."""
    single = _probe_single(models[0], data, trainer, optimizer, 2)
    batched = min(batched or math.inf, _probe_batch(models, data, trainer, optimizer, 2)[0])
    single = min(single, _probe_single(models[0], data, trainer, optimizer, 2))
    return batched <= CPU_WIN * single, batched, single


def plan(jobs: list[Prepared], cfg: DictConfig, mode: str, max_models: int,
         say: Callable[[str], None] = print) -> int:
    """How many models to train at once (1 = sequentially with fit()). Runs a batched step first,
    so a model that cannot be batched is found before any MLflow run is opened."""
    if mode not in MODES:
        raise ValueError(f"unknown batched launcher mode {mode!r}; valid: {', '.join(MODES)}")
    if mode == "sequential" or len(jobs) == 1:
        return 1
    models, data = [j.model for j in jobs], jobs[0].data
    device = data.train_x.device
    steps_per_model = cfg.trainer.epochs * -(-len(data.train_y) // cfg.trainer.batch_size)
    if mode == "auto" and device.type != "cuda" and steps_per_model < SHORT_RUN:
        say(f"sequential: {steps_per_model} steps per model are too few to gain from batching on {device.type}")
        return 1
    k = min(len(jobs), max_models, 8 if device.type != "cuda" else 4)
    try:
        seconds, peak = _probe_batch(models[:k], data, cfg.trainer, cfg.optimizer, 2 if device.type != "cuda" else 0,
                                     scales=[job.scales for job in jobs[:k]])
    except Exception as err:  # Unbatchable, or an op vmap lacks: fit() trains these one by one
        say(f"sequential: these models cannot train together ({type(err).__name__}: {err})")
        return 1
    chunk = min(len(jobs), max_models)
    if device.type == "cuda" and peak:
        free, _ = torch.cuda.mem_get_info(device)
        chunk = max(1, min(chunk, int(0.7 * free / peak)))
    if mode == "auto" and device.type != "cuda":
        pays, batched, single = batching_pays(models[:k], data, cfg.trainer, cfg.optimizer, seconds)
        how = f"{batched * 1e3:.1f} ms per model-step for {k} models at once, {single * 1e3:.1f} ms one at a time"
        if not pays:
            say(f"sequential: on {device.type}, {how}")
            return 1
        say(f"batched: on {device.type}, {how}")
    return chunk


def _run_one(cfg: DictConfig, tracker: Tracker, job: Prepared) -> JobOutcome:
    """initbench.run.train_and_log, its error kept as the job's outcome."""
    try:
        return JobOutcome(train_and_log(cfg, tracker, job))
    except Exception as err:
        return JobOutcome(error=err)


def _run_chunk(cfgs: list[DictConfig], jobs: list[Prepared], trackers: list[Tracker], compile,
               compile_mode) -> list[JobOutcome]:
    """Open each job's run, train the chunk with fit_batched, close the runs. A job whose logging
    fails is failed alone; an error of the batched step fails the chunk's runs that are still open;
    Ctrl-C (or SIGTERM, which a sweep turns into it) kills them and is re-raised."""
    outcomes = [JobOutcome() for _ in jobs]
    live = []
    for i, (cfg, job, tracker) in enumerate(zip(cfgs, jobs, trackers, strict=True)):
        try:
            start_run(cfg, job, tracker)
            live.append(i)
        except Exception as err:
            close_failed(cfg, tracker, err)
            outcomes[i].error = err

    def log_to(i):
        def log(points):
            if outcomes[i].error is None:
                try:
                    trackers[i].log_points(points)
                except Exception as err:
                    outcomes[i].error = err
        return log

    cfg0 = cfgs[live[0]] if live else None
    try:
        results = fit_batched([jobs[i].model for i in live], jobs[live[0]].data, cfg0.trainer, cfg0.optimizer,
                              [cfgs[i].seed for i in live], logs=[log_to(i) for i in live],
                              lrs=[float(cfgs[i].optimizer.lr) for i in live], scales=[jobs[i].scales for i in live],
                              compile=compile, compile_mode=compile_mode) if live else []
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM in a sweep: every open run ends killed
        for i in live:
            kill_run(cfgs[i], trackers[i], err)
        raise
    except Exception as err:
        results = [None] * len(live)
        for i in live:
            outcomes[i].error = outcomes[i].error or err
    for i, result in zip(live, results, strict=True):
        if outcomes[i].error is not None:
            fail_run(cfgs[i], trackers[i], outcomes[i].error)
            continue
        try:  # the run's last writes are checked as it closes (Tracker.end): a failure fails this job alone
            finish_run(cfgs[i], trackers[i], result)
            outcomes[i].result = result
        except Exception as err:
            outcomes[i].error = err
    return outcomes


def run_jobs(cfgs: list[DictConfig], max_models: int = 64, mode: str = "auto", compile="auto",
             compile_mode: str | None = None, say: Callable[[str], None] = print) -> list[JobOutcome]:
    """Train the jobs `cfgs` (resolved job configs, as the task function gets them), batching what
    can be batched; one JobOutcome per job, in order. One job's failure leaves the others going."""
    if max_models < 1:
        raise ValueError(f"max_models must be >= 1, got {max_models}")
    outcomes: list[JobOutcome | None] = [None] * len(cfgs)
    for group in group_jobs(cfgs):
        data, ready = None, []
        for i in group:  # what initbench.run.run does before training, with the data loaded once
            try:
                opened = open_job(cfgs[i], data)
            except Exception as err:  # a bad config or a missing dataset: a failed run, as with run()
                print(f"{run_name(cfgs[i])} failed before training: {type(err).__name__}: {err}")
                outcomes[i] = JobOutcome(error=err)
                continue
            if opened is None:  # skipped: a finished run of this config exists
                outcomes[i] = JobOutcome()
                continue
            tracker, job = opened
            data = job.data
            ready.append((i, job, tracker))
        if not ready:
            continue
        try:
            chunk = plan([job for _, job, _ in ready], cfgs[ready[0][0]], mode, max_models, say)
        except Exception as err:
            for i, _, tracker in ready:
                close_failed(cfgs[i], tracker, err)
                outcomes[i] = JobOutcome(error=err)
            continue
        if chunk == 1:
            for i, job, tracker in ready:
                outcomes[i] = _run_one(cfgs[i], tracker, job)
            continue
        say(f"batched: {len(ready)} jobs in chunks of up to {chunk} models")
        for start in range(0, len(ready), chunk):
            part = ready[start:start + chunk]
            done = _run_chunk([cfgs[i] for i, _, _ in part], [job for _, job, _ in part],
                              [tracker for _, _, tracker in part], compile, compile_mode)
            for (i, _, _), outcome in zip(part, done, strict=True):
                outcomes[i] = outcome
    return outcomes


__all__ = ["JobOutcome", "Unbatchable", "batching_pays", "group_jobs", "group_key", "plan", "run_jobs"]
