"""Per-run measures from the metric histories, then per-group statistics over seeds.

Which runs are averaged: those that neither diverged nor failed. Finished runs, and runs that never
ended (killed half-way, or still running) with what they logged; the latter are flagged. Diverged and
failed runs are counted in their own columns and left out of every mean, std, CI and test.
"""

import math
import re
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import stats

from .load import GRAD_PREFIXES, HISTORY_KEYS, SweepRuns

COUNTED_ONLY = ("diverged", "failed", "killed")  # statuses that are counted, never averaged in
MEASURES = ("final_test_acc", "best_test_acc", "final_train_loss")
CI_LEVEL, RESAMPLES = 0.95, 10_000


class UnknownGroupKey(ValueError):
    """A group-by key that no run has as a param: a bad argument, not a bug (the message lists the params)."""


def param_column(runs: pd.DataFrame, key: str) -> str:
    """The params column a group-by key names: `init` -> params.init.name; `optimizer.lr` as given."""
    for column in (f"params.{key}.name", f"params.{key}"):
        if column in runs.columns:
            return column
    known = sorted(c[7:] for c in runs.columns if c.startswith("params."))
    raise UnknownGroupKey(f"cannot group by {key!r}: the runs have no param {key}.name or {key}; "
                          f"their params: {', '.join(known)}")


def cast(values: pd.Series) -> pd.Series:
    """MLflow params are strings: numbers become numbers where every value is one ('null' stays text)."""
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().sum() == values.notna().sum():
        as_int = numbers.dropna()
        return numbers.astype("Int64") if (as_int == as_int.round()).all() else numbers
    return values


def steps_to_reach(losses: pd.DataFrame, threshold: float) -> float:
    """The first step whose training (batch) loss is <= threshold; inf if none is; NaN if no losses."""
    if losses.empty:
        return math.nan
    hit = losses.loc[losses.value <= threshold, "step"]
    return float(hit.iloc[0]) if len(hit) else math.inf


def last_epoch_mean(losses: pd.DataFrame, epochs: int) -> float:
    """Mean batch loss over the last logged epoch: the steps after (epochs - 1) / epochs of them (the
    loop logs whole epochs); the last value where no epoch count is known."""
    if losses.empty:
        return math.nan
    if epochs < 1:
        return float(losses.value.iloc[-1])
    last = losses.step.max()
    per_epoch = last / epochs
    return float(losses.loc[losses.step > last - per_epoch, "value"].mean())


def per_run(sweep: SweepRuns, group_keys: list[str], loss_threshold: float) -> pd.DataFrame:
    """One row per run: group keys and seed (cast), status, the run's measures and a `flag` saying
    what an included run lacks."""
    runs = sweep.runs
    out = pd.DataFrame({"run_id": runs.run_id, "run_name": runs.run_name})
    for key in group_keys:
        out[key] = cast(runs[param_column(runs, key)])
    out["seed"] = cast(runs["params.seed"]) if "params.seed" in runs else pd.NA
    out["status"] = runs.status
    planned = cast(runs.get("params.trainer.epochs", pd.Series(pd.NA, index=runs.index)))
    curves = {key: frame for key, frame in sweep.curves.groupby(["run_id", "key"])}
    empty = pd.DataFrame(columns=["step", "value"])
    rows = []
    for run_id, epochs_planned in zip(runs.run_id, planned, strict=True):
        acc = curves.get((run_id, "test/acc"), empty)
        loss = curves.get((run_id, "train/loss"), empty)
        rows.append({
            "epochs": len(acc),
            "final_test_acc": float(acc.value.iloc[-1]) if len(acc) else math.nan,
            "best_test_acc": float(acc.value.max()) if len(acc) else math.nan,
            "final_train_loss": last_epoch_mean(loss, len(acc)),
            "steps_to_loss": steps_to_reach(loss, loss_threshold),
            "missing": [k for k in HISTORY_KEYS if (run_id, k) not in curves],
            "epochs_planned": epochs_planned,
        })
    out = pd.concat([out, pd.DataFrame(rows, index=out.index)], axis=1)
    out["flag"] = [_flag(r) for r in out.itertuples()]
    error = runs.get("tags.initbench.error", pd.Series(None, index=runs.index))
    out["error"] = error.map(lambda e: e.strip().splitlines()[-1] if isinstance(e, str) and e.strip() else "")
    return out.drop(columns="missing").sort_values([*group_keys, "seed"], ignore_index=True)


