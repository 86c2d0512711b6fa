"""The summary as a GitHub-flavoured markdown table, the files of results/, and the sweep's parent run."""

import logging
import math
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from mlflow.entities import RunTag

from ..tracking import Tracker
from .stats import CI_LEVEL, RESAMPLES

MAX_NOTE = 5000  # characters of the table kept as the parent run's description (a tag value)


def _pct(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "—"
    return f"{100 * mean:.2f}" + ("" if pd.isna(std) else f" ± {100 * std:.2f}")


def _loss(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "—"
    return f"{mean:.4g}" + ("" if pd.isna(std) else f" ± {std:.2g}")


def _ci(low: float, high: float) -> str:
    return "—" if pd.isna(low) else f"[{100 * low:.2f}, {100 * high:.2f}]"


def _steps(median: float, reached: int, used: int) -> str:
    if used == 0 or pd.isna(median):
        return "—"
    return f"{'never' if math.isinf(median) else f'{median:.0f}'} ({reached}/{used})"


def _number(value: float, spec: str) -> str:
    return "—" if pd.isna(value) else format(value, spec)


def markdown_table(summary: pd.DataFrame, group_keys: list[str], baseline: str | None,
                   loss_threshold: float, title: str, superseded: list[str] = (), init_key: str = "init") -> str:
    """The ranked table with a caption (keys that are the same for every group) and footnotes;
    `superseded` names runs left out because their config was run again."""
    varying = [k for k in group_keys if summary[k].astype(str).nunique() > 1] or group_keys[-1:]
    same = {k: summary[k].iloc[0] for k in group_keys if k not in varying}
    has_p = summary.p_welch.notna().any()
    counts = ["diverged", "failed"] + (["killed"] if summary.n_killed.any() else [])
    header = ["#", *varying, "n", *counts, "final test acc %", f"{CI_LEVEL:.0%} CI",
              "best test acc %", "final train loss", f"steps to loss ≤ {loss_threshold:g}",
              "grad norm first/last"]
    if has_p:
        header += [f"Δ acc vs {baseline} (pp)", "p (Welch)"]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("--:" if h in ("#", "n", *counts) else "---" for h in header) + "|"]
    for rank, (_, row) in enumerate(summary.iterrows(), start=1):
        mark = " †" if row.n_incomplete else ""
        cells = [str(rank), *(str(row[k]) for k in varying), str(row.n_runs),
                 *(str(row[f"n_{c}"]) for c in counts),
                 _pct(row.final_test_acc_mean, row.final_test_acc_std) + mark,
                 _ci(row.final_test_acc_ci_low, row.final_test_acc_ci_high),
                 _pct(row.best_test_acc_mean, row.best_test_acc_std),
                 _loss(row.final_train_loss_mean, row.final_train_loss_std),
                 _steps(row.steps_to_loss_median, row.n_reached_loss, row.n_used),
                 _number(row.grad_norm_ratio, ".3g")]
        if has_p:
            cells += [_number(100 * row.delta_vs_baseline, "+.2f"), _number(row.p_welch, ".3g")]
        lines.append("| " + " | ".join(cells) + " |")
    caption = title + (" (" + ", ".join(f"{k}={v}" for k, v in same.items()) + ")" if same else "")
    notes = [
        f"Ranked by mean final test accuracy. n: runs (seeds) in the group. Mean ± std (ddof 1) and "
        f"{CI_LEVEL:.0%} CI (percentile bootstrap of the mean, {RESAMPLES:,} resamples) are over the "
        "runs that neither diverged, failed nor were killed (Ctrl-C, SIGTERM, a dead process): **those "
        "are counted, not averaged in**.",
        "final train loss: mean batch loss of the last epoch. steps to loss ≤ X: median first step "
        "whose batch loss ≤ X, with how many runs reached it (never: fewer than half did).",
        "grad norm first/last: first-epoch gradient norm of the first layer's weight over the last "
        "layer's (each the mean over the epoch's steps and the seeds); ≪ 1: gradients vanish toward "
        "the input, ≫ 1: they explode.",
    ]
    inits = summary[init_key].astype(str) if init_key in group_keys else pd.Series(dtype=str)
    if baseline is not None and len(inits) and baseline not in set(inits):
        notes.append(f"No test against a baseline: no group has {init_key}={baseline}; pass --baseline with "
                     f"one of {', '.join(sorted(set(inits)))}, or none.")
    if has_p:
        notes.append(f"Δ and p: final test accuracy against init={baseline} with the same other keys "
                     "(Welch's t-test, two-sided).")
    flagged = summary.loc[summary.notes.astype(bool), "notes"]
    if len(flagged):
        notes.append("† includes runs with missing metrics, averaged with what they logged: "
                     + "; ".join(flagged))
    if superseded:
        notes.append(f"Left out: {len(superseded)} earlier run(s) of a config that was run again in this "
                     "selection (a resumed or re-run job; the later run counts): " + ", ".join(superseded))
    return "\n\n".join([caption, "\n".join(lines), *notes]) + "\n"  # notes: one paragraph each


def write_outputs(out: Path, runs: pd.DataFrame, summary: pd.DataFrame, curves: pd.DataFrame,
                  grad_table: pd.DataFrame, markdown: str, group_keys: list[str]) -> list[Path]:
    """summary.md, summary.csv, runs.csv (one row per run), curves.csv (the train/test histories, one
    row per point, with the run's keys and status) and grad_norms.csv (per group and parameter)."""
    out.mkdir(parents=True, exist_ok=True)
    who = runs[["run_id", *group_keys, "seed", "status"]]  # runs.csv has the rest
    files = {"summary.csv": summary, "runs.csv": runs, "curves.csv": who.merge(curves, on="run_id"),
             "grad_norms.csv": grad_table}
    for name, frame in files.items():  # histories to 6 digits: the float32 they were trained in has 7
        frame.to_csv(out / name, index=False, float_format="%.6g" if name == "curves.csv" else None)
    (out / "summary.md").write_text(markdown)
    return [out / name for name in ("summary.md", *files)]


@contextmanager
def mlflow_store_quiet():
    """Within: MLflow's store does not log its errors (with their tracebacks) before raising them."""
    logger = logging.getLogger("mlflow.store")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


@mlflow_store_quiet()
def log_to_sweep_run(uri: str, experiment: str, sweep: str, files: list[Path], summary: pd.DataFrame,
                     options: dict[str, str], markdown: str) -> str:
    """Log the analysis to the sweep's parent run (made now, and ended, for runs that have none:
    single runs, `--sweep all`, sweeps before parent runs): the files as artifacts under analysis/,
    `summary` also as an MLflow table (analysis/summary.json), the ranked table as the run's
    description, the options as tags initbench.analysis.*. Analysis never counts a parent run as a
    job. An error of the store is raised, not logged: the caller says in one line what it was (see
    root_cause); a parent made here is then ended FAILED, never left RUNNING."""
    tracker = Tracker(uri, experiment)
    found = tracker.find_sweep_run(sweep)
    run_id = found.info.run_id if found else tracker.sweep_run(sweep)
    tags = {"mlflow.note.content": markdown[:MAX_NOTE],
            **{f"initbench.analysis.{k}": v for k, v in options.items()}}
    try:
        tracker.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        for path in files:
            tracker.client.log_artifact(run_id, str(path), "analysis")
        table = summary.replace([math.inf, -math.inf], math.nan).astype(object)
        tracker.client.log_table(run_id, table.where(table.notna(), None), "analysis/summary.json")
    except Exception:
        if found is None:
            tracker.client.set_terminated(run_id, "FAILED")
        raise
    if found is None:
        tracker.client.set_terminated(run_id, "FINISHED")
    return run_id


def root_cause(err: BaseException) -> str:
    """The type and first line of the error that started a chain: MLflow wraps SQLAlchemy's
    OperationalError, which wraps sqlite3's "attempt to write a readonly database"."""
    while err.__cause__ is not None:
        err = err.__cause__
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
