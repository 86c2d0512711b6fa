"""The epoch loop of both trainers, written once: data order per seed, the divergence rule, metric
points, evaluation on the held-out splits, the vitals, the progress bar. fit() (one model) and
fit_batched() (K models under torch.func) differ only in their EpochSteps.

Per epoch, for the K models still training: a fresh permutation of the training set per model, from
its own generator seeded with its seed; one pass of steps (EpochSteps.train, all on the device); the
vitals at the epoch's end; then the one CPU-GPU synchronization of the epoch, which turns the step
losses (and the first epoch's gradient norms) into metric points. A model whose step loss is not
finite keeps the points before it and stops ("diverged"); so does one whose held-out loss is not
finite after the epoch (the last steps blew its weights up). Steps count globally from 1; the
per-epoch metrics use the epoch (1-based) as their step.
"""

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from tqdm.auto import tqdm

from .data import Dataset
from .selection import LOSS_THRESHOLD, best_index, first_at_or_below
from .vitals.points import MetricPoint

logger = logging.getLogger(__name__)
LogFn = Callable[[list[MetricPoint]], None]


@dataclass
class FitResult:
    status: str  # "finished" or "diverged"
    final: dict[str, float] = field(default_factory=dict)  # last epoch's train/test loss and acc
    steps: int = 0  # optimizer steps taken
    epochs: list[dict[str, float]] = field(default_factory=list)  # each evaluated epoch's `final`, in order
    reached_loss_at: int | None = None  # the first step whose batch loss <= LOSS_THRESHOLD

    def summary(self) -> dict[str, float]:
        """The run in a few numbers, for sorting and grouping runs (MLflow's runs table): selected on
        validation as the analysis selects (initbench.selection), final test accuracy and training loss
        (the last epoch's mean), steps taken, diverged (1) or not (0), and steps_to_loss_<LOSS_THRESHOLD>
        where the batch loss reached it."""
        out = {"steps": float(self.steps), "diverged": float(self.status == "diverged")}
        if self.reached_loss_at is not None:
            out[f"steps_to_loss_{LOSS_THRESHOLD:g}"] = float(self.reached_loss_at)
        if self.epochs:
            last = self.epochs[-1]
            out.update(final_test_acc=last["test/acc"], last_epoch_train_loss=last["train/loss"])
        best = best_index([e.get("val/acc", math.nan) for e in self.epochs])
        if best is not None:
            out.update(best_val_epoch=float(best + 1), best_val_acc=self.epochs[best]["val/acc"],
                       test_acc_at_best_val=self.epochs[best]["test/acc"])
        return out


@dataclass
class EpochSums:
    """One epoch of K models, on the device: each step's loss (steps, K), the summed loss and correct
    predictions over the epoch (K,), and in the first epoch the gradient norms (steps, P, K)."""

    losses: torch.Tensor
    loss_sum: torch.Tensor
    correct: torch.Tensor
    grad_norms: torch.Tensor | None = None


class EpochSteps(Protocol):
    """What a trainer does for its models; the loop (train_epochs) does the rest."""

    def train(self, perms: torch.Tensor, step0: int, with_norms: bool, progress: tqdm) -> EpochSums:
        """One epoch of steps: model j takes its batches from perms[j] (K, n); global steps step0 + 1, ..."""

    def epoch_points(self, j: int, epoch: int) -> list[MetricPoint]:
        """Model j's vitals at the end of `epoch`."""

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[float]]:
        """Each model's mean cross-entropy and accuracy on (x, y), K values each."""

    def stop(self, stopped: list[int]) -> None:
        """Models that train no more (diverged, or done): their state goes back to their nn.Module."""


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


def first_non_finite(values: list[float]) -> int | None:
    return next((i for i, v in enumerate(values) if not math.isfinite(v)), None)