def _flag(run) -> str:
    if run.status in COUNTED_ONLY:
        return ""
    notes = [] if run.status == "finished" else [f"{run.status} (never ended)"]
    if not pd.isna(run.epochs_planned) and run.epochs < run.epochs_planned:
        notes.append(f"{run.epochs}/{run.epochs_planned} epochs")
    if run.missing:
        notes.append("no " + ", ".join(run.missing))
    return "; ".join(notes)


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


ReportOf = Callable[[str], pd.DataFrame | None]  # run id -> its init report, or None


def first_epoch_grad_norms(sweep: SweepRuns, report_of: ReportOf = lambda run_id: None) -> pd.DataFrame:
    """Per run and parameter: the mean gradient norm over the first epoch's steps, the parameter's
    `position` in the model and whether it `is_layer` weight.

    Runs with the same parameter names share one architecture; `report_of(run_id)` gives one run's init
    report (columns param, shape, in model order): 2 or more dims make a layer weight. Without a report
    that names them all: natural name order, and a layer weight is a name ending in weight*."""
    grads = sweep.curves[sweep.curves.key.str.startswith(GRAD_PREFIXES)]
    table = grads.groupby(["run_id", "key"], as_index=False).value.mean()
    table.insert(1, "param", table.key.str.replace(f"^(?:{'|'.join(GRAD_PREFIXES)})", "", regex=True))
    table = table.drop(columns="key").rename(columns={"value": "grad_norm"})
    table["position"], table["is_layer"] = pd.Series(dtype="Int64"), pd.Series(dtype="boolean")
    architectures = table.groupby("run_id").param.agg(frozenset)
    for names, run_ids in architectures.groupby(architectures).groups.items():
        report = report_of(run_ids[0])
        if report is not None and names <= set(report.param):
            report = report[report.param.isin(names)]
            order = list(report.param)
            weight = dict(zip(order, report["shape"].astype(str).str.contains("x"), strict=True))
        else:
            order = sorted(names, key=_natural)
            weight = {n: n.rsplit(".", 1)[-1].startswith("weight") for n in names}
        rows = table.run_id.isin(run_ids)
        table.loc[rows, "position"] = table.loc[rows, "param"].map({n: i for i, n in enumerate(order)})
        table.loc[rows, "is_layer"] = table.loc[rows, "param"].map(weight)
    return table.sort_values(["run_id", "position"], ignore_index=True)


