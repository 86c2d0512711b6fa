"""From the MLflow runs of a sweep to a ranked table over seeds, CSVs and plots (scripts/analyze.py).

    from initbench.analysis import analyze
    result = analyze("sqlite:///mlflow.db", out="analysis/my_sweep")   # the latest sweep
    print(result.markdown)

load (MLflow -> pandas) -> groups (which keys make a row: the asked ones and every param the runs of
a row differ in) -> stats (per run, then per group over seeds; selection on validation, BCa CIs,
comparisons with Holm's correction) and vitals (per-layer activation std and dead units through
training, the Jacobian at init) -> grid (--tune, --heatmap) -> summary (markdown, files, the sweep's
parent run in MLflow) and plots (PNG).
"""

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException

from ..selection import LOSS_THRESHOLD
from .grid import HEATMAP_MEASURES, PERCENT, NoValidation, heatmap, tune
from .groups import differing_keys
from .linear import linear_note
from .load import HISTORY_KEYS, NoRuns, SweepRuns, load_sweep, parameter_order
from .plots import plot_curves, plot_grad_norms, plot_heatmap, plot_layer_vitals
from .stats import VAL, UnknownGroupKey, first_epoch_grad_norms, group_grad_norms, per_run, summarize
from .summary import (
    OutUnusable,
    check_out,
    heatmap_markdown,
    log_to_sweep_run,
    markdown_table,
    overview_markdown,
    remove_stale,
    root_cause,
    tune_markdown,
    vitals_markdown,
    write_outputs,
)
from .vitals import KINDS, group_layer_vitals, group_vitals, layer_vitals, run_vitals, without_vitals

__all__ = ["Analysis", "HEATMAP_MEASURES", "NoRuns", "NoValidation", "OutUnusable", "SweepRuns", "UnknownGroupKey",
           "analyze", "load_sweep", "per_run", "summarize"]

DEFAULT_GROUP_BY = ("model", "dataset", "init")
DEFAULT_LOSS_THRESHOLD = LOSS_THRESHOLD
# Where a run without a paths.data_dir param read its data (conf/paths/default.yaml's default)
DATA_DIR_ENV, DEFAULT_DATA_DIR = "INITBENCH_DATA_DIR", "~/.cache/initbench"
VITALS_LABELS = {"act_std": ("activation std", True), "dead_frac": ("fraction of dead units", False)}  # (y, log?)


@dataclass
class Analysis:
    """What analyze() computed and wrote: `runs` one row per run, `summary` one row per group (ranked),
    `grad_norms` per group and parameter, `vitals` per group, kind (act_std, dead_frac), layer and epoch
    (the data of act_std.png and dead_frac.png), the markdown (the table, the vitals, then the --tune and
    --heatmap sections), the `overview` (the parent run's description: the ranking in a few columns), the
    files and the sweep's parent run id, or `log_error`: why the analysis could not be
    logged to it. With tune: `tune` (one row per group) and `tune_grid` (per group and value); with
    heatmap: `heatmap` (one row per cell) and the `measure` it shows."""

    sweep: SweepRuns
    runs: pd.DataFrame
    summary: pd.DataFrame
    grad_norms: pd.DataFrame
    vitals: pd.DataFrame
    markdown: str
    overview: str = ""
    files: list[Path] = field(default_factory=list)
    sweep_run_id: str | None = None
    log_error: str | None = None
    tune: pd.DataFrame | None = None
    tune_grid: pd.DataFrame | None = None
    heatmap: pd.DataFrame | None = None
    measure: str | None = None
    removed: list[Path] = field(default_factory=list)  # files of an earlier analysis in `out`, removed


