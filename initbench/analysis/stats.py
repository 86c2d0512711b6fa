"""Per-run measures from the metric histories, then per-group statistics over seeds.

Which runs are averaged: those that neither diverged nor failed. Finished runs, and runs that never
ended (killed half-way, or still running) with what they logged; the latter are flagged. Diverged and
failed runs are counted in their own columns and left out of every mean, std, CI and test.

Selection is on the validation split, never on test: a run's `test_acc_at_best_val` is its test
accuracy at the epoch of its best validation accuracy, and groups are ranked by mean best validation
accuracy. Runs without a validation split (logged before initbench had one, or dataset.val_size=0)
have only `final_test_acc`, which selects nothing.

Statistics come from scipy: BCa bootstrap CIs (stats.bootstrap), Welch's t-test, the Mann-Whitney U
for P(X > Y); Holm's correction and Hedges' g are a few lines each here.
"""

import math
import re
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

from ..selection import best_index, first_at_or_below
from .load import GRAD_PREFIXES, HISTORY_KEYS, VAL_KEYS, SweepRuns

COUNTED_ONLY = ("diverged", "failed", "killed")  # statuses that are counted, never averaged in
SELECTED, VAL, FINAL = "test_acc_at_best_val", "best_val_acc", "final_test_acc"
MEASURES = (SELECTED, VAL, FINAL, "final_train_loss")  # per group: mean, std, n and CI of each
CI_LEVEL, RESAMPLES, CI_SEED = 0.95, 10_000, 0


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
    """MLflow params are strings: numbers become numbers where every value is one ('null' stays text);
    integers where every value is a whole number that int64 holds exactly (so 1e308 stays a float)."""
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().sum() == values.notna().sum():
        given = numbers.dropna()
        whole = (given == given.round()).all() and (given.abs() < 2**53).all()
        return numbers.astype("Int64") if whole else numbers
    return values


def steps_to_reach(losses: pd.DataFrame, threshold: float) -> float:
    """The first step whose training (batch) loss is <= threshold; inf if none is; NaN if no losses."""
    if losses.empty:
        return math.nan
    hit = first_at_or_below(losses.value.tolist(), threshold)
    return math.inf if hit is None else float(losses.step.iloc[hit])


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
        has_val = any((run_id, k) in curves for k in VAL_KEYS)
        best_epoch, best_val, at_best = selected_on_val(curves.get((run_id, "val/acc"), empty), acc)
        rows.append({
            "epochs": len(acc),
            "has_val": has_val,
            "best_val_epoch": best_epoch,
            VAL: best_val,
            SELECTED: at_best,
            FINAL: float(acc.value.iloc[-1]) if len(acc) else math.nan,
            "final_train_loss": last_epoch_mean(loss, len(acc)),
            "steps_to_loss": steps_to_reach(loss, loss_threshold),
            # val/* are expected of the runs that have a validation split only
            "missing": [k for k in HISTORY_KEYS if (run_id, k) not in curves and (has_val or k not in VAL_KEYS)],
            "epochs_planned": epochs_planned,
        })
    out = pd.concat([out, pd.DataFrame(rows, index=out.index)], axis=1)
    out["flag"] = [_flag(r) for r in out.itertuples()]
    error = runs.get("tags.initbench.error", pd.Series(None, index=runs.index))
    out["error"] = error.map(lambda e: e.strip().splitlines()[-1] if isinstance(e, str) and e.strip() else "")
    return out.drop(columns="missing").sort_values([*group_keys, "seed"], ignore_index=True)


