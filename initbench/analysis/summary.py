"""The summary as a GitHub-flavoured markdown table, the files of results/, and the sweep's parent run."""

import logging
import math
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from mlflow.entities import RunTag

from ..tracking import Tracker
from .grid import HEATMAP_MEASURES, PERCENT, ordered
from .stats import CI_LEVEL, CI_SEED, FINAL, RESAMPLES, SELECTED, VAL
from .vitals import RUN_MEASURES

MAX_NOTE = 5000  # characters of the table kept as the parent run's description (a tag value)
NO_VAL = ("no validation split (no val/* metrics: runs logged before initbench had one, or with "
          "dataset.val_size=0)")


def _pct(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "—"
    return f"{100 * mean:.2f}" + ("" if pd.isna(std) else f" ± {100 * std:.2f}")


def _n(n: int, of: int) -> str:
    """` (n=3)` where a number is over fewer runs than the group's averaged ones (some lack the metric)."""
    return f" (n={int(n)})" if 0 < n < of else ""


def _value(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "—"
    return f"{mean:.4g}" + ("" if pd.isna(std) else f" ± {std:.2g}")


def _ci(low: float, high: float, method: str = "BCa") -> str:
    if pd.isna(low):
        return "—"
    return f"[{100 * low:.2f}, {100 * high:.2f}]" + (" ‡" if method in ("percentile", "equal") else "")


def _steps(median: float, reached: int, used: int) -> str:
    if used == 0 or pd.isna(median):
        return "—"
    return f"{'never' if math.isinf(median) else f'{median:.0f}'} ({reached}/{used})"


def _number(value: float, spec: str) -> str:
    return "—" if pd.isna(value) else format(value, spec)


def _varying(table: pd.DataFrame, keys: list[str]) -> tuple[list[str], dict]:
    """The keys whose value differs between rows (the table's columns; the last key if none does) and
    the others with their one value (the caption's)."""
    varying = [k for k in keys if table[k].astype(str).nunique() > 1] or keys[-1:]
    return varying, {k: table[k].iloc[0] for k in keys if k not in varying}


def _caption(title: str, same: dict) -> str:
    return title + (" (" + ", ".join(f"{k}={v}" for k, v in same.items()) + ")" if same else "")


COMPARED = {SELECTED: "test accuracy at best val", FINAL: "final test accuracy"}
CI_NOTE = (f"{CI_LEVEL:.0%} CI: BCa bootstrap of the mean (scipy.stats.bootstrap, {RESAMPLES:,} resamples, "
           f"seed {CI_SEED}, so the same runs give the same CI)")


def _comparison_header(baseline: str | None) -> list[str]:
    return [f"Δ acc vs {baseline} (pp)", "P(X>Y)", "g", "p (Holm)"]


def _comparison_cells(row) -> list[str]:
    return [_number(100 * row.delta_vs_baseline, "+.2f"), _number(row.p_superior, ".2f"),
            _number(row.hedges_g, "+.2f"), _number(row.p_holm, ".3g")]


def _comparison_note(table: pd.DataFrame, baseline: str | None, where: str) -> str:
    m = int(table.p_welch.notna().sum())
    return (f"Δ, P(X>Y), g and p: {COMPARED[table.compared_on.iloc[0]]} against init={baseline} {where}, each "
            "over the n_x × n_y pairs of seeds of the two groups (their n). P(X>Y): the probability that "
            "the group's run beats the baseline's on a random pair of seeds, ties counting ½ (Mann-Whitney "
            "U / (n_x·n_y), as rliable reports; 0.5: no difference). g: Hedges' g, the difference of means "
            "over the pooled std, small-sample corrected (— where both groups have no spread). p: Welch's "
            f"t-test, two-sided, **Holm-corrected over {m} comparison{'s' if m != 1 else ''}** of this "
            "table (the raw p is p_welch in the CSV).")


def _ci_fallback_note(table: pd.DataFrame, column: str) -> list[str]:
    if not table[column].isin(["percentile", "equal"]).any():
        return []
    return ["‡ BCa is undefined for these values: where all are equal the CI is that value; otherwise it "
            "is the percentile bootstrap's."]


def _ranking_note(summary: pd.DataFrame, varying: list[str], lacking: pd.Series) -> str:
    """What ranks the table: best validation accuracy, final test accuracy for runs without validation, or both."""
    if not lacking.any():
        return ("**Ranked by mean best validation accuracy**: each run is read at the epoch of its best "
                "validation accuracy (the first such epoch), and the test set selects nothing. test acc "
                "at best val: the test accuracy at that epoch; final test acc: at the last epoch.")
    if not summary.ranked_by.eq(VAL).any():
        return (f"**Ranked by mean final test accuracy: these runs have {NO_VAL}**, so no epoch is "
                "selected (nothing is selected on the test set either). For test accuracy at best "
                "validation accuracy, run the sweep with a validation split (dataset.val_size > 0).")
    names = ", ".join(" ".join(str(r[k]) for k in varying) for _, r in summary[lacking].iterrows())
    return ("**Ranked by mean best validation accuracy** (each run read at the epoch of its best "
            "validation accuracy; the test set selects nothing). The groups whose runs have "
            f"{NO_VAL} come after them, ranked by mean final test accuracy: {names}.")


def markdown_table(summary: pd.DataFrame, group_keys: list[str], baseline: str | None,
                   loss_threshold: float, title: str, superseded: list[str] = (), init_key: str = "init") -> str:
    """The ranked table with a caption (keys that are the same for every group) and footnotes;
    `superseded` names runs left out because their config was run again."""
    varying, same = _varying(summary, group_keys)
    measure = summary.compared_on.iloc[0]
    lacking = summary.ranked_by.eq(FINAL)  # groups whose averaged runs have no validation split
    has_p = summary.delta_vs_baseline.notna().any()
    counts = ["diverged", "failed"] + (["killed"] if summary.n_killed.any() else [])
    accuracy = (["best val acc %", "test acc at best val %", f"{CI_LEVEL:.0%} CI", "final test acc %"]
                if measure == SELECTED else ["final test acc %", f"{CI_LEVEL:.0%} CI"])
    header = ["#", *varying, "n", *counts, *accuracy, "final train loss", f"steps to loss ≤ {loss_threshold:g}",
              "grad norm first/last"] + (_comparison_header(baseline) if has_p else [])
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("--:" if h in ("#", "n", *counts) else "---" for h in header) + "|"]
    for rank, (_, row) in enumerate(summary.iterrows(), start=1):
        mark = " †" if row.n_incomplete else ""

        def pct(name: str, row=row) -> str:
            return _pct(row[f"{name}_mean"], row[f"{name}_std"]) + _n(row[f"{name}_n"], row.n_used)

        ci = _ci(row[f"{measure}_ci_low"], row[f"{measure}_ci_high"], row[f"{measure}_ci_method"])
        accuracy = [pct(VAL), pct(SELECTED) + mark, ci, pct(FINAL)] if measure == SELECTED else [pct(FINAL) + mark, ci]
        cells = [str(rank), *(str(row[k]) for k in varying), str(row.n_runs),
                 *(str(row[f"n_{c}"]) for c in counts), *accuracy,
                 _value(row.final_train_loss_mean, row.final_train_loss_std),
                 _steps(row.steps_to_loss_median, row.n_reached_loss, row.n_used),
                 _number(row.grad_norm_ratio, ".3g")] + (_comparison_cells(row) if has_p else [])
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        _ranking_note(summary, varying, lacking),
        "n: runs (seeds) in the group. Mean ± std (ddof 1) and CI are over the runs that neither diverged, "
        "failed nor were killed (Ctrl-C, SIGTERM, a dead process): **those are counted, not averaged in**. "
        "A number over fewer of the group's runs (some lack that metric) says its own (n=k).",
        f"{CI_NOTE}, of {COMPARED[measure]}.",
        "final train loss: mean batch loss of the last epoch. steps to loss ≤ X: median first step "
        "whose batch loss ≤ X, with how many runs reached it (never: fewer than half did).",
        "grad norm first/last: first-epoch gradient norm of the first layer's weight over the last "
        "layer's (each the mean over the epoch's steps and the seeds); ≪ 1: gradients vanish toward "
        "the input, ≫ 1: they explode.",
    ] + _ci_fallback_note(summary, f"{measure}_ci_method")
    inits = summary[init_key].astype(str) if init_key in group_keys else pd.Series(dtype=str)
    if baseline is not None and len(inits) and baseline not in set(inits):
        notes.append(f"No test against a baseline: no group has {init_key}={baseline}; pass --baseline with "
                     f"one of {', '.join(sorted(set(inits)))}, or none.")
    if has_p:
        notes.append(_comparison_note(summary, baseline, "with the same other keys"))
    flagged = summary[summary.notes.astype(bool)]
    if len(flagged):
        named = "; ".join(f"{' '.join(str(r[k]) for k in varying)}: {r.notes}" for _, r in flagged.iterrows())
        notes.append(("† includes runs with missing metrics, averaged with what they logged. "
                      if summary.n_incomplete.any() else "") + f"Notes: {named}")
    if superseded:
        notes.append(f"Left out: {len(superseded)} earlier run(s) of a config that was run again in this "
                     "selection (a resumed or re-run job; the later run counts): " + ", ".join(superseded))
    return "\n\n".join([_caption(title, same), "\n".join(lines), *notes]) + "\n"  # notes: one paragraph each


