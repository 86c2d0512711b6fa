"""The pipeline of one job: data -> model -> init policy -> train -> MLflow, short top to bottom."""

import os
import tempfile
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import nn

from . import __version__
from .data import Dataset, load_dataset
from .init import InitReport, build_policy
from .models import build_model
from .tracking import Tracker, config_hash, flatten, git_commit
from .train import FitResult, fit, resolve_device

SWEEP_ENV = "INITBENCH_SWEEP_ID"  # set once per multirun by initbench.callbacks.SweepId


@dataclass
class Prepared:
    """A job ready to train: its data on the device, its model initialized by its policy (on CPU)."""

    data: Dataset
    model: nn.Module
    report: InitReport


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


def job_index() -> int:
    """This job's number in its Hydra multirun (0 outside one)."""
    return HydraConfig.get().job.get("num", 0) if HydraConfig.initialized() else 0


def prepare(cfg: DictConfig, data: Dataset | None = None) -> Prepared:
    """Everything before training; a bad config fails here, before anything is written.
    Jobs that share a dataset config may pass the `data` one of them loaded."""
    if data is None:
        device = resolve_device(cfg.trainer.device, job_index())
        data = load_dataset(cfg.dataset, cfg.paths.data_dir, device, image_size=cfg.model.get("image_size"))
    model, report = build_initialized_model(cfg, data)
    return Prepared(data, model, report)


def run_tags(cfg: DictConfig, device: torch.device) -> dict[str, str]:
    config = OmegaConf.to_container(cfg, resolve=True)
    tags = {
        "initbench.status": "running",
        "initbench.sweep": os.environ.get(SWEEP_ENV) or uuid.uuid4().hex[:12],
        "initbench.config_hash": config_hash(config),
        "initbench.version": __version__,
        "initbench.torch": torch.__version__,
        "initbench.device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "initbench.torch_device": str(device),
    }
    commit = git_commit()
    if commit:
        tags["initbench.git_commit"] = commit
    return tags


def already_done(cfg: DictConfig, tracker: Tracker) -> str | None:
    """Resuming a sweep: the id of a `finished` or `diverged` run of this exact config (seed included),
    which makes re-running it unnecessary, unless tracking.rerun=true. Runs of this config that a
    killed process left RUNNING are marked KILLED on the way."""
    done = None
    for earlier in tracker.runs_with_hash(config_hash(OmegaConf.to_container(cfg, resolve=True))):
        status = earlier.data.tags.get("initbench.status")
        if earlier.info.status == "RUNNING":
            tracker.mark_killed(earlier)
        elif status in ("finished", "diverged") and done is None:
            done = earlier.info.run_id
    return None if cfg.tracking.get("rerun", False) else done


def start_run(cfg: DictConfig, job: Prepared, tracker: Tracker) -> None:
    """Open the job's MLflow run: name, params, tags, config.yaml and init_report.csv."""
    tags = run_tags(cfg, job.data.train_x.device)
    tracker.start(run_name(cfg), flatten(OmegaConf.to_container(cfg, resolve=True)), tags)
    print(f"MLflow run {run_name(cfg)} ({tracker.run_id}), sweep {tags['initbench.sweep']}")
    with tempfile.TemporaryDirectory() as tmp:
        OmegaConf.save(cfg, Path(tmp) / "config.yaml", resolve=True)
        job.report.to_csv(Path(tmp) / "init_report.csv")
        for artifact in ("config.yaml", "init_report.csv"):
            tracker.log_artifact(Path(tmp) / artifact)


def fail_run(cfg: DictConfig, tracker: Tracker, err: BaseException) -> None:
    """Mark the run `failed` with the error's traceback as its `initbench.error` tag, and close it."""
    print(f"run {run_name(cfg)} ({tracker.run_id}) failed: {type(err).__name__}: {err}")
    tracker.end("failed", error="".join(traceback.format_exception(err)))


def finish_run(cfg: DictConfig, tracker: Tracker, result: FitResult) -> None:
    """Close the run with its status (finished or diverged) and say where it went."""
    final = ", ".join(f"{k} {v:.4f}" for k, v in result.final.items())
    print(f"run {run_name(cfg)} ({tracker.run_id}) {result.status} after {result.steps} steps: {final}")
    tracker.end(result.status)
    print(f"tracking URI: {tracker.uri}\nopen it with: mlflow ui --backend-store-uri {tracker.uri}")


def open_job(cfg: DictConfig, data: Dataset | None = None) -> tuple[Tracker, Prepared] | None:
    """Everything before training, for a job about to run: its tracker and its prepared model and
    data; None (and a line saying so) when a finished run of this exact config makes it unnecessary."""
    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment)
    done = already_done(cfg, tracker)
    if done:
        print(f"skip {run_name(cfg)}: run {done} of this config already finished "
              "(tracking.rerun=true runs it again)")
        return None
    job = prepare(cfg, data)
    print(job.report)
    return tracker, job


def train_and_log(cfg: DictConfig, tracker: Tracker, job: Prepared) -> FitResult:
    """Open the job's MLflow run, train, close the run. An exception during training marks the run
    `failed` with its error text, closes it, and is re-raised."""
    start_run(cfg, job, tracker)
    try:
        result = fit(job.model, job.data, cfg.trainer, cfg.optimizer, cfg.seed, log=tracker.log_points)
    except Exception as err:
        fail_run(cfg, tracker, err)
        raise
    finish_run(cfg, tracker, result)
    return result


def run(cfg: DictConfig) -> FitResult | None:
    """Train one job and log it as one MLflow run; returns the training result, or None when a
    finished or diverged run of the same config is already in the experiment (skipped).

    A failed job raises (Hydra then reports it as failed; the other jobs of a sweep still run).
    """
    opened = open_job(cfg)
    return train_and_log(cfg, *opened) if opened else None
