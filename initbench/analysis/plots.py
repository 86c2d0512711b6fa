"""PNG plots of a sweep, one line per init (or per group), a band or bars over seeds (min to max), and
the heatmaps of --tune and --heatmap (a mean per cell of two config keys, with its n).

One panel per combination of the other group keys (model, dataset, ...). matplotlib with the Agg
backend: no display needed, nothing shown.
"""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .grid import ordered  # noqa: E402
from .stats import COUNTED_ONLY  # noqa: E402


def _panels(runs: pd.DataFrame, group_keys: list[str], line_key: str | None):
    """(title, {line label: run ids}) per panel, plus the diverged run ids per line label."""
    panel_keys = [k for k in group_keys if k != line_key]
    by_panel = runs.groupby(panel_keys, dropna=False) if panel_keys else [((), runs)]
    for key, panel in by_panel:
        key = key if isinstance(key, tuple) else (key,)
        title = ", ".join(f"{k}={v}" for k, v in zip(panel_keys, key, strict=True))
        label_of = (panel[line_key].astype(str) if line_key
                    else panel[group_keys].astype(str).agg(" ".join, axis=1))
        yield title, panel.assign(_label=label_of)


def _figure(n: int, height: float = 4.0):
    fig, axes = plt.subplots(1, n, figsize=(6.5 * n, height), squeeze=False)
    return fig, axes[0]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _band(ax, curves: pd.DataFrame, label: str, color, marker=None, dodge: float = 0.0):
    """Mean over runs with a min-max band (or error bars with markers, shifted by `dodge` along x so that
    the lines' bars do not hide each other) at each step."""
    stats = curves.groupby("step").value.agg(["mean", "min", "max", "size"])
    label = f"{label} (n={stats['size'].max()})"
    if marker:  # clipped at 0: where every run agrees, the mean's rounding can pass the min or max by 1e-17
        spread = [(stats["mean"] - stats["min"]).clip(lower=0), (stats["max"] - stats["mean"]).clip(lower=0)]
        ax.errorbar(stats.index + dodge, stats["mean"], yerr=spread, marker=marker, markersize=4, capsize=2,
                    color=color, label=label)
    else:
        ax.plot(stats.index, stats["mean"], color=color, label=label)
        ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.2, linewidth=0)


def plot_curves(runs: pd.DataFrame, curves: pd.DataFrame, group_keys: list[str], key: str, path: Path,
                line_key: str | None = "init", per_epoch: bool = False) -> Path:
    """`key` (train/loss per step, or test/acc per epoch) per line: mean with a min-max band over the used
    runs; diverged runs' partial curves as thin dotted lines, an x where they stop."""
    line_key = line_key if line_key in group_keys else None
    panels = list(_panels(runs, group_keys, line_key))
    fig, axes = _figure(len(panels))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    data = curves[curves.key == key]
    log = key.endswith("loss")
    finite = data.value[data.run_id.isin(runs.run_id[~runs.status.isin(COUNTED_ONLY)]) & (data.value > 0)]
    top = finite.max() * 2 if len(finite) else math.inf
    for ax, (title, panel) in zip(axes, panels, strict=True):
        lines = panel.groupby("_label", sort=True)
        for i, (label, members) in enumerate(lines):
            color = colors[i % len(colors)]
            used = data[data.run_id.isin(members.run_id[~members.status.isin(COUNTED_ONLY)])]
            if len(used):
                dodge = 0.3 * (i / max(len(lines) - 1, 1) - 0.5) if per_epoch else 0.0
                _band(ax, used, label, color, marker="o" if per_epoch else None, dodge=dodge)
            for run_id in members.run_id[members.status == "diverged"]:
                partial = data[data.run_id == run_id]
                if len(partial):  # clipped to the used runs' range, so that a blow-up does not flatten them
                    values = partial.value.clip(upper=top) if log else partial.value
                    ax.plot(partial.step, values, ":", color=color, linewidth=0.8)
                    ax.plot(partial.step.iloc[-1:], values.iloc[-1:], "x", color=color)
        ax.set_title(title or key)
        ax.set_xlabel("epoch" if per_epoch else "step (batch)")
        ax.set_ylabel(key)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{key}: mean over seeds, band/bars min to max; dotted: diverged runs", fontsize=10)
    return _save(fig, path)