def overview_markdown(summary: pd.DataFrame, group_keys: list[str], title: str) -> str:
    """The sweep's parent run's description: the ranking in a few columns (rank, the keys that vary, n,
    diverged, the compared accuracy with its CI), the table first, so that the MLflow UI's overview,
    which folds a description after a few lines, opens on its top rows; the caption follows. Every
    other measure and the footnotes are in analysis/summary.md beside it."""
    varying, same = _varying(summary, group_keys)
    measure = summary.compared_on.iloc[0]
    accuracy = "test acc at best val %" if measure == SELECTED else "final test acc %"
    header = ["#", *varying, "n", "diverged", accuracy, f"{CI_LEVEL:.0%} CI"]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("--:" if h in ("#", "n", "diverged") else "---" for h in header) + "|"]
    for rank, (_, row) in enumerate(summary.iterrows(), start=1):
        cells = [str(rank), *(str(row[k]) for k in varying), str(row.n_runs), str(row.n_diverged),
                 _pct(row[f"{measure}_mean"], row[f"{measure}_std"]),
                 _ci(row[f"{measure}_ci_low"], row[f"{measure}_ci_high"], row[f"{measure}_ci_method"])]
        lines.append("| " + " | ".join(cells) + " |")
    ranked = ("best validation accuracy" if summary.ranked_by.eq(VAL).all() else "final test accuracy"
              if not summary.ranked_by.eq(VAL).any() else "best validation accuracy (then final test accuracy)")
    return "\n\n".join(["\n".join(lines), _caption(title, same),
                         f"Ranked by mean {ranked}; mean ± std over the runs that did not diverge or fail. "
                         "Every measure, the tests against the baseline and the footnotes: "
                         "analysis/summary.md in this run's artifacts."]) + "\n"


