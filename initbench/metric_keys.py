"""The metric keys of the diagnostics, `vitals/<kind>/<name>`, made MLflow-safe in one place.

No torch here: the trainers write these keys (initbench.vitals.points) and the analysis reads them back.
"""

import re

VITALS = "vitals/"  # one chart section in MLflow's UI, sorted after test/, train/ and val/
SUMMARY = "whole_run/"  # a run's summary metrics, once at its end (FitResult.summary); the chart view sorts
# its sections by name, and this one must come after test/ and train/, which the charts open on


def metric_name(name: str) -> str:
    """`name` (a layer or parameter) as one part of an MLflow metric key: every character but letters,
    digits, _ - . and space becomes _. MLflow refuses the others (but / and, off Windows, :), and a /
    would split the name into two parts of the key. The root module, `(model)`, becomes `_model_`."""
    return re.sub(r"[^\w.\- ]", "_", name)


def vitals_key(kind: str, name: str) -> str:
    """The metric key `vitals/<kind>/<name>` of every diagnostic (act_std, backprop_std, dead_frac,
    grad_norm, jacobian), `name` made MLflow-safe by metric_name: `(model)` -> `vitals/act_std/_model_`."""
    return f"{VITALS}{kind}/{metric_name(name)}"
