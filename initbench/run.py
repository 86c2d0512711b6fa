"""The pipeline of one job: data -> model -> init policy -> train -> MLflow, short top to bottom."""

import os
import tempfile
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import nn

from . import __version__, slurm
from .config import check_config
from .data import SPLITS, Dataset, shared_dataset
from .devices import resolve_device
from .epochs import FitResult
from .errors import REFUSED
from .footprint import check_fits
from .init import InitReport, build_policy
from .init.criticality import criticality_note
from .interrupts import sigterm_as_interrupt
from .metric_keys import SUMMARY
from .models import build_model
from .store import TrackingUnavailable
from .tracking import UI_PORT, Tracker, config_hash, flatten, git_commit, liveness
from .train import Scales, compiles, fit

SWEEP_ENV = "INITBENCH_SWEEP_ID"  # set once per multirun by initbench.callbacks.SweepId
PARENT_ENV = "INITBENCH_PARENT_RUN"  # the sweep's parent run id, set there too


@dataclass
class Prepared:
    """A job ready to train: its data on the device, its model initialized by its policy (on CPU), and the
    factors its policy asks the optimizer to apply per parameter (optimizer_scales)."""

    data: Dataset
    model: nn.Module
    report: InitReport
    scales: Scales = field(default_factory=dict)


def run_name(cfg: DictConfig) -> str:
    model = cfg.model.get("name") or cfg.model._target_.rsplit(".", 1)[-1].lower()
    return f"{model}-{cfg.init.name}-{cfg.dataset.name}-s{cfg.seed}"