def tune_markdown(table: pd.DataFrame, groups: list[str], key: str, baseline: str | None, left_out: int,
                  files: str = "tune.csv, tune_grid.csv, tune.png") -> str:
    """The --tune table: per group, the chosen value of `key`, its scores, the runner-up, the comparisons."""
    varying, same = _varying(table, groups) if groups else ([], {})
    has_p = table.delta_vs_baseline.notna().any()
    header = ["#", *varying, f"{key} values", f"chosen {key}", "n", "diverged", "best val acc %",
              "test acc at best val %", f"{CI_LEVEL:.0%} CI", f"runner-up {key}", "runner-up val acc %",
              "gap (pp)"] + (_comparison_header(baseline) if has_p else [])
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("--:" if h in ("#", "n", "diverged", f"{key} values") else "---" for h in header) + "|"]
    for rank, (_, row) in enumerate(table.iterrows(), start=1):
        used = row[f"{VAL}_n"]
        cells = [str(rank), *(str(row[k]) for k in varying), str(row.n_values),
                 "—" if pd.isna(row[key]) else str(row[key]), str(row.n_runs), str(row.n_diverged),
                 _pct(row[f"{VAL}_mean"], row[f"{VAL}_std"]),
                 _pct(row[f"{SELECTED}_mean"], row[f"{SELECTED}_std"]) + _n(row[f"{SELECTED}_n"], used),
                 _ci(row[f"{SELECTED}_ci_low"], row[f"{SELECTED}_ci_high"], row[f"{SELECTED}_ci_method"]),
                 "—" if pd.isna(row.runner_up) else str(row.runner_up),
                 "—" if pd.isna(row.runner_up_val_mean)
                 else f"{100 * row.runner_up_val_mean:.2f} (n={row.runner_up_n})",
                 _number(100 * row.gap, "+.2f")] + (_comparison_cells(row) if has_p else [])
        lines.append("| " + " | ".join(cells) + " |")
    title = f"**{key} tuned on validation accuracy**" + (f", per {', '.join(groups)}" if groups else "")
    notes = [
        f"For each group, the chosen {key} is the value whose runs have the best mean best validation "
        "accuracy over seeds (equal means: the first value in numeric order); the test set chooses "
        f"nothing. Ranked by that mean. {key} values: how many values had runs with a validation score.",
        "n: runs at the chosen value; the means, std and CI are over those that neither diverged, failed "
        "nor were killed (counted, not averaged in; diverged: at the chosen value). test acc at best val: "
        f"each run's test accuracy at the epoch of its best validation accuracy. {CI_NOTE}.",
        "runner-up: the second-best value and its mean best validation accuracy (its n); gap: the chosen "
        "value's mean minus the runner-up's, in percentage points: a gap within the seeds' spread is a "
        "flat optimum, where the choice between the two is noise.",
    ] + _ci_fallback_note(table, f"{SELECTED}_ci_method")
    if has_p:
        notes.append(_comparison_note(table, baseline, f"each at its own chosen {key}"))
    if left_out:
        notes.append(f"Left out: {left_out} run(s) with {NO_VAL}.")
    notes.append(f"The whole grid (mean best val acc and n per group and value, the chosen cell marked): {files}.")
    return "\n\n".join([_caption(title, same), "\n".join(lines), *notes]) + "\n"