def bootstrap_ci(values, level: float = CI_LEVEL, resamples: int = RESAMPLES, seed: int = 0):
    """Percentile bootstrap CI of the mean; (nan, nan) under 2 values (one seed says nothing of spread)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return math.nan, math.nan
    means = x[np.random.default_rng(seed).integers(0, len(x), (resamples, len(x)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def welch_p(a, b) -> float:
    """Two-sided Welch t-test p-value; NaN under 2 values a side or with no variance at all."""
    a, b = (np.asarray(v, dtype=float) for v in (a, b))
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def summarize(runs: pd.DataFrame, grads: pd.DataFrame, group_keys: list[str], baseline: str | None,
              init_key: str = "init") -> pd.DataFrame:
    """One row per group, ranked by mean final test accuracy (best first, groups with no usable run last).

    Columns: the group keys; n_seeds, n_runs, n_used, n_diverged, n_failed, n_killed, n_incomplete; for each of
    MEASURES its mean, std (ddof 1), ci_low, ci_high over the used runs; final_test_acc_iqm;
    steps_to_loss_median (inf: never) and n_reached_loss; grad_norm_first, grad_norm_last (first and
    last layer weight, mean over steps and seeds) and grad_norm_ratio; delta_vs_baseline and p_welch
    (final test accuracy against the `baseline` init of the same other keys); notes (flagged runs)."""
    used = runs[~runs.status.isin(COUNTED_ONLY)]
    layer_grads = grads[grads.is_layer.fillna(False).astype(bool) & grads.run_id.isin(used.run_id)]
    rows = []
    for key, group in runs.groupby(group_keys, sort=True, dropna=False):
        ok = group[~group.status.isin(COUNTED_ONLY)]
        row = dict(zip(group_keys, key if isinstance(key, tuple) else (key,), strict=True))
        row.update(n_seeds=group.seed.nunique(), n_runs=len(group), n_used=len(ok),
                   n_diverged=int((group.status == "diverged").sum()),
                   n_failed=int((group.status == "failed").sum()),
                   n_killed=int((group.status == "killed").sum()),
                   n_incomplete=int(ok.flag.ne("").sum()))
        for measure in MEASURES:
            values = ok[measure].dropna()
            low, high = bootstrap_ci(values)
            row.update({f"{measure}_mean": values.mean(), f"{measure}_std": values.std(),
                        f"{measure}_ci_low": low, f"{measure}_ci_high": high})
        row["final_test_acc_iqm"] = stats.trim_mean(ok.final_test_acc.dropna(), 0.25) \
            if ok.final_test_acc.notna().any() else math.nan
        steps = ok.steps_to_loss.dropna()
        row["steps_to_loss_median"] = float(np.median(steps)) if len(steps) else math.nan
        row["n_reached_loss"] = int(np.isfinite(steps).sum())
        per_layer = layer_grads[layer_grads.run_id.isin(ok.run_id)].groupby("position").grad_norm.mean()
        first, last = (per_layer.iloc[0], per_layer.iloc[-1]) if len(per_layer) else (math.nan,) * 2
        row.update(grad_norm_first=first, grad_norm_last=last,
                   grad_norm_ratio=first / last if last else math.nan)
        seeds = group.seed.value_counts()
        repeated = ", ".join(f"seed {s} x{n}" for s, n in seeds[seeds > 1].items())
        notes = [f"{r.run_name}: {r.flag}" for r in ok.itertuples() if r.flag]
        row["notes"] = "; ".join(notes + ([f"repeated {repeated}"] if repeated else []))
        row["_acc"] = ok.final_test_acc.dropna().to_numpy()
        rows.append(row)
    table = pd.DataFrame(rows)
    table["delta_vs_baseline"], table["p_welch"] = math.nan, math.nan
    if baseline is not None and init_key in group_keys:
        others = [k for k in group_keys if k != init_key]
        is_base = table[init_key].astype(str) == str(baseline)
        bases = {tuple(row[others]): row for _, row in table[is_base].iterrows()}
        for i, row in table[~is_base].iterrows():
            base = bases.get(tuple(row[others]))
            if base is not None:
                table.loc[i, "delta_vs_baseline"] = row.final_test_acc_mean - base.final_test_acc_mean
                table.loc[i, "p_welch"] = welch_p(row._acc, base._acc)
    table = table.drop(columns="_acc")
    return table.sort_values("final_test_acc_mean", ascending=False, na_position="last", kind="stable",
                             ignore_index=True)


def group_grad_norms(runs: pd.DataFrame, grads: pd.DataFrame, group_keys: list[str]) -> pd.DataFrame:
    """Per group and parameter: first-epoch gradient norm mean and std over the used runs, and n."""
    used = runs.loc[~runs.status.isin(COUNTED_ONLY), ["run_id", *group_keys]]
    merged = grads.merge(used, on="run_id")
    return (merged.groupby([*group_keys, "position", "param", "is_layer"], dropna=False)
            .grad_norm.agg(["mean", "std", "size"]).rename(columns={"size": "n"}).reset_index())
