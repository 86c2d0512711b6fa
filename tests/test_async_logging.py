"""Tracker.log_points sends metric points through MLflow's asynchronous logging queue: every point it
was handed is in the store once end() returns, with several runs open at once in one process (as in a
batched sweep, whose runs share one store and so one queue), and a write that fails is never lost: the
run ends `failed` with the error, and end() raises where the run would otherwise have looked fine."""

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from initbench.run import run
from initbench.tracking import BUSY_RETRIES, HEARTBEAT_TAG, Tracker, WriteFailed

from .conftest import compose_config

KEYS = ("a", "b", "c")


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


def epoch_points(epoch: int, n: int) -> list[tuple[str, float, int]]:
    """`n` points of epoch `epoch` (1-based) spread over KEYS, with steps unique per key."""
    return [(KEYS[i % 3], float(epoch * 10_000 + i), epoch * 10_000 + i // 3) for i in range(n)]


def stored(uri: str, run_id: str) -> list[tuple[str, float, int]]:
    client = MlflowClient(uri)
    return sorted((m.key, m.value, m.step) for key in KEYS for m in client.get_metric_history(run_id, key))


def failing_for(tracker: Tracker, monkeypatch, bad_run: str) -> None:
    """Make the store's asynchronous writes for run `bad_run` fail, as a full disk or a lost server would.
    (MLflow's queue calls the store's log_batch it bound when the store was made, so that is patched.)"""
    queue = tracker.client._tracking_client.store._async_logging_queue
    write = queue._logging_func

    def flaky(run_id, metrics, params, tags):
        if run_id == bad_run:
            raise MlflowException("disk I/O error")
        return write(run_id=run_id, metrics=metrics, params=params, tags=tags)

    monkeypatch.setattr(queue, "_logging_func", flaky)


def test_every_point_of_two_runs_open_at_once_is_stored_after_end(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first, second = Tracker(uri, "exp"), Tracker(uri, "exp")
    ids = [first.start("one", {}, {}), second.start("two", {}, {})]
    sizes = {1: 2345, 2: 7, 3: 1000}  # 999 + 1000 + 346 requests; a small epoch; 999 + 1
    for epoch, n in sizes.items():  # interleaved, as a batched sweep logs its runs' epochs
        for k, tracker in enumerate((first, second)):
            tracker.log_points(epoch_points(epoch, n + k))
            assert tracker._writes  # queued, not written yet
    store = first.client._tracking_client.store
    assert store is second.client._tracking_client.store  # one queue for both
    first.end("finished")
    assert store._async_logging_queue.is_active()  # one run's end leaves the queue to the other's writes
    second.end("diverged")

    client = MlflowClient(uri)
    for k, run_id in enumerate(ids):
        expected = sorted(p for epoch, n in sizes.items() for p in epoch_points(epoch, n + k))
        assert stored(uri, run_id) == expected
        run_ = client.get_run(run_id)
        assert run_.info.status == "FINISHED" and HEARTBEAT_TAG in run_.data.tags
    assert client.get_run(ids[1]).data.tags["initbench.status"] == "diverged"


def test_a_failed_write_ends_the_run_failed_and_end_raises(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    bad, good = Tracker(uri, "exp"), Tracker(uri, "exp")
    bad_id, good_id = bad.start("bad", {}, {}), good.start("good", {}, {})
    failing_for(bad, monkeypatch, bad_id)
    bad.log_points(epoch_points(1, 1500))
    good.log_points(epoch_points(1, 1500))
    with pytest.raises(WriteFailed, match="disk I/O error"):
        bad.end("finished")
    good.end("finished")

    client = MlflowClient(uri)
    failed = client.get_run(bad_id)
    assert failed.info.status == "FAILED" and failed.data.tags["initbench.status"] == "failed"
    assert "training ended finished" in failed.data.tags["initbench.error"]
    assert "disk I/O error" in failed.data.tags["initbench.error"]
    assert bad.run_id is None  # closed, not left RUNNING
    assert client.get_run(good_id).info.status == "FINISHED"
    assert len(stored(uri, good_id)) == 1500


def test_a_killed_runs_failed_write_is_recorded_without_hiding_the_interrupt(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "exp")
    run_id = tracker.start("killed", {}, {})
    failing_for(tracker, monkeypatch, run_id)
    tracker.log_points(epoch_points(1, 10))
    tracker.end("killed", error="KeyboardInterrupt: stopped by SIGTERM")  # does not raise

    logged = MlflowClient(uri).get_run(run_id)
    assert logged.info.status == "FAILED" and logged.data.tags["initbench.status"] == "failed"
    error = logged.data.tags["initbench.error"]
    assert error.startswith("KeyboardInterrupt: stopped by SIGTERM\nWriteFailed")
    assert "training ended killed" in error


def test_a_write_that_fails_during_training_fails_the_job_at_the_next_epoch(tmp_path, monkeypatch):
    cfg = compose_config(["model=mlp", "model.depth=2", "dataset.train_size=256", "trainer.epochs=3"], tmp_path)
    uri = cfg.tracking.uri
    started = Tracker.start

    def start_then_fail(self, *args, **kwargs):
        run_id = started(self, *args, **kwargs)
        failing_for(self, monkeypatch, run_id)
        return run_id

    monkeypatch.setattr(Tracker, "start", start_then_fail)
    with pytest.raises(WriteFailed, match="disk I/O error"):
        run(cfg)
    [logged] = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("initbench").experiment_id])
    assert logged.info.status == "FAILED" and logged.data.tags["initbench.status"] == "failed"
    assert "WriteFailed" in logged.data.tags["initbench.error"]


LOCKED = "(sqlite3.OperationalError) database is locked"  # what MLflow reports after its 20 s busy timeout


def test_a_request_refused_as_locked_is_sent_again_and_stored_once(tmp_path, monkeypatch, capfd):
    """A store another writer holds locked past MLflow's busy timeout (seen with two sweeps into one SQLite
    store on a loaded machine) costs a retry, not the run: every point is stored, none twice."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "exp")
    run_id = tracker.start("busy", {}, {})
    queue = tracker.client._tracking_client.store._async_logging_queue
    write, refused = queue._logging_func, []

    def locked_once(run_id, metrics, params, tags):
        if not refused:
            refused.append(len(metrics))
            raise MlflowException(LOCKED)
        return write(run_id=run_id, metrics=metrics, params=params, tags=tags)

    monkeypatch.setattr(queue, "_logging_func", locked_once)
    tracker.log_points(epoch_points(1, 1500))
    tracker.log_points(epoch_points(2, 10))
    tracker.end("finished")
    assert refused and stored(uri, run_id) == sorted(epoch_points(1, 1500) + epoch_points(2, 10))
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"
    assert "locked by another writer" in capfd.readouterr().err


def test_a_store_that_stays_locked_fails_the_write_after_the_retries(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "exp")
    run_id = tracker.start("locked", {}, {})
    calls = []

    def always_locked(*args, **kwargs):
        calls.append(1)
        raise MlflowException(LOCKED)

    monkeypatch.setattr(tracker.client, "log_batch", always_locked)
    with pytest.raises(MlflowException, match="database is locked"):
        tracker.log_points(epoch_points(1, 5))
    assert len(calls) == 1 + BUSY_RETRIES
    monkeypatch.undo()
    assert stored(uri, run_id) == []


def test_mlflows_own_switch_turns_asynchronous_logging_off(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "exp")
    run_id = tracker.start("sync", {}, {})
    tracker.log_points(epoch_points(1, 5))
    assert not tracker._writes and stored(uri, run_id) == sorted(epoch_points(1, 5))  # written before it returned
    tracker.end("finished")


def test_a_process_does_not_wait_for_mlflows_queue_poll_at_exit(tmp_path, monkeypatch):
    """MLflow's queue thread notices a shut-down only at its next 1 s poll, and its exit handler waits for
    that: end() has confirmed every write, so it unregisters the handler (the thread is a daemon)."""
    import atexit

    released = []
    monkeypatch.setattr(atexit, "unregister", released.append)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "exp")
    run_id = tracker.start("one", {}, {})
    tracker.log_points(epoch_points(1, 30))
    queue = tracker.client._tracking_client.store._async_logging_queue
    tracker.end("finished")
    assert queue._at_exit_callback in released and queue._batch_logging_thread.daemon
    assert stored(uri, run_id) == sorted(epoch_points(1, 30))


def test_a_dataset_another_job_inserted_at_the_same_moment_is_linked_not_an_error(tmp_path, monkeypatch):
    """Two parallel jobs log the same dataset at once: MLflow's store checks, then inserts, so one insert
    fails on the unique key (seen with the joblib launcher against a server). The dataset then exists, and
    logging it again links it to the run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "exp")
    run_id = tracker.start("one", {}, {})
    real, calls = tracker.client.log_inputs, []

    def racing(run, datasets):
        calls.append(run)
        if len(calls) == 1:
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
                                  "datasets.name, datasets.digest")
        return real(run, datasets=datasets)

    monkeypatch.setattr(tracker.client, "log_inputs", racing)
    tracker.log_datasets([{"name": "digits", "digest": "abc", "context": "train", "source": {}, "profile": {}}])
    inputs = MlflowClient(uri).get_run(run_id).inputs.dataset_inputs
    assert len(calls) == 2 and [i.dataset.digest for i in inputs] == ["abc"]
    monkeypatch.setattr(tracker.client, "log_inputs", lambda run, datasets: (_ for _ in ()).throw(
        MlflowException("RESOURCE_DOES_NOT_EXIST: run")))
    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST"):  # any other error is not swallowed
        tracker.log_datasets([{"name": "d", "digest": "x", "context": "test", "source": {}, "profile": {}}])
    tracker.end("finished")