def _cell(cell: dict, measure: str) -> str:
    if cell["state"] != "ok":
        return "—" if cell["state"] == "missing" else f"{cell['state']} ({cell['n_runs']})"
    value = cell["value"]
    if measure in PERCENT:
        text = f"{100 * value:.2f}"
    elif measure == "steps_to_loss":
        text = "never" if math.isinf(value) else f"{value:.0f}"
    else:
        text = f"{value:.4g}"
    diverged = f"; {cell['n_diverged']} diverged" if cell["n_diverged"] and measure != "diverged" else ""
    return f"{text} (n={cell['n']}{diverged})"


def heatmap_markdown(grid: pd.DataFrame, panels: list[str], axes: tuple[str, str], measure: str,
                     files: str) -> str:
    """One pivot table per panel: rows axes[0], columns axes[1], cells "mean (n=k)"."""
    rows_key, cols_key = axes
    label = HEATMAP_MEASURES[measure]
    parts = []
    groups = grid.groupby(panels, sort=False, dropna=False) if panels else [((), grid)]
    for key, panel in groups:
        key = key if isinstance(key, tuple) else (key,)
        where = ", ".join(f"{k}={v}" for k, v in zip(panels, key, strict=True))
        columns = ordered(grid[cols_key])
        lines = [f"| {rows_key} \\ {cols_key} | " + " | ".join(map(str, columns)) + " |",
                 "|---|" + "|".join("---" for _ in columns) + "|"]
        cell_of = {(str(r[rows_key]), str(r[cols_key])): r for r in panel.to_dict("records")}
        for value in ordered(grid[rows_key]):
            cells = [_cell(cell_of[(str(value), str(c))], measure) if (str(value), str(c)) in cell_of else ""
                     for c in columns]
            lines.append(f"| {value} | " + " | ".join(cells) + " |")
        parts += [f"*{where}*" if where else "", "\n".join(lines)]
    how = ("the median over seeds (a run that never reaches the loss counts as never)" if measure == "steps_to_loss"
           else "the fraction of runs that diverged, of those that diverged or were averaged" if measure == "diverged"
           else "the mean over seeds")
    title = f"**{label} per {rows_key} (rows) and {cols_key} (columns)**: {how}, with the runs it is over (n)"
    notes = ["Diverged, failed and killed runs are counted, not averaged in; a cell where no run could be "
             "averaged says why (diverged (k): all k runs diverged). Files: " + files + "."]
    return "\n\n".join([title, *[p for p in parts if p], *notes]) + "\n"


