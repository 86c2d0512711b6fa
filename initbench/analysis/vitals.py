"""Per-layer activation std and dead-unit fraction through training, per group over seeds; per run and
group, the Jacobian's spectrum at init and the dead units of the deepest layer a ReLU reads.

The trainers log `vitals/act_std/<layer>` and `vitals/dead_frac/<layer>` at step 0 (init) and at the
end of each epoch (step = epoch), and `vitals/jacobian/*` at step 0 (initbench.vitals.points). Runs
logged before that have none of them, or `act_std/<layer>` at init only: they add nothing here and
raise nothing. As everywhere in the analysis, the means are over the runs that neither diverged,
failed nor were killed.
"""

import pandas as pd

from ..metric_keys import metric_name
from .grid import ordered
from .load import VITALS_PREFIXES, SweepRuns
from .stats import COUNTED_ONLY, ReportOf

KINDS = ("act_std", "dead_frac")  # one figure each
LAYER_COLUMNS = ["run_id", "kind", "layer", "position", "order_known", "epoch", "value"]
JACOBIAN = ("sv_mean", "sv_max")  # of vitals/jacobian/*, the runs table's columns
RUN_MEASURES = (*JACOBIAN, "dead_frac_init", "dead_frac_last")  # per run; per group: mean, std, n
ROOT = metric_name("(model)")


def layer_order(layers, params: list[str] | None) -> list[str]:
    """`layers` in model order. `params`: the parameter names in model order (a run's init report, as the
    metric keys write them). A layer that owns parameters goes where its first one is; any other row (a
    ReLU of a sum, `block.relu`, `relu.2`) just after the last parameter of the innermost module that
    holds it. Without `params`: natural name order."""
    names = ordered(list(layers))
    if not params:
        return names
    owners = [p.rsplit(".", 1)[0] if "." in p else ROOT for p in params]
    first = {}
    for i, owner in enumerate(owners):
        first.setdefault(owner, i)

    def position(layer: str) -> float:
        if layer in first:
            return first[layer]
        parts = layer.split(".")
        for k in range(len(parts) - 1, 0, -1):
            inside = [i for i, p in enumerate(params) if p.startswith(".".join(parts[:k]) + ".")]
            if inside:
                return inside[-1] + 0.5
        return len(params)  # a ReLU in the root's forward

    return sorted(names, key=position)  # stable: equal positions keep natural order


def layer_vitals(sweep: SweepRuns, report_of: ReportOf = lambda run_id: None) -> pd.DataFrame:
    """One row per run, kind (act_std, dead_frac), layer and epoch (0: init): the logged value, and the
    layer's `position` in model order (0, 1, ...; see layer_order, with the init report of one run per
    set of layer names; `order_known` False and natural name order where that run has no init report).
    Layer names as the current keys write them: `(model)` is read as `_model_`."""
    curves = sweep.curves
    points = curves[curves.key.str.startswith(VITALS_PREFIXES)] if len(curves) else curves
    if points.empty:
        return pd.DataFrame(columns=LAYER_COLUMNS)
    parts = points.key.str.extract(r"^(?:vitals/)?(act_std|dead_frac)/(.+)$")
    table = pd.DataFrame({"run_id": points.run_id, "kind": parts[0], "layer": parts[1].map(metric_name),
                          "epoch": points.step.astype(int), "value": points.value.astype(float)})
    table = table.drop_duplicates(["run_id", "kind", "layer", "epoch"], keep="last")
    architectures = table.groupby("run_id").layer.agg(frozenset)
    table["position"], table["order_known"] = 0, False
    for names, run_ids in architectures.groupby(architectures).groups.items():
        report = report_of(min(run_ids))
        order = layer_order(names, None if report is None else list(report.param))
        rows = table.run_id.isin(run_ids)
        table.loc[rows, "position"] = table.loc[rows, "layer"].map({n: i for i, n in enumerate(order)})
        table.loc[rows, "order_known"] = report is not None
    return table[LAYER_COLUMNS].sort_values(["run_id", "kind", "position", "epoch"], ignore_index=True)


def group_layer_vitals(runs: pd.DataFrame, layers: pd.DataFrame, group_keys: list[str]) -> pd.DataFrame:
    """Per group, kind, layer and epoch: mean, std (ddof 1), min, max and n of the value over the used
    runs (the data behind act_std.png and dead_frac.png)."""
    used = runs.loc[~runs.status.isin(COUNTED_ONLY), ["run_id", *group_keys]]
    merged = layers.merge(used, on="run_id")
    return (merged.groupby([*group_keys, "kind", "position", "layer", "epoch"], dropna=False)
            .value.agg(["mean", "std", "min", "max", "size"]).rename(columns={"size": "n"}).reset_index())


def run_vitals(sweep: SweepRuns, layers: pd.DataFrame) -> pd.DataFrame:
    """Per run: the Jacobian's sv_mean and sv_max at init; the deepest layer a ReLU reads
    (`dead_frac_layer`) and its dead fraction at init and at the last epoch logged (NaN without one, and
    where the layer order is unknown: which layer is deepest needs the run's init report)."""
    runs = sweep.runs
    out = pd.DataFrame({"run_id": runs.run_id})
    for name in JACOBIAN:
        out[name] = runs.get(f"metrics.vitals/jacobian/{name}", pd.Series(float("nan"), index=runs.index)).values
    dead = layers[(layers.kind == "dead_frac") & layers.order_known.astype(bool)]
    deepest = dead[dead.position == dead.groupby("run_id").position.transform("max")]
    init = deepest[deepest.epoch == 0].set_index("run_id")
    trained = deepest[deepest.epoch > 0].sort_values("epoch").groupby("run_id").last()
    out["dead_frac_layer"] = out.run_id.map(deepest.groupby("run_id").layer.first())
    out["dead_frac_init"] = out.run_id.map(init.value).astype(float)
    out["dead_frac_last"] = out.run_id.map(trained.value).astype(float)
    return out


def group_vitals(runs: pd.DataFrame, group_keys: list[str]) -> pd.DataFrame:
    """Per group (runs with run_vitals' columns): mean, std and n over the used runs of each of
    RUN_MEASURES, and the deepest ReLU layer (`dead_frac_layer`, the most common where runs differ)."""
    used = runs[~runs.status.isin(COUNTED_ONLY)]
    groups = used.groupby(group_keys, dropna=False)
    table = groups[list(RUN_MEASURES)].agg(["mean", "std", "count"])
    table.columns = [f"{name}_{'n' if stat == 'count' else stat}" for name, stat in table.columns]
    table["dead_frac_layer"] = groups.dead_frac_layer.agg(lambda s: s.mode().iloc[0] if s.notna().any() else "")
    return table.reset_index()


def without_vitals(runs: pd.DataFrame, layers: pd.DataFrame) -> int:
    """How many used runs (with run_vitals' columns) logged no vitals at all: no layer and no Jacobian."""
    used = runs[~runs.status.isin(COUNTED_ONLY)]
    return int((~used.run_id.isin(layers.run_id) & used[list(JACOBIAN)].isna().all(axis=1)).sum())
