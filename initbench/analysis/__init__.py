"""From the MLflow runs of a sweep to a ranked table over seeds, CSVs and plots (scripts/analyze.py).

    from initbench.analysis import analyze
    result = analyze("sqlite:///mlflow.db", out="results/my_sweep")   # the latest sweep
    print(result.markdown)

load (MLflow -> pandas) -> stats (per run, then per group over seeds) -> report (markdown, files,
summary MLflow run) and plots (PNG).
"""

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException

from .load import HISTORY_KEYS, NoRuns, SweepRuns, load_sweep, parameter_order
from .plots import plot_curves, plot_grad_norms
from .report import log_to_sweep_run, markdown_table, root_cause, write_outputs
from .stats import UnknownGroupKey, first_epoch_grad_norms, group_grad_norms, per_run, summarize

__all__ = ["Analysis", "NoRuns", "SweepRuns", "UnknownGroupKey", "analyze", "load_sweep", "per_run",
           "summarize"]

DEFAULT_GROUP_BY = ("model", "dataset", "init")
DEFAULT_LOSS_THRESHOLD = 0.5


@dataclass
class Analysis:
    """What analyze() computed and wrote: `runs` one row per run, `summary` one row per group (ranked),
    `grad_norms` per group and parameter, the markdown table, the files and the sweep's parent run id, or
    `log_error`: why the analysis could not be logged to it."""

    sweep: SweepRuns
    runs: pd.DataFrame
    summary: pd.DataFrame
    grad_norms: pd.DataFrame
    markdown: str
    files: list[Path] = field(default_factory=list)
    sweep_run_id: str | None = None
    log_error: str | None = None


def analyze(uri: str, experiment: str = "initbench", sweep: str | None = None,
            group_by: tuple[str, ...] | list[str] = DEFAULT_GROUP_BY, baseline: str | None = "default",
            out: str | Path | None = None, loss_threshold: float = DEFAULT_LOSS_THRESHOLD,
            log_to_mlflow: bool = True) -> Analysis:
    """Analyze one sweep (the latest when `sweep` is None; every run with "all").

    Writes the tables and plots to `out` (default results/<sweep id>) and, with `log_to_mlflow`, the
    same files to the sweep's parent run; if the store refuses it (read-only, unreachable), the
    result says why in `log_error`. Raises NoRuns when there is nothing to analyze, and
    UnknownGroupKey (a ValueError) for a group-by key the runs do not have."""
    data = load_sweep(uri, experiment, sweep)
    keys = list(group_by)
    runs = per_run(data, keys, loss_threshold)
    grads = first_epoch_grad_norms(data, lambda run_id: parameter_order(data.uri, run_id))
    summary = summarize(runs, grads, keys, baseline)
    grad_table = group_grad_norms(runs, grads, keys)
    title = (f"**Sweep `{data.sweep}`** of experiment `{data.experiment}`: {len(runs)} runs in "
             f"{len(summary)} groups")
    superseded = [f"{r.run_name} ({r.status})" for r in data.superseded.itertuples()]
    markdown = markdown_table(summary, keys, baseline, loss_threshold, title, superseded)

    out = Path(out) if out is not None else Path("results") / data.sweep
    curves = data.curves[data.curves.key.isin(HISTORY_KEYS)]
    files = write_outputs(out, runs, summary, curves, grad_table, markdown, keys)
    files += [plot_curves(runs, curves, keys, "train/loss", out / "train_loss.png"),
              plot_curves(runs, curves, keys, "test/acc", out / "test_acc.png", per_epoch=True),
              plot_grad_norms(grad_table, keys, out / "grad_norms.png")]
    result = Analysis(data, runs, summary, grad_table, markdown, files)
    if log_to_mlflow:
        options = {"group_by": ",".join(keys), "baseline": str(baseline), "loss_threshold": str(loss_threshold),
                   "runs": str(len(runs))}
        try:
            result.sweep_run_id = log_to_sweep_run(data.uri, data.experiment, data.sweep, files, summary,
                                                   options, markdown)
        except (MlflowException, OSError) as err:  # the store's errors, artifact writes, connections
            result.log_error = root_cause(err)
    return result