NO_VITALS = ("No vitals: no run of this selection logged vitals/act_std, vitals/dead_frac or vitals/jacobian "
             "(runs logged before initbench measured them), so there is no vitals table, act_std.png or dead_frac.png.")


def vitals_markdown(summary: pd.DataFrame, group_keys: list[str], kinds: list[str], without: int) -> str:
    """The vitals table, per group in the summary's (ranked) order: the Jacobian's sv_mean and sv_max at
    init and the deepest ReLU layer's dead units at init and at the last epoch (vitals.group_vitals'
    columns), with a note on the figures of `kinds` (act_std, dead_frac) written or not; `without`:
    averaged runs that logged no vitals. One line (NO_VITALS) where no run has any."""
    if not kinds and not summary[[f"{m}_n" for m in RUN_MEASURES]].fillna(0).to_numpy().any():
        return NO_VITALS + "\n"
    varying, same = _varying(summary, group_keys)
    header = [*varying, "n", "Jacobian sv_mean", "sv_max", "deepest ReLU layer", "dead at init %",
              "dead at last epoch %"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("--:" if h == "n" else "---" for h in header) + "|"]
    for _, row in summary.iterrows():
        def cell(name: str, pct: bool = False, row=row) -> str:
            text = (_pct if pct else _value)(row[f"{name}_mean"], row[f"{name}_std"])
            return text + _n(row[f"{name}_n"], row.n_used) if text != "—" else text

        cells = [*(str(row[k]) for k in varying), str(row.n_used), cell("sv_mean"), cell("sv_max"),
                 row.dead_frac_layer if isinstance(row.dead_frac_layer, str) and row.dead_frac_layer else "—",
                 cell("dead_frac_init", True), cell("dead_frac_last", True)]
        lines.append("| " + " | ".join(cells) + " |")
    title = "**Vitals**: mean ± std over the averaged runs (n; a number over fewer of them says its own)"
    notes = ["Jacobian sv_mean, sv_max: the mean and the largest singular value of the input-output Jacobian "
             "(d logits / d input) at init, on up to 8 examples of the probe batch (the first "
             "trainer.batch_size training examples); dynamical isometry wants both near 1.",
             "dead: the fraction of the units of the deepest layer a ReLU reads that are 0 for every example of the "
             "probe batch, at init and at the end of the last epoch."]
    figures = [f"{kind}.png" for kind in kinds]
    notes.append(f"Per layer, at init and after epochs: {', '.join(figures)} (the numbers: vitals.csv)." if figures
                 else "No per-layer figures: no run logged vitals/act_std or vitals/dead_frac.")
    if "dead_frac" not in kinds and figures:
        notes.append("No dead_frac.png: no run logged vitals/dead_frac (no ReLU reads any of their layers).")
    if without:
        notes.append(f"Left out: {without} averaged run(s) that logged no vitals (logged before initbench "
                     "measured them).")
    return "\n\n".join([_caption(title, same), "\n".join(lines), *notes]) + "\n"