def selected_on_val(val: pd.DataFrame, test: pd.DataFrame) -> tuple[float, float, float]:
    """(epoch, validation accuracy, test accuracy) at the run's best validation accuracy, the first
    epoch that reaches it; NaN where the run has no validation accuracy (or no test accuracy then)."""
    i = best_index(val.value.astype(float).tolist())  # the history is sorted by step
    if i is None:
        return math.nan, math.nan, math.nan
    best = val.iloc[i]
    at = test.loc[test.step == best.step, "value"]
    return float(best.step), float(best.value), float(at.iloc[0]) if len(at) else math.nan


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
    that names them all (init_report.csv missing), the model order is unknown: `order_known` is False,
    `position` is natural name order (for plots only) and a layer weight is a name ending in weight*."""
    grads = sweep.curves[sweep.curves.key.str.startswith(GRAD_PREFIXES)]
    table = grads.groupby(["run_id", "key"], as_index=False).value.mean()
    table.insert(1, "param", table.key.str.replace(f"^(?:{'|'.join(GRAD_PREFIXES)})", "", regex=True))
    table = table.drop(columns="key").rename(columns={"value": "grad_norm"})
    table["position"], table["is_layer"] = pd.Series(dtype="Int64"), pd.Series(dtype="boolean")
    table["order_known"] = False
    architectures = table.groupby("run_id").param.agg(frozenset)
    for names, run_ids in architectures.groupby(architectures).groups.items():
        report = report_of(run_ids[0])
        if report is not None and names <= set(report.param):
            report = report[report.param.isin(names)]
            order = list(report.param)
            weight = dict(zip(order, report["shape"].astype(str).str.contains("x"), strict=True))
            table.loc[table.run_id.isin(run_ids), "order_known"] = True
        else:
            order = sorted(names, key=_natural)
            weight = {n: n.rsplit(".", 1)[-1].startswith("weight") for n in names}
        rows = table.run_id.isin(run_ids)
        table.loc[rows, "position"] = table.loc[rows, "param"].map({n: i for i, n in enumerate(order)})
        table.loc[rows, "is_layer"] = table.loc[rows, "param"].map(weight)
    return table.sort_values(["run_id", "position"], ignore_index=True)


def _finite(values) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    return x[np.isfinite(x)]


class CI(NamedTuple):
    """A confidence interval of the mean and how it was made: "BCa"; "percentile" where BCa is
    degenerate; "equal" where all values are equal (the CI is that value); "" under 2 values (NaN)."""

    low: float
    high: float
    method: str


def bootstrap_ci(values, level: float = CI_LEVEL, resamples: int = RESAMPLES, seed: int = CI_SEED) -> CI:
    """The bias-corrected and accelerated (BCa) bootstrap CI of the mean, scipy.stats.bootstrap with a
    fixed seed (the same values give the same CI). All values equal: BCa is undefined (its bias and
    acceleration divide by 0) and every resample has that mean, so the CI is that value ("equal"); any
    other case where BCa gives no finite interval falls back to the percentile bootstrap. Under 2
    values: (nan, nan), one seed says nothing of spread. The values are sorted first: the resamples
    depend on their order, and the CI should depend on the values alone, not on how the runs were listed."""
    x = np.sort(_finite(values))
    if len(x) < 2:
        return CI(math.nan, math.nan, "")
    if np.ptp(x) == 0:
        return CI(float(x[0]), float(x[0]), "equal")
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():  # scipy's DegenerateDataWarning: the fallback handles it
            warnings.simplefilter("ignore")
            low, high = stats.bootstrap((x,), np.mean, n_resamples=resamples, confidence_level=level,
                                        method=method, rng=np.random.default_rng(seed)).confidence_interval
        if np.isfinite(low) and np.isfinite(high):
            return CI(float(low), float(high), method)
    return CI(math.nan, math.nan, "")


def welch_p(a, b) -> float:
    """Two-sided Welch t-test p-value; NaN under 2 values a side or with no variance at all."""
    a, b = _finite(a), _finite(b)
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error) over the finite ones, in their order;
    NaN stays NaN and does not count as a comparison. The i-th smallest of m is multiplied by
    m - i + 1, then made non-decreasing in that order and capped at 1 (as R's p.adjust "holm")."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = len(finite)
    if m:
        order = finite[np.argsort(p[finite], kind="stable")]
        out[order] = np.minimum(np.maximum.accumulate((m - np.arange(m)) * p[order]), 1.0)
    return out


def prob_superiority(x, y) -> float:
    """P(X > Y) + 0.5 P(X = Y) for one value of each drawn at random (a random pair of seeds): the
    Mann-Whitney U of x over its n_x * n_y pairs with y, as rliable's "probability of improvement".
    0.5: no difference; 1: every x beats every y. NaN when a side is empty."""
    x, y = _finite(x), _finite(y)
    if not len(x) or not len(y):
        return math.nan
    with warnings.catch_warnings():  # all values tied: U is defined, its p-value (unused) is not
        warnings.simplefilter("ignore", RuntimeWarning)
        u = stats.mannwhitneyu(x, y, method="asymptotic").statistic
    return float(u) / (len(x) * len(y))


def effect_size(x, y) -> tuple[float, float]:
    """(Cohen's d, Hedges' g) of x over y: the difference of means over the pooled std (ddof 1 each
    side), and d times Hedges' small-sample correction 1 - 3 / (4 (n_x + n_y) - 9). NaN under 2
    values a side or when the pooled std is 0 (no spread to measure the difference in)."""
    x, y = _finite(x), _finite(y)
    nx, ny = len(x), len(y)
    if nx < 2 or ny < 2:
        return math.nan, math.nan
    pooled = math.sqrt(((nx - 1) * x.var(ddof=1) + (ny - 1) * y.var(ddof=1)) / (nx + ny - 2))
    if pooled == 0:
        return math.nan, math.nan
    d = (x.mean() - y.mean()) / pooled
    return float(d), float(d * (1 - 3 / (4 * (nx + ny) - 9)))


COMPARISON = ("n_baseline", "delta_vs_baseline", "p_superior", "cohens_d", "hedges_g", "p_welch", "p_holm")


def compare(x, y) -> dict[str, float]:
    """x against the baseline's y: Δ of means, P(X > Y), Cohen's d and Hedges' g, Welch's p (p_holm
    is filled in over the whole table by compare_to_baseline)."""
    x, y = _finite(x), _finite(y)
    d, g = effect_size(x, y)
    delta = x.mean() - y.mean() if len(x) and len(y) else math.nan
    return {"n_baseline": len(y), "delta_vs_baseline": delta, "p_superior": prob_superiority(x, y),
            "cohens_d": d, "hedges_g": g, "p_welch": welch_p(x, y), "p_holm": math.nan}


def compare_to_baseline(table: pd.DataFrame, values: list[np.ndarray], keys: list[str], baseline: str | None,
                        init_key: str = "init") -> pd.DataFrame:
    """`table` (one row per group, `values[i]` the per-run values of row i) with the COMPARISON columns:
    each group against the group with init=`baseline` and the same other keys; p_holm is Welch's p
    Holm-corrected over every comparison of the table that has one."""
    table = table.copy()
    for column in COMPARISON:
        table[column] = math.nan
    if baseline is None or init_key not in keys or table.empty:
        return table
    others = [k for k in keys if k != init_key]
    is_base = table[init_key].astype(str) == str(baseline)
    def same(i) -> tuple[str, ...]:  # as text: NaN keys (a param some runs lack) match too
        return tuple(str(v) for v in table.loc[i, others])

    bases = {same(i): i for i in table.index[is_base]}
    for i in table.index[~is_base]:
        base = bases.get(same(i))
        if base is not None:
            for column, value in compare(values[table.index.get_loc(i)], values[table.index.get_loc(base)]).items():
                table.loc[i, column] = value
    table["p_holm"] = holm(table.p_welch)
    return table


def headline(runs: pd.DataFrame) -> str:
    """The accuracy a table reports and tests: test accuracy at best validation accuracy where the
    averaged runs have a validation split, else (runs without one) final test accuracy."""
    used = runs[~runs.status.isin(COUNTED_ONLY)]
    return SELECTED if used[VAL].notna().any() else FINAL


def describe(values) -> dict[str, float]:
    """mean, std (ddof 1), n and the BCa CI of the finite values."""
    x = _finite(values)
    ci = bootstrap_ci(x)
    return {"mean": x.mean() if len(x) else math.nan, "std": x.std(ddof=1) if len(x) > 1 else math.nan,
            "n": len(x), "ci_low": ci.low, "ci_high": ci.high, "ci_method": ci.method}


def summarize(runs: pd.DataFrame, grads: pd.DataFrame, group_keys: list[str], baseline: str | None,
              init_key: str = "init") -> pd.DataFrame:
    """One row per group, ranked (best first) by mean best validation accuracy; groups whose runs have
    no validation split after those that have one, by mean final test accuracy; groups with no usable
    run last. The test set never ranks where there is a validation split (`ranked_by` says which).

    Columns: the group keys; n_seeds, n_runs, n_used, n_diverged, n_failed, n_killed, n_incomplete; for each of
    MEASURES its mean, std (ddof 1), n, ci_low, ci_high and ci_method over the used runs; the
    interquartile means of test_acc_at_best_val and final_test_acc; steps_to_loss_median (inf:
    never) and n_reached_loss; grad_norm_first, grad_norm_last (first and last layer weight, mean over
    steps and seeds) and grad_norm_ratio; `compared_on` (the headline measure, see headline()) and the
    COMPARISON columns against the `baseline` init of the same other keys; notes (flagged runs)."""
    used = runs[~runs.status.isin(COUNTED_ONLY)]
    measure = headline(runs)
    layer_grads = grads[grads.is_layer.fillna(False).astype(bool) & grads.run_id.isin(used.run_id)]
    rows, values = [], []
    for key, group in runs.groupby(group_keys, sort=True, dropna=False):
        ok = group[~group.status.isin(COUNTED_ONLY)]
        row = dict(zip(group_keys, key if isinstance(key, tuple) else (key,), strict=True))
        row.update(n_seeds=group.seed.nunique(), n_runs=len(group), n_used=len(ok),
                   n_diverged=int((group.status == "diverged").sum()),
                   n_failed=int((group.status == "failed").sum()),
                   n_killed=int((group.status == "killed").sum()),
                   n_incomplete=int(ok.flag.ne("").sum()))
        for name in MEASURES:
            row.update({f"{name}_{stat}": v for stat, v in describe(ok[name]).items()})
        for name in (SELECTED, FINAL):
            x = _finite(ok[name])
            row[f"{name}_iqm"] = stats.trim_mean(x, 0.25) if len(x) else math.nan
        steps = ok.steps_to_loss.dropna()
        row["steps_to_loss_median"] = float(np.median(steps)) if len(steps) else math.nan
        row["n_reached_loss"] = int(np.isfinite(steps).sum())
        own = layer_grads[layer_grads.run_id.isin(ok.run_id)]
        unordered = own.loc[~own.order_known, "run_id"].nunique()
        per_layer = own.groupby("position").grad_norm.mean()
        first, last = (per_layer.iloc[0], per_layer.iloc[-1]) if len(per_layer) and not unordered else (math.nan,) * 2
        row.update(grad_norm_first=first, grad_norm_last=last,
                   grad_norm_ratio=first / last if last else math.nan)
        seeds = group.seed.value_counts()
        repeated = ", ".join(f"seed {s} x{n}" for s, n in seeds[seeds > 1].items())
        notes = [f"{r.run_name}: {r.flag}" for r in ok.itertuples() if r.flag]
        if unordered:  # first and last layer need the model's order, which only init_report.csv gives
            notes.append(f"grad norm first/last not computed: {unordered} run(s) have no init_report.csv "
                         "artifact, so the layer order is unknown")
        row["notes"] = "; ".join(notes + ([f"repeated {repeated}"] if repeated else []))
        row["ranked_by"] = VAL if row[f"{VAL}_n"] else FINAL if row[f"{FINAL}_n"] else ""
        row["compared_on"] = measure
        rows.append(row)
        values.append(_finite(ok[measure]))
    table = compare_to_baseline(pd.DataFrame(rows), values, group_keys, baseline, init_key)
    return rank(table)


def rank(table: pd.DataFrame, val: str = f"{VAL}_mean", fallback: str = f"{FINAL}_mean") -> pd.DataFrame:
    """Best first: the rows with a validation score by it, then the others by `fallback`, then rows
    with neither. Never by a test-set maximum."""
    has_val = table[val].notna()
    score = table[val].where(has_val, table[fallback])
    order = pd.DataFrame({"tier": np.where(has_val, 0, np.where(score.notna(), 1, 2)), "score": -score})
    return table.loc[order.sort_values(["tier", "score"], kind="stable").index].reset_index(drop=True)


def group_grad_norms(runs: pd.DataFrame, grads: pd.DataFrame, group_keys: list[str]) -> pd.DataFrame:
    """Per group and parameter: first-epoch gradient norm mean and std over the used runs, and n."""
    used = runs.loc[~runs.status.isin(COUNTED_ONLY), ["run_id", *group_keys]]
    merged = grads.merge(used, on="run_id")
    return (merged.groupby([*group_keys, "position", "param", "is_layer"], dropna=False)
            .grad_norm.agg(["mean", "std", "size"]).rename(columns={"size": "n"}).reset_index())