def plot_grad_norms(grad_table: pd.DataFrame, group_keys: list[str], path: Path,
                    line_key: str | None = "init") -> Path:
    """Mean first-epoch gradient norm of each layer weight (model order), one line per init, log scale."""
    line_key = line_key if line_key in group_keys else None
    layers = grad_table[grad_table.is_layer.fillna(False).astype(bool)]
    panels = list(_panels(layers, group_keys, line_key)) if len(layers) else [("no gradient norms", layers)]
    fig, axes = _figure(len(panels))
    for ax, (title, panel) in zip(axes, panels, strict=True):
        if "_label" in panel:
            names = panel.sort_values("position").drop_duplicates("position")
            x_of = {p: i for i, p in enumerate(names.position)}
            for label, rows in panel.groupby("_label", sort=True):
                rows = rows.sort_values("position")
                label += "" if (rows["mean"] > 0).any() else " (all 0: not on a log scale)"
                ax.plot(rows.position.map(x_of), rows["mean"], marker="o", markersize=3, label=label)
            ax.set_xticks(range(len(names)), names.param, rotation=60, ha="right", fontsize=7)
            ax.legend(fontsize=8)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_ylabel("first-epoch gradient norm")
        ax.grid(alpha=0.3)
    fig.suptitle("gradient norm per layer weight, mean over the first epoch's steps and the seeds",
                 fontsize=10)
    return _save(fig, path)


def plot_heatmap(grid: pd.DataFrame, panels: list[str], rows: str, columns: str, value: str, n: str,
                 path: Path, title: str, percent: bool = True, marked: str | None = None) -> Path:
    """One heatmap per combination of `panels` (one for all without), 3 to a row: `rows` x `columns`
    cells colored by `value`, each with its value and `n`; a cell with no value is grey and says its
    `state` (diverged, failed: every run of it) and how many runs it had; the cells where `marked` is
    true get a red frame and a star (the --tune choice). One color scale for all panels."""
    row_values, column_values = ordered(grid[rows]), ordered(grid[columns])
    position = {(str(r), str(c)): (i, j) for i, r in enumerate(row_values) for j, c in enumerate(column_values)}
    groups = list(grid.groupby(panels, sort=False, dropna=False)) if panels else [((), grid)]
    varying = [k for k in panels if grid[k].astype(str).nunique() > 1]  # panel titles; the others: the title's
    same = ", ".join(f"{k}={grid[k].iloc[0]}" for k in panels if k not in varying)
    title += f" ({same})" if same else ""
    numbers = pd.to_numeric(grid[value], errors="coerce").astype(float)
    finite = numbers[np.isfinite(numbers)]
    low, high = (finite.min(), finite.max()) if len(finite) else (0.0, 1.0)
    high = high if high > low else low + 1e-9
    per_row, n_rows = min(len(groups), 3), math.ceil(len(groups) / 3)
    size = (per_row * (1.1 * len(column_values) + 2.5), n_rows * (0.55 * len(row_values) + 1.8))
    fig, axes = plt.subplots(n_rows, per_row, squeeze=False, figsize=size)
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    for ax, (key, panel) in zip(axes.flat, groups, strict=False):
        key = key if isinstance(key, tuple) else (key,)
        matrix = np.full((len(row_values), len(column_values)), np.nan)
        for cell in panel.to_dict("records"):
            i, j = position[(str(cell[rows]), str(cell[columns]))]
            v = float(cell[value]) if cell[n] and not pd.isna(cell[value]) else math.nan
            if math.isnan(v):
                text = f"{cell['state'] if cell['state'] != 'ok' else '—'}\n({cell['n_runs']} runs)"
            else:
                shown = "never" if math.isinf(v) else f"{100 * v:.2f}" if percent else f"{v:.4g}"
                text = f"{shown}\nn={cell[n]}" + (f", {cell['n_diverged']} div." if cell.get("n_diverged") else "")
                matrix[i, j] = v if math.isfinite(v) else math.nan
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=_ink(cmap, matrix[i, j], low, high))
            if marked and cell.get(marked):
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=3))
                ax.text(j + 0.45, i - 0.42, "★", ha="right", va="top", fontsize=11, color="red")
        image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=low, vmax=high, aspect="auto")
        ax.set_xticks(range(len(column_values)), [str(c) for c in column_values], rotation=30, ha="right")
        ax.set_yticks(range(len(row_values)), [str(r) for r in row_values])
        ax.set_xlabel(columns)
        ax.set_ylabel(rows)
        ax.set_title(", ".join(f"{k}={v}" for k, v in zip(panels, key, strict=True) if k in varying), fontsize=9)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    bar = fig.colorbar(image, ax=list(axes.flat), shrink=0.8)
    if percent:
        bar.ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{100 * v:.4g}"))
    fig.suptitle(title, fontsize=10, y=1.0 + 0.1 / n_rows / (0.55 * len(row_values) + 1.8))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _ink(cmap, v: float, low: float, high: float) -> str:
    """Black or white, whichever reads on the cell's color (black on the grey of a cell without a value)."""
    if math.isnan(v):
        return "black"
    r, g, b, _ = cmap((v - low) / (high - low))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def shown_epochs(epochs) -> list[int]:
    """Init (0, or the first epoch logged), the middle one and the last, without repeats."""
    epochs = sorted(set(int(e) for e in epochs))
    first, last = epochs[0], epochs[-1]
    middle = min(epochs[1:-1], key=lambda e: abs(e - (first + last) / 2), default=None)
    return [e for e in (first, middle, last) if e is not None]