# Every file an analysis writes (write_outputs and the plots): what an earlier analysis left in the same
# folder and this one did not write is removed, so a folder never mixes two analyses.
OUTPUT_PATTERNS = ("summary.md", "summary.csv", "runs.csv", "curves.csv", "grad_norms.csv", "vitals.csv",
                   "tune.csv", "tune_grid.csv", "tune.png", "heatmap_*.csv", "heatmap_*.png", "train_loss.png",
                   "test_acc.png", "val_acc.png", "grad_norms.png", "act_std.png", "dead_frac.png")


class OutUnusable(ValueError):
    """The analysis' output folder is a file or cannot be written: found before anything is computed."""


def check_out(out: Path) -> None:
    """OutUnusable unless the folder `out`, or the nearest folder above it where it does not exist yet,
    takes a file (a probe, removed at once), so that an analysis never computes a table it cannot write.
    Creates nothing."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise OutUnusable(f"--out {out}: {existing} is a file; give a folder (it is made if missing)")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise OutUnusable(f"--out {out} cannot be written ({err.strerror or err} in {existing}); give a "
                          "writable folder") from None


def remove_stale(out: Path, written: list[Path]) -> list[Path]:
    """Remove the files of OUTPUT_PATTERNS in `out` that this analysis did not write (an earlier one's
    tune.png, say); returns them."""
    keep = {p.name for p in written}
    stale = sorted({p for pattern in OUTPUT_PATTERNS for p in out.glob(pattern) if p.name not in keep})
    for path in stale:
        path.unlink()
    return stale


def write_outputs(out: Path, runs: pd.DataFrame, summary: pd.DataFrame, curves: pd.DataFrame,
                  grad_table: pd.DataFrame, markdown: str, group_keys: list[str],
                  extra: dict[str, pd.DataFrame] | None = None) -> list[Path]:
    """summary.md, summary.csv, runs.csv (one row per run), curves.csv (the train/val/test histories,
    one row per point, with the run's keys and status), grad_norms.csv (per group and parameter), and
    the `extra` CSVs by file name (tune.csv, heatmap_*.csv)."""
    out.mkdir(parents=True, exist_ok=True)
    who = runs[["run_id", *group_keys, "seed", "status"]]  # runs.csv has the rest
    files = {"summary.csv": summary, "runs.csv": runs, "curves.csv": who.merge(curves, on="run_id"),
             "grad_norms.csv": grad_table, **(extra or {})}
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
                     options: dict[str, str], description: str) -> str:
    """Log the analysis to the sweep's parent run (made now, and ended, for runs that have none:
    single runs, `--sweep all`, sweeps before parent runs): the files as artifacts under analysis/,
    `summary` also as an MLflow table (analysis/summary.json), `description` (overview_markdown) as the
    run's description, the options as tags initbench.analysis.*. Analysis never counts a parent run as a
    job. An error of the store is raised, not logged: the caller says in one line what it was (see
    root_cause); a parent made here is then ended FAILED, never left RUNNING."""
    tracker = Tracker(uri, experiment)
    found = tracker.find_sweep_run(sweep)
    run_id = found.info.run_id if found else tracker.sweep_run(sweep)
    tags = {"mlflow.note.content": description[:MAX_NOTE],
            **{f"initbench.analysis.{k}": v for k, v in options.items()}}
    try:
        tracker.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        for path in files:
            tracker.client.log_artifact(run_id, str(path), "analysis")
        table = summary.replace([math.inf, -math.inf], math.nan).astype(object)
        tracker.log_table(run_id, table.where(table.notna(), None), "analysis/summary.json")
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