def build_initialized_model(cfg: DictConfig, data: Dataset) -> tuple[nn.Module, InitReport]:
    """PyTorch's default init under torch.manual_seed(seed), then the policy from its own generator
    seeded with `seed`: the same seed gives the same weights whatever ran before."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, data.shape)
    policy = build_policy(cfg.init)
    batch = data.train_x[: cfg.trainer.batch_size].cpu() if policy.needs_data else None
    report = policy.apply(model, torch.Generator().manual_seed(cfg.seed), batch=batch)
    return model, report


def optimizer_scales(cfg: DictConfig, model: nn.Module) -> Scales:
    """{parameter name: {optimizer option: factor}}: what the job's init policy asks of its optimizer per
    parameter (muP's per-layer learning rates); empty for most policies."""
    return build_policy(cfg.init).optimizer_scales(model, OmegaConf.to_container(cfg.optimizer, resolve=True))


def job_index() -> int:
    """This job's number in its Hydra multirun (0 outside one)."""
    return HydraConfig.get().job.get("num", 0) if HydraConfig.initialized() else 0


def prepare(cfg: DictConfig, data: Dataset | None = None) -> Prepared:
    """Everything before training; a bad config fails here, before anything is written.
    Jobs that share a dataset config may pass the `data` one of them loaded."""
    if data is None:
        data = shared_dataset(cfg.dataset, cfg.paths.data_dir, job_device(cfg), image_size=cfg.model.get("image_size"))
    check_fits(OmegaConf.to_container(cfg.model, resolve=True), OmegaConf.to_container(cfg.optimizer, resolve=True),
               cfg.trainer.batch_size, data.shape, tuple(data.train_x.shape[1:]), data.train_x.device)
    model, report = build_initialized_model(cfg, data)
    return Prepared(data, model, report, optimizer_scales(cfg, model))


def computed_config(cfg: DictConfig, device: torch.device) -> dict:
    """The resolved config as it decides the result: the device as its type (auto on a CPU-only machine
    and cpu are one computation; cuda:0 and cuda:1 too), trainer.compile as whether it compiles, and
    without trainer.progress (a progress bar). Its hash names the computation (tag config_hash)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    trainer = config["trainer"]
    trainer.pop("progress", None)
    trainer["compile"] = compiles(cfg.trainer, device)
    trainer["device"] = device.type
    return config


def job_device(cfg: DictConfig) -> torch.device:
    """The device this job trains on (trainer.device, `auto` resolved for this job of a sweep)."""
    return resolve_device(cfg.trainer.device, job_index())


def sweep_tags() -> dict[str, str]:
    """The sweep of this job (a new id for a single run) and, in a multirun, its parent run."""
    tags = {"initbench.sweep": os.environ.get(SWEEP_ENV) or uuid.uuid4().hex[:12]}
    if os.environ.get(PARENT_ENV):
        tags["mlflow.parentRunId"] = os.environ[PARENT_ENV]
    return tags


def run_tags(cfg: DictConfig, device: torch.device) -> dict[str, str]:
    tags = {
        "initbench.status": "running",
        **sweep_tags(),
        "initbench.config_hash": config_hash(computed_config(cfg, device)),
        "initbench.version": __version__,
        "initbench.torch": torch.__version__,
        "initbench.device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "initbench.torch_device": str(device),
    }
    commit = git_commit()
    if commit:
        tags["initbench.git_commit"] = commit
    if job := slurm.job_id():
        tags["initbench.slurm_job"] = job
    return tags


def already_done(cfg: DictConfig, tracker: Tracker) -> str | None:
    """Resuming a sweep: why this job need not run, or None. A `finished` or `diverged` run of this exact
    computation (seed included) makes it unnecessary, unless tracking.rerun=true; so does a RUNNING run
    of it whose process is alive (another process trains it now). RUNNING runs whose process is gone
    are marked KILLED on the way. In a multirun, the run that stands in for this job is tagged as a job of
    this sweep too, so that the sweep's analysis covers every job of it, whenever it ran."""
    digest = config_hash(computed_config(cfg, job_device(cfg)))
    done = None
    for earlier in tracker.runs_with_hash(digest):
        run_id, status = earlier.info.run_id, earlier.data.tags.get("initbench.status")
        if earlier.info.status == "RUNNING":
            alive, why = liveness(earlier, 60 * cfg.tracking.stale_after_min)
            if alive:
                join_sweep(tracker, run_id)
                return f"run {run_id} of this config is running now: {why}"
            print(f"marking run {run_id} of {run_name(cfg)} KILLED: {why}")
            tracker.mark_killed(earlier)
        elif status in ("finished", "diverged") and done is None:
            done = run_id, f"run {run_id} of this config already {status} (tracking.rerun=true runs it again)"
    if done is None or cfg.tracking.rerun:
        return None
    join_sweep(tracker, done[0])
    return done[1]


def join_sweep(tracker: Tracker, run_id: str) -> None:
    """In a multirun: the earlier run `run_id` stands in for this job, so it is a job of this sweep too."""
    sweep = os.environ.get(SWEEP_ENV)
    if sweep:
        tracker.add_to_sweep(run_id, sweep)


def dataset_inputs(cfg: DictConfig, data: Dataset) -> list[dict]:
    """The training, validation (if any) and test sets as the tracker logs them: name, digest of the
    exact tensors, split, the dataset config as source, shapes and class count as profile."""
    source = OmegaConf.to_container(cfg.dataset, resolve=True)
    return [{"name": data.name, "digest": data.digest(split), "context": split, "source": source,
             "profile": {"num_rows": len(getattr(data, f"{split}_y")),
                         "shape": list(getattr(data, f"{split}_x").shape), "classes": data.shape.num_classes}}
            for split in SPLITS if len(getattr(data, f"{split}_y"))]


def start_run(cfg: DictConfig, job: Prepared, tracker: Tracker) -> None:
    """Open the job's MLflow run: name, params, tags, config.yaml and init_report.csv (with the
    tracker's URI, which holds no credentials)."""
    tags = run_tags(cfg, job.data.train_x.device)
    config = OmegaConf.to_container(cfg, resolve=True)
    config["tracking"]["uri"] = tracker.uri
    tracker.start(run_name(cfg), flatten(config), tags)
    print(f"MLflow run {run_name(cfg)} ({tracker.run_id}), sweep {tags['initbench.sweep']}")
    tracker.log_datasets(dataset_inputs(cfg, job.data))
    with tempfile.TemporaryDirectory() as tmp:
        OmegaConf.save(OmegaConf.create(config), Path(tmp) / "config.yaml")
        job.report.to_csv(Path(tmp) / "init_report.csv")
        for artifact in ("config.yaml", "init_report.csv"):
            tracker.log_artifact(Path(tmp) / artifact)


def fail_run(cfg: DictConfig, tracker: Tracker, err: BaseException) -> None:
    """Mark the run `failed` with the error's traceback as its `initbench.error` tag, and close it."""
    print(f"run {run_name(cfg)} ({tracker.run_id}) failed: {type(err).__name__}: {err}")
    tracker.end("failed", error="".join(traceback.format_exception(err)))


def kill_run(cfg: DictConfig, tracker: Tracker, err: KeyboardInterrupt) -> None:
    """Close a run stopped by Ctrl-C or SIGTERM as `killed`, with the metrics it flushed; the reason says
    so where SLURM's SIGTERM came from the job's time limit."""
    reason = str(err) or "Ctrl-C"
    if reason.startswith("stopped by ") and (meaning := slurm.stop_reason(reason.removeprefix("stopped by "))):
        reason = f"{reason}; {meaning}"
    print(f"run {run_name(cfg)} ({tracker.run_id}) killed: {reason}")
    tracker.end("killed", error=f"KeyboardInterrupt: {reason}")


def finish_run(cfg: DictConfig, tracker: Tracker, result: FitResult) -> None:
    """Log the run's summary metrics (whole_run/<name>: FitResult.summary, at step 0), close the run with its
    status (finished or diverged) and say where it went."""
    final = ", ".join(f"{k} {v:.4f}" for k, v in result.final.items())
    print(f"run {run_name(cfg)} ({tracker.run_id}) {result.status} after {result.steps} steps: {final}")
    tracker.log_points([(f"{SUMMARY}{key}", value, 0) for key, value in result.summary().items()])
    tracker.end(result.status)
    print(f"tracking URI: {tracker.uri}")
    if not tracker.uri.startswith(("http://", "https://")):
        print(f"open it with: mlflow ui --backend-store-uri {tracker.uri} --port {UI_PORT}")
    print(f"its experiment's runs: {tracker.experiment_url()}")


def open_job(cfg: DictConfig, data: Dataset | None = None) -> tuple[Tracker, Prepared] | None:
    """Everything before training, for a job about to run: its config checked, its tracker, its
    prepared model and data; None (and a line saying why) when it need not run (see already_done).
    A job of a sweep that stops here, refused (a bad config, a policy that does not fit the model, a
    missing dataset) or crashed (a model that raises, out of memory), is still recorded, as a `failed`
    run with its error, then the error is re-raised: every job of a sweep leaves a run."""
    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.get("system_metrics", False))
    try:
        check_config(cfg)
        done = already_done(cfg, tracker)
        if done:
            print(f"skip {run_name(cfg)}: {done}")
            return None
        job = prepare(cfg, data)
    except Exception as err:
        if os.environ.get(SWEEP_ENV) and not isinstance(err, TrackingUnavailable):  # a store that can take it
            record_unopened(cfg, tracker, err)
        raise
    print(job.report)
    note = criticality_note(build_policy(cfg.init), cfg.model.get("activation"))  # init=critical: the edge of chaos
    if note:
        print(note)
    if job.scales:
        print("the policy's factors on the optimizer's options, per parameter: "
              + "; ".join(f"{name} {dict(factors)}" for name, factors in job.scales.items()))
    return tracker, job


