"""Tracker: MLflow takes at most 1,000 metrics and 100 params per request, so one call's points and
params go out in chunks; every one of them, the last partial chunk's too, must reach the store. And a
table logged twice is the second one; system metrics come when asked for."""

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from initbench.store import TrackingUnavailable
from initbench.tracking import SYSTEM_METRICS_INTERVAL_S, Tracker


def test_every_point_and_param_of_a_large_call_is_stored(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, "exp")
    params = {f"param{i:03d}": str(i) for i in range(250)}  # 100 + 100 + 50
    points = [(f"metric{i % 3}", float(i), i // 3) for i in range(2345)]  # 1000 + 1000 + 345
    run_id = tracker.start("big", params, {})
    tracker.log_points(points)
    tracker.end("finished")

    client = MlflowClient(uri)
    assert client.get_run(run_id).data.params == params
    stored = [(m.key, m.value, m.step) for key in ("metric0", "metric1", "metric2")
              for m in client.get_metric_history(run_id, key)]
    assert sorted(stored) == sorted(points)


def test_a_table_logged_again_replaces_the_first(tmp_path, monkeypatch):
    """A second analysis of a sweep logs its summary table again: MLflow's own log_table would append
    the rows to the first table's."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.chdir(tmp_path)
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "exp")
    run_id = tracker.sweep_run("s")
    for rows in ([1, 2], [3, 4, 5]):
        tracker.log_table(run_id, pd.DataFrame({"acc": rows}), "analysis/summary.json")
    path = tracker.client.download_artifacts(run_id, "analysis/summary.json", str(tmp_path))
    assert json.loads(Path(path).read_text()) == {"columns": ["acc"], "data": [[3], [4], [5]]}


def test_system_metrics_are_logged_when_asked_and_a_bad_setting_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.chdir(tmp_path)
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "exp", system_metrics=True)
    run_id = tracker.start("watched", {}, {})
    time.sleep(SYSTEM_METRICS_INTERVAL_S * 2.5)  # a run long enough for two samples
    tracker.end("finished")
    logged = tracker.client.get_run(run_id).data.metrics
    assert "system/cpu_utilization_percentage" in logged and "system/system_memory_usage_megabytes" in logged
    with pytest.raises(TrackingUnavailable, match="tracking.system_metrics='yes'; valid: true, false"):
        Tracker(f"sqlite:///{tmp_path}/mlflow.db", "exp", system_metrics="yes")