def _file_part(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", key)


def analyze(uri: str, experiment: str = "initbench", sweep: str | None = None,
            group_by: tuple[str, ...] | list[str] = DEFAULT_GROUP_BY, baseline: str | None = "default",
            out: str | Path | None = None, loss_threshold: float = DEFAULT_LOSS_THRESHOLD,
            log_to_mlflow: bool = True, tune_key: str | None = None,
            heatmap_keys: tuple[str, str] | list[str] | None = None, measure: str | None = None,
            linear_baseline: bool = True) -> Analysis:
    """Analyze one sweep (the latest when `sweep` is None; every run with "all").

    `tune_key` (a param such as optimizer.lr): per group of the other group keys, the value with the
    best mean validation accuracy (grid.tune); the main table then has one row per value too.
    `heatmap_keys` (two params): `measure` (default: test accuracy at best validation, or final test
    accuracy for runs without validation) per cell of the two, one panel per value of the other group
    keys (grid.heatmap).

    Every table groups by `group_by` (with `tune_key` and `heatmap_keys`) and by every other param in
    which runs of one group differ (groups.differing_keys), the seed aside: it never averages two configs.

    Writes the tables and plots to `out` (default analysis/<experiment>/<sweep id>, never results/) and,
    with `log_to_mlflow`, the same files to the sweep's parent run; if the store refuses it (read-only,
    unreachable), the result says why in `log_error`. Raises NoRuns when there is nothing to analyze, UnknownGroupKey (a
    ValueError) for a key the runs do not have, NoValidation (a ValueError) for a selection on
    validation accuracy of runs without a validation split, OutUnusable for an `out` that is a file or
    cannot be written; nothing is written then. Files an earlier analysis left in `out` that this one
    does not write are removed (`removed`)."""
    data = load_sweep(uri, experiment, sweep)
    out = Path(out) if out is not None else Path("analysis") / _file_part(data.experiment) / data.sweep
    check_out(out)
    axes = tuple(heatmap_keys) if heatmap_keys else ()
    asked = list(dict.fromkeys([*group_by, *([tune_key] if tune_key else []), *axes]))
    differing = differing_keys(data.runs, asked)
    keys = [*asked, *differing]  # a row of any table is one config (over seeds)
    runs, summary, grad_table, vitals, layers = _tables(data, keys, baseline, loss_threshold)
    kinds = [k for k in KINDS if (vitals.kind == k).any()]
    title = (f"**Sweep `{data.sweep}`** of experiment `{data.experiment}`: {len(runs)} runs in {len(summary)} groups"
             + (f", grouped also by {', '.join(differing)} (runs of one group differed in them)" if differing else ""))
    superseded = [f"{r.run_name} ({r.status})" for r in data.superseded.itertuples()]
    table = markdown_table(summary, keys, baseline, loss_threshold, title, superseded)
    if linear_baseline and (note := linear_note(data.runs, Path(os.environ.get(DATA_DIR_ENV, DEFAULT_DATA_DIR)))):
        table += "\n" + note + "\n"
    sections = [table,
                vitals_markdown(summary, keys, kinds, without_vitals(runs, layers))]
    extra, grids = ({"vitals.csv": vitals} if len(vitals) else {}), []
    result = Analysis(data, runs, summary, grad_table, vitals, "", overview_markdown(summary, keys, title))
    for part in (_tune_part(result, keys, tune_key, baseline) if tune_key else None,
                 _heatmap_part(result, keys, axes, measure) if axes else None):
        if part:
            sections.append(part.markdown)
            extra.update(part.tables)
            grids.append(part.grid)
    result.markdown = "\n".join(sections)
    curves = data.curves[data.curves.key.isin(HISTORY_KEYS)]
    result.files = write_outputs(out, runs, summary, curves, grad_table, result.markdown, keys, extra)
    result.files += _plots(out, result, curves, keys, kinds, grids)
    result.removed = remove_stale(out, result.files)
    if log_to_mlflow:
        options = {"group_by": ",".join(keys), "baseline": str(baseline), "loss_threshold": str(loss_threshold),
                   "runs": str(len(runs)), **({"tune": tune_key} if tune_key else {}),
                   **({"heatmap": ",".join(axes), "measure": result.measure} if axes else {})}
        _log_to_sweep_run(result, options)
    return result


def _log_to_sweep_run(result: Analysis, options: dict[str, str]) -> None:
    """Log the analysis' files, summary and `options` (as tags) to its sweep's parent run: result.sweep_run_id,
    or, where the store refuses (read-only, unreachable), why in result.log_error."""
    data = result.sweep
    try:
        result.sweep_run_id = log_to_sweep_run(data.uri, data.experiment, data.sweep, result.files, result.summary,
                                               options, result.overview)
    except (MlflowException, OSError) as err:  # the store's errors, artifact writes, connections
        result.log_error = root_cause(err)


def _tables(data: SweepRuns, keys: list[str], baseline: str | None, loss_threshold: float):
    """(runs, summary, gradient norms, layer vitals per group, layer vitals per run) of the sweep."""
    runs = per_run(data, keys, loss_threshold)
    report_of = functools.cache(lambda run_id: parameter_order(data.uri, run_id))  # one download per run
    grads = first_epoch_grad_norms(data, report_of)
    layers = layer_vitals(data, report_of)
    runs = runs.merge(run_vitals(data, layers), on="run_id", how="left")
    summary = summarize(runs, grads, keys, baseline).merge(group_vitals(runs, keys), on=keys, how="left")
    return runs, summary, group_grad_norms(runs, grads, keys), group_layer_vitals(runs, layers, keys), layers


@dataclass
class _Part:
    """An optional section of the analysis (--tune, --heatmap): its markdown, CSVs and its grid's plot_heatmap
    arguments after the grid itself (panels, rows, columns, value, n, file name, caption, percent, marked)."""

    markdown: str
    tables: dict[str, pd.DataFrame]
    grid: tuple


def _tune_part(result: Analysis, keys: list[str], tune_key: str, baseline: str | None) -> _Part:
    groups = [k for k in keys if k != tune_key]
    result.tune, result.tune_grid, left_out = tune(result.runs, groups, tune_key, baseline)
    varying = [k for k in groups if result.tune_grid[k].astype(str).nunique() > 1] or groups[-1:]
    label = (result.tune_grid[varying].astype(str).agg(" ".join, axis=1) if varying
             else pd.Series("all", index=result.tune_grid.index))
    row = " ".join(varying) or "group"  # the label's column: two varying keys (init, depth) name one row each
    caption = f"mean best validation accuracy % per {tune_key}; n runs per cell; ★ the chosen value"
    return _Part(tune_markdown(result.tune, groups, tune_key, baseline, left_out),
                 {"tune.csv": result.tune, "tune_grid.csv": result.tune_grid},
                 (result.tune_grid.assign(**{row: label}), [], row, tune_key, f"{VAL}_mean", f"{VAL}_n", "tune.png",
                  caption, True, "chosen"))


def _heatmap_part(result: Analysis, keys: list[str], axes: tuple[str, str], measure: str | None) -> _Part:
    panel_keys = [k for k in keys if k not in axes]
    result.heatmap, result.measure, panels = heatmap(result.runs, panel_keys, axes, measure)
    name = f"heatmap_{_file_part(axes[0])}_{_file_part(axes[1])}"
    caption = f"{HEATMAP_MEASURES[result.measure]} per {axes[0]} and {axes[1]}, over seeds; n runs per cell"
    return _Part(heatmap_markdown(result.heatmap, panels, axes, result.measure, f"{name}.csv, {name}.png"),
                 {f"{name}.csv": result.heatmap},
                 (result.heatmap, panels, axes[0], axes[1], "value", "n", f"{name}.png", caption,
                  result.measure in PERCENT, None))


def _plots(out: Path, result: Analysis, curves: pd.DataFrame, keys: list[str], kinds: list[str],
           grids: list[tuple]) -> list[Path]:
    """The PNGs: curves, gradient norms, the vitals per kind, the --tune and --heatmap grids."""
    runs, vitals = result.runs, result.vitals
    files = [plot_curves(runs, curves, keys, "train/loss", out / "train_loss.png"),
             plot_curves(runs, curves, keys, "test/acc", out / "test_acc.png", per_epoch=True)]
    if (curves.key == "val/acc").any():
        files.append(plot_curves(runs, curves, keys, "val/acc", out / "val_acc.png", per_epoch=True))
    files.append(plot_grad_norms(result.grad_norms, keys, out / "grad_norms.png"))
    for kind in kinds:
        label, log = VITALS_LABELS[kind]
        files.append(plot_layer_vitals(vitals[vitals.kind == kind], keys, out / f"{kind}.png", label, log))
    for grid, panels, rows, columns, value, n, name, caption, percent, marked in grids:
        files.append(plot_heatmap(grid, panels, rows, columns, value, n, out / name, caption, percent, marked))
    return files
