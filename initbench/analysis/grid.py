"""Grids over config values: `--tune KEY` picks KEY's value per group on validation accuracy;
`--heatmap KEY1,KEY2` averages a measure over seeds per (KEY1, KEY2) cell.

Both work on stats.per_run's table (one row per run, the keys as columns). Diverged, failed and killed
runs are counted per cell and left out of its mean, as everywhere in the analysis: a cell where every
run diverged is `diverged`, never an accuracy of 0.
"""

import math
import re

import numpy as np
import pandas as pd

from .stats import COUNTED_ONLY, FINAL, SELECTED, VAL, compare_to_baseline, describe, headline, rank

# --measure of --heatmap: the per-run column and its label. steps_to_loss is a median (a run that never
# reaches the loss counts as infinitely many steps), diverged a fraction of runs, the others means.
HEATMAP_MEASURES = {
    SELECTED: "test acc at best val %",
    FINAL: "final test acc %",
    VAL: "best val acc %",
    "final_train_loss": "final train loss",
    "steps_to_loss": "steps to loss (median)",
    "diverged": "fraction diverged %",
}
PERCENT = (SELECTED, FINAL, VAL, "diverged")


class NoValidation(ValueError):
    """A selection on validation accuracy was asked of runs that have no validation split."""


def ordered(values) -> list:
    """The distinct values, numbers in numeric order (1e-3 before 0.01 before 0.1), text in natural
    order (layer2 before layer10), a missing value last."""
    distinct = pd.unique(pd.Series(list(values), dtype=object))
    present = [v for v in distinct if not pd.isna(v)]
    missing = [v for v in distinct if pd.isna(v)][:1]
    numbers = pd.to_numeric(pd.Series(present, dtype=object), errors="coerce")
    if numbers.notna().all():
        return [present[i] for i in np.argsort(numbers.to_numpy(dtype=float), kind="stable")] + missing
    return sorted(present, key=lambda v: [(0, int(t), "") if t.isdigit() else (1, 0, t)
                                          for t in re.split(r"(\d+)", str(v))]) + missing


def _no_validation(runs: pd.DataFrame, what: str) -> NoValidation:
    return NoValidation(f"{what} selects on validation accuracy, but none of the {len(runs)} runs has a "
                        "validation split (no val/acc metric: runs logged before initbench had one, or "
                        "run with dataset.val_size=0). Run the sweep again with the current initbench "
                        "(dataset.val_size, 10% of the training set by default)")


def cell_stats(runs: pd.DataFrame, keys: list[str], measure: str) -> pd.DataFrame:
    """One row per combination of `keys`: n_runs, n_diverged, n_failed, n_killed; `n` runs averaged
    (used runs with a value of `measure`), `value` (their mean; the median for steps_to_loss; for
    "diverged" the fraction diverged of the runs that diverged or were averaged) and `std`; `state`:
    ok, diverged (no run averaged, some diverged), failed, or missing (no value)."""
    rows = []
    for key, cell in runs.groupby(keys, sort=False, dropna=False):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        ok = cell[~cell.status.isin(COUNTED_ONLY)]
        diverged = int((cell.status == "diverged").sum())
        row.update(n_runs=len(cell), n_diverged=diverged, n_failed=int((cell.status == "failed").sum()),
                   n_killed=int((cell.status == "killed").sum()))
        if measure == "diverged":
            n = diverged + len(ok)
            row.update(n=n, value=diverged / n if n else math.nan, std=math.nan)
        else:
            values = ok[measure].dropna().astype(float)
            middle = math.nan if values.empty else float(np.median(values)) if measure == "steps_to_loss" \
                else values.mean()
            row.update(n=len(values), value=middle, std=values.std() if len(values) > 1 else math.nan)
        row["state"] = ("ok" if row["n"] else "diverged" if diverged else
                        "failed" if row["n_failed"] else "missing")
        rows.append(row)
    return sort_cells(pd.DataFrame(rows), keys)