def plot_layer_vitals(table: pd.DataFrame, group_keys: list[str], path: Path, label: str,
                      log_if_decades: bool = True) -> Path:
    """One panel per group (3 to a row, one y scale): per layer in model order (x), the mean over seeds with
    a min-max band at init, a middle epoch and the last (shown_epochs), from group_layer_vitals' rows of
    one kind. A log y where `log_if_decades` and the positive means span a factor 10 or more."""
    groups = list(table.groupby(group_keys, sort=True, dropna=False))
    varying = [k for k in group_keys if table[k].astype(str).nunique() > 1]
    same = ", ".join(f"{k}={table[k].iloc[0]}" for k in group_keys if k not in varying)
    positive = table["mean"][table["mean"] > 0]
    log = log_if_decades and len(positive) > 0 and positive.max() >= 10 * positive.min()
    per_row, n_rows = min(len(groups), 3), math.ceil(len(groups) / 3)
    fig, axes = plt.subplots(n_rows, per_row, figsize=(6.5 * per_row, 4.2 * n_rows), squeeze=False, sharey=True)
    for ax, (key, panel) in zip(axes.flat, groups, strict=False):
        key = key if isinstance(key, tuple) else (key,)
        layers = panel.sort_values("position").drop_duplicates("layer")
        x_of = {layer: i for i, layer in enumerate(layers.layer)}
        epochs = shown_epochs(panel.epoch)
        colors = plt.get_cmap("viridis")(np.linspace(0, 0.85, len(epochs)))
        for epoch, color in zip(epochs, colors, strict=True):
            rows = panel[panel.epoch == epoch].sort_values("position")
            x = rows.layer.map(x_of)
            name = "init" if epoch == 0 else f"epoch {epoch}" + (" (last)" if epoch == epochs[-1] else "")
            zeros = int((rows["mean"] <= 0).sum()) if log else 0
            name += f" (n={rows.n.max()})" + (f" ({zeros} of {len(rows)} layers 0: off the log scale)" if zeros else "")
            ax.plot(x, rows["mean"], marker="o", markersize=3, color=color, label=name)
            ax.fill_between(x, rows["min"], rows["max"], color=color, alpha=0.2, linewidth=0)
        ax.set_xticks(range(len(x_of)), list(x_of), rotation=60, ha="right", fontsize=7)
        ax.set_title(", ".join(f"{k}={v}" for k, v in zip(group_keys, key, strict=True) if k in varying), fontsize=9)
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.suptitle(f"{label} per layer (model order), mean over seeds, band min to max" + (f" ({same})" if same else ""),
                 fontsize=10)
    return _save(fig, path)