def step_points(losses: list[float], norms: list[list[float]] | None, grad_keys: list[str],
                step0: int) -> list[MetricPoint]:
    """One model's train/loss per step and, in the first epoch, its gradient norms, up to the first
    non-finite loss (the steps that count)."""
    bad = first_non_finite(losses)
    kept = losses if bad is None else losses[:bad]
    points = [("train/loss", v, step0 + i + 1) for i, v in enumerate(kept)]
    if norms is not None:
        points += [(key, v, i + 1) for i, row in enumerate(norms[:len(kept)])
                   for key, v in zip(grad_keys, row, strict=True)]
    return points


def train_epochs(steps: EpochSteps, data: Dataset, trainer, seeds: Sequence[int], logs: Sequence[LogFn],
                 grad_keys: list[str]) -> list[FitResult]:
    """Train K models (K = len(seeds)) for trainer.epochs with `steps`; logs[j] gets model j's points.
    trainer: epochs, batch_size, eval_batch_size, progress (auto | true | false)."""
    k, n, device = len(seeds), len(data.train_y), data.train_x.device
    steps_per_epoch = math.ceil(n / trainer.batch_size)
    orders = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    results = [FitResult("finished") for _ in range(k)]
    live = list(range(k))
    progress = tqdm(total=trainer.epochs * steps_per_epoch, desc="train", unit="step", leave=False,
                    disable={"auto": None, True: False, False: True}[trainer.get("progress", False)])
    for epoch in range(1, trainer.epochs + 1):
        step0 = (epoch - 1) * steps_per_epoch
        perms = torch.stack([torch.randperm(n, generator=order) for order in orders]).to(device)
        sums = steps.train(perms, step0, epoch == 1, progress)
        for j in live:
            logs[j](steps.epoch_points(j, epoch))
        # the one CPU-GPU synchronization of the epoch
        losses, loss_sums, rights = sums.losses.T.tolist(), sums.loss_sum.tolist(), sums.correct.tolist()
        norms = sums.grad_norms.permute(2, 0, 1).tolist() if sums.grad_norms is not None else [None] * k
        points, diverged = {}, []
        for j in live:
            points[j] = step_points(losses[j], norms[j], grad_keys, step0)
            bad = first_non_finite(losses[j])
            results[j].steps = step0 + (len(losses[j]) if bad is None else bad)
            below = first_at_or_below(losses[j][:results[j].steps - step0], LOSS_THRESHOLD)
            if results[j].reached_loss_at is None and below is not None:
                results[j].reached_loss_at = step0 + below + 1
            if bad is not None:
                logs[j](points[j])
                results[j].status = "diverged"
                diverged.append(j)
        survivors = [j for j in live if j not in diverged]
        held_out = {split: steps.evaluate(getattr(data, f"{split}_x"), getattr(data, f"{split}_y"))
                    for split in evaluated_splits(data)} if survivors else {}
        for j in survivors:
            mine = {split: (split_losses[j], accs[j]) for split, (split_losses, accs) in held_out.items()}
            results[j].final, accuracies, loss_points = epoch_results(epoch, loss_sums[j] / n, rights[j] / n, mine)
            results[j].epochs.append(results[j].final)
            if all(math.isfinite(loss) for loss, _ in mine.values()):
                logs[j](points[j] + accuracies + loss_points)
            else:  # the last steps blew the weights up
                logs[j](points[j] + accuracies)
                results[j].status = "diverged"
                diverged.append(j)
        steps.stop(diverged)
        live = [j for j in live if j not in diverged]
        _report(progress, epoch, trainer.epochs, results, live)
        if not live:
            break
    progress.close()
    steps.stop(live)
    return results


def _report(progress: tqdm, epoch: int, epochs: int, results: list[FitResult], live: list[int]) -> None:
    if len(results) == 1 and live:
        final = results[0].final
        progress.set_postfix(epoch=epoch, loss=f"{final['train/loss']:.4f}", test_acc=f"{final['test/acc']:.3f}")
        logger.info("epoch %d/%d: %s", epoch, epochs, ", ".join(f"{k} {v:.4f}" for k, v in final.items()))
    else:
        progress.set_postfix(epoch=epoch, training=f"{len(live)}/{len(results)}")