def sort_cells(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Rows in the order of `keys`' values (numbers numerically), the first key slowest."""
    if table.empty:
        return table
    position = pd.DataFrame({k: table[k].astype(str).map({str(v): i for i, v in enumerate(ordered(table[k]))})
                             for k in keys})
    return table.loc[position.sort_values(keys, kind="stable").index].reset_index(drop=True)


def heatmap(runs: pd.DataFrame, group_keys: list[str], axes: tuple[str, str], measure: str | None = None
            ) -> tuple[pd.DataFrame, str, list[str]]:
    """(grid, measure, panel keys): `measure` (default: headline(), test accuracy at best validation
    accuracy, or final test accuracy for runs without a validation split) per cell of axes[0] x axes[1],
    one panel per combination of the group keys that are not axes."""
    measure = measure or headline(runs)
    if measure not in HEATMAP_MEASURES:
        raise ValueError(f"unknown measure {measure!r}; valid: {', '.join(HEATMAP_MEASURES)}")
    if measure in (SELECTED, VAL) and not runs[VAL].notna().any():
        raise _no_validation(runs, f"--measure {measure}")
    panels = [k for k in group_keys if k not in axes]
    grid = cell_stats(runs, [*panels, *axes], measure)
    grid.insert(len(panels) + 2, "measure", measure)
    return grid, measure, panels


def _runs_of(runs: pd.DataFrame, cell, keys: list[str]) -> pd.DataFrame:
    """The averaged runs (neither diverged, failed nor killed) of grid `cell` (none for None)."""
    used = runs[~runs.status.isin(COUNTED_ONLY)]
    if cell is None:
        return used.iloc[:0]
    return used[np.logical_and.reduce([used[k].astype(str) == str(cell[k]) for k in keys])]


def tune(runs: pd.DataFrame, group_keys: list[str], key: str, baseline: str | None, init_key: str = "init"
         ) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(table, grid, runs left out): per group (the group keys without `key`), the value of `key` with
    the best mean best-validation-accuracy over seeds (equal means: the first value in numeric order).

    grid: per group and value, cell_stats of best_val_acc (value = mean val acc, n) with the mean
    test_acc_at_best_val, its n, `rank` among the group's values and `chosen`. table, one row per group
    ranked by the chosen value's mean val acc: n_values (values with a validation score), the chosen
    value (column `key`), its counts, best_val_acc_* and test_acc_at_best_val_* (mean, std, n, BCa CI),
    the runner-up value, its val mean and n, `gap` (chosen - runner-up val mean: how flat the optimum
    is), and the COMPARISON columns: test accuracy at best val of each group at its own chosen value
    against the baseline init's at its own. Runs without a validation split are left out (their
    number is returned); none with one raises NoValidation."""
    if not runs.loc[~runs.status.isin(COUNTED_ONLY), VAL].notna().any():
        raise _no_validation(runs, f"--tune {key}")
    without = runs[~runs.status.isin(COUNTED_ONLY) & runs[VAL].isna()]
    runs = runs.drop(without.index)
    groups = [k for k in group_keys if k != key]
    grid = cell_stats(runs, [*groups, key], VAL)
    tests = runs[~runs.status.isin(COUNTED_ONLY)].groupby([*groups, key], dropna=False)[SELECTED]
    test_of = {tuple(map(str, k if isinstance(k, tuple) else (k,))): v.dropna().to_numpy(dtype=float)
               for k, v in tests}

    def test_values(row) -> np.ndarray:
        return test_of.get(tuple(str(row[k]) for k in (*groups, key)), np.array([]))

    grid["test_mean"] = [v.mean() if len(v) else math.nan for v in map(test_values, grid.to_dict("records"))]
    grid["test_n"] = [len(test_values(r)) for r in grid.to_dict("records")]
    grid["rank"], grid["chosen"] = pd.array([pd.NA] * len(grid), dtype="Int64"), False
    rows, values = [], []
    for _, cells in (grid.groupby(groups, sort=False, dropna=False) if groups else [((), grid)]):
        scored = cells[cells.n > 0].sort_values("value", ascending=False, kind="stable")
        grid.loc[scored.index, "rank"] = range(1, len(scored) + 1)
        first = cells.iloc[0]
        row = {k: first[k] for k in groups}
        row["n_values"] = len(scored)
        best = scored.iloc[0] if len(scored) else None
        runner = scored.iloc[1] if len(scored) > 1 else None
        if best is not None:
            grid.loc[scored.index[0], "chosen"] = True
        chosen = best.to_dict() if best is not None else {}
        row[key] = chosen.get(key, math.nan)
        for count in ("n_runs", "n_diverged", "n_failed", "n_killed"):  # no value scored: the whole group's
            row[count] = chosen[count] if best is not None else int(cells[count].sum())
        picked = _runs_of(runs, best, [*groups, key])
        for name in (VAL, SELECTED):
            row.update({f"{name}_{stat}": v for stat, v in describe(picked[name]).items()})
        row["runner_up"] = runner[key] if runner is not None else math.nan
        row["runner_up_val_mean"] = runner.value if runner is not None else math.nan
        row["runner_up_n"] = runner.n if runner is not None else 0
        row["gap"] = best.value - runner.value if runner is not None else math.nan
        rows.append(row)
        values.append(picked[SELECTED].dropna().to_numpy(dtype=float))
    table = compare_to_baseline(pd.DataFrame(rows), values, groups, baseline, init_key)
    table["compared_on"] = SELECTED
    grid = grid.rename(columns={"n": f"{VAL}_n", "value": f"{VAL}_mean", "std": f"{VAL}_std",
                                "test_mean": f"{SELECTED}_mean", "test_n": f"{SELECTED}_n"})
    return rank(table, f"{VAL}_mean", f"{VAL}_mean"), grid, len(without)
