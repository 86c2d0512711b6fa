"""Tracker: MLflow takes at most 1,000 metrics and 100 params per request, so one call's points and
params go out in chunks; every one of them, the last partial chunk's too, must reach the store."""

from mlflow.tracking import MlflowClient

from initbench.tracking import Tracker


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