def record_unopened(cfg: DictConfig, tracker: Tracker, err: Exception) -> None:
    """A `failed` run for a sweep's job that stopped before its run opened: its name, its params (resolved
    where they resolve), its sweep and config hash where they can be computed, and the error (a user's
    mistake as its message, tagged initbench.refused; a crash with its traceback), so that the sweep's
    table counts it. A store that refuses even this is reported, not raised: the job's own error goes on."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
        tags = {"initbench.config_hash": config_hash(computed_config(cfg, job_device(cfg)))}
    except Exception:  # noqa: BLE001  (an interpolation or device that is itself the problem)
        config, tags = OmegaConf.to_container(cfg, resolve=False), {}
    config["tracking"]["uri"] = tracker.uri  # cleaned of credentials
    refused = isinstance(err, REFUSED)
    tags.update({**sweep_tags(), "initbench.refused": str(refused).lower()})
    error = f"{type(err).__name__}: {err}" if refused else "".join(traceback.format_exception(err))
    try:
        tracker.start(run_name(cfg), flatten(config), tags)
        tracker.end("failed", error=error)
    except Exception as store_err:  # noqa: BLE001
        print(f"could not record the failure of {run_name(cfg)} in MLflow: {type(store_err).__name__}: {store_err}")


def train_and_log(cfg: DictConfig, tracker: Tracker, job: Prepared) -> FitResult:
    """Open the job's MLflow run, train, close the run. An exception while the run opens (an artifact
    store that refuses its files) or trains marks the run `failed` with its error text, Ctrl-C or SIGTERM
    marks it `killed` (with what it flushed), and both close it and are re-raised."""
    try:
        start_run(cfg, job, tracker)
        slurm.time_limit()  # read now: a job SLURM is stopping may not reach its controller
        with sigterm_as_interrupt():
            result = fit(job.model, job.data, cfg.trainer, cfg.optimizer, cfg.seed, log=tracker.log_points,
                         scales=job.scales)
    except KeyboardInterrupt as err:
        if tracker.run_id:
            kill_run(cfg, tracker, err)
        raise
    except Exception as err:
        close_failed(cfg, tracker, err)
        raise
    finish_run(cfg, tracker, result)
    return result


def close_failed(cfg: DictConfig, tracker: Tracker, err: Exception) -> None:
    """End the job's run `failed` with `err` where it opened; in a sweep, record the failure where it did not."""
    if tracker.run_id:
        fail_run(cfg, tracker, err)
    elif os.environ.get(SWEEP_ENV):
        record_unopened(cfg, tracker, err)


def run(cfg: DictConfig) -> FitResult | None:
    """Train one job and log it as one MLflow run; returns the training result, or None when a
    finished or diverged run of the same config is already in the experiment (skipped).

    A failed job raises (Hydra then reports it as failed; the other jobs of a sweep still run).
    """
    opened = open_job(cfg)
    return train_and_log(cfg, *opened) if opened else None
