"""MLflow logging: one run per job, metrics in batches. The only module that writes to MLflow.

Conventions other tools rely on: run name `{model}-{init}-{dataset}-s{seed}`; params = the resolved
config flattened with dots; tags `initbench.status` (finished | diverged | failed | killed),
`initbench.sweep`, `initbench.config_hash`, `initbench.version`, `initbench.torch`, `initbench.device`,
`initbench.git_commit`, `initbench.error`, `initbench.slurm_job` (under SLURM), and `initbench.host`,
`initbench.process`, `initbench.heartbeat` (who runs it, and the time of its last flush).
"""

import atexit
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from mlflow.entities import Dataset as MlflowDataset
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from .store import (
    TrackingUnavailable,
    check_reachable,
    clean_uri,
    is_busy,
    open_client,
    redact,
    resolve_uri,
    sqlite_path,
    with_password,
)

# MLflow's per-request limits (log_batch): 1000 metrics, 100 params, 100 tags; param values 6000 chars.
MAX_METRICS, MAX_PARAMS, MAX_TAGS, MAX_PARAM_CHARS = 1000, 100, 100, 6000
# A metric request that met a SQLite store locked by another writer (MLflow gives up after its 20 s busy
# timeout; a loaded machine's sweeps into one store can hold it longer) is sent again this many times.
BUSY_RETRIES = 5
# Config groups that say where things go, not what is computed: left out of the config hash.
NOT_HASHED = ("paths", "tracking")
MLFLOW_STATUS = {"finished": "FINISHED", "diverged": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
UI_PORT = 5000  # `mlflow ui`'s default port: the printed command names it, and the printed link uses it
MAX_EXPERIMENT_CHARS = 256  # MLflow's SQL stores: experiments.name is a String(256)
MAX_ERROR_CHARS = 5000  # of a traceback, its end: the line that names the exception
# The tag MLflow's UI reads to open an experiment on its runs (the classic training view), not on the
# GenAI overview of traces; a value of its ExperimentKind enum.
KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_TAGS = {KIND_TAG: "custom_model_development"}
SYSTEM_METRICS_INTERVAL_S = 2  # tracking.system_metrics: one sample of CPU, memory, GPU every this many seconds
PARENT_TAG = "initbench.parent"  # a sweep's parent run: its jobs are its children, its analysis is logged to it
# Who runs a run, and when it last flushed: how another process tells a live run from a dead one.
# A run of an earlier sweep that a later sweep's job found done (and skipped) carries one such tag per later
# sweep, so that the later sweep's analysis covers it: `initbench.in_sweep.<sweep id>` = when (Unix ms).
MEMBER_TAG_PREFIX = "initbench.in_sweep."
HOST_TAG, PROCESS_TAG, HEARTBEAT_TAG = "initbench.host", "initbench.process", "initbench.heartbeat"


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}, 'c': [1, 2]} -> {'a.b': '1', 'c': '[1, 2]'}: the resolved config as MLflow params."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat


def config_hash(config: dict) -> str:
    """sha256 of the resolved config (seed included; paths and tracking left out), 16 hex digits."""
    kept = {k: v for k, v in config.items() if k not in NOT_HASHED}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def git_commit() -> str | None:
    """The project's commit when it runs from a git checkout, else None."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def process_token(pid: int) -> str:
    """`pid:start` naming one process for good: Linux's start time (clock ticks after boot, field 22 of
    /proc/<pid>/stat) tells a process from a later one that reuses its pid; `pid:` where unknown;
    '' when no such process exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return f"{pid}:{stat.rsplit(')', 1)[1].split()[19]}"
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return ""
    except PermissionError:  # someone else's process: alive
        pass
    return f"{pid}:"


def liveness(run, stale_after_s: float) -> tuple[bool, str]:
    """(alive, why) for a RUNNING run. On this host: alive while the process that started it exists.
    Elsewhere: alive while its heartbeat (refreshed at every flush) is younger than `stale_after_s`."""
    tags = run.data.tags
    beat = float(tags.get(HEARTBEAT_TAG, run.info.start_time / 1000))
    age = max(0.0, time.time() - beat)  # a heartbeat written a moment ago may read as a hair ahead
    host, token = tags.get(HOST_TAG), tags.get(PROCESS_TAG, "")
    if host == socket.gethostname() and token:
        pid = int(token.split(":")[0])
        if pid == os.getpid():
            return False, "this process left it RUNNING earlier"
        current = process_token(pid)
        if current and (current == token or current.endswith(":") or token.endswith(":")):
            return True, f"its process {pid} on this host is alive (last flush {age:.0f} s ago)"
        return False, f"its process {pid} on this host is gone"
    if age > stale_after_s:
        return False, f"host {host or '?'} has not flushed for {age / 60:.0f} min (over {stale_after_s / 60:.0f})"
    return True, f"host {host or '?'} flushed {age:.0f} s ago (stale after {stale_after_s / 60:.0f} min)"


class WriteFailed(MlflowException):
    """Metric points that Tracker.log_points queued and MLflow's asynchronous queue failed to write."""


class Tracker:
    """One MLflow run at a time in `experiment` at `uri`; the experiment is created by the first run.

    The URI is checked (scheme, reachability) and cleaned of credentials here, before anything is
    written; the store itself is opened on first use."""

    def __init__(self, uri: str, experiment: str, system_metrics: bool = False):
        """`system_metrics`: each run also logs MLflow's own system metrics (CPU, memory, disk,
        network; GPU utilization and memory where pynvml is installed), as `system/...` every
        SYSTEM_METRICS_INTERVAL_S seconds."""
        if system_metrics not in (True, False):
            raise TrackingUnavailable(f"tracking.system_metrics={system_metrics!r}; valid: true, false")
        self.system_metrics = system_metrics
        self._monitor = None
        self.uri = resolve_uri(clean_uri(uri))
        if not isinstance(experiment, str) or not experiment.strip():
            raise TrackingUnavailable(f"tracking.experiment={experiment!r}: an experiment needs a name, "
                                      "e.g. tracking.experiment=initbench")
        if len(experiment) > MAX_EXPERIMENT_CHARS:
            raise TrackingUnavailable(f"tracking.experiment={experiment[:40]}... has {len(experiment)} characters; "
                                      f"MLflow's stores hold names of at most {MAX_EXPERIMENT_CHARS}")
        check_reachable(self.uri)
        self.experiment = experiment
        self.run_id: str | None = None
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        """The MLflow client, made on first use (for a SQLite URI that creates the file, under a lock)."""
        if self._client is None:
            self._client = open_client(self.uri)
        return self._client

    def _store_missing(self) -> bool:
        """A SQLite store that does not exist yet: it holds no runs, and looking would create it."""
        path = sqlite_path(self.uri)
        return path is not None and not path.exists()

    def _experiment_id(self, create: bool) -> str | None:
        if not create and self._store_missing():
            return None
        found = self.client.get_experiment_by_name(self.experiment)
        if not create:
            return found.experiment_id if found else None
        if found is None:
            try:
                return self.client.create_experiment(self.experiment, tags=EXPERIMENT_TAGS)
            except MlflowException:  # a parallel job created it first
                found = self.client.get_experiment_by_name(self.experiment)
                if found is None:
                    raise
        if KIND_TAG not in found.tags:  # made by an older initbench, or by hand: tell the UI what it holds
            self.client.set_experiment_tag(found.experiment_id, KIND_TAG, EXPERIMENT_TAGS[KIND_TAG])
        return found.experiment_id

    def experiment_url(self) -> str:
        """The experiment's page in MLflow's UI (this server's, or `mlflow ui`'s default address for a
        local store), on its runs: MLflow 3.17's UI opens an experiment on its GenAI overview unless
        the address says workflowType=machine_learning (it does not read mlflow.experimentKind)."""
        base = self.uri.rstrip("/") if self.uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{UI_PORT}"
        return f"{redact(base)}/#/experiments/{self._experiment_id(create=False)}?workflowType=machine_learning"

    def ensure_experiment(self) -> str:
        """Create the store's tables and the experiment now (once, before parallel jobs race to)."""
        return self._experiment_id(create=True)

    def runs_with_hash(self, digest: str) -> list:
        """Earlier runs of the same config (tag initbench.config_hash), newest first."""
        experiment_id = self._experiment_id(create=False)
        if experiment_id is None:
            return []
        return self.client.search_runs([experiment_id], f"tags.`initbench.config_hash` = '{digest}'",
                                       order_by=["attributes.start_time DESC"])

    def find_sweep_run(self, sweep: str):
        """The parent run of sweep `sweep` (tagged PARENT_TAG), or None."""
        experiment_id = self._experiment_id(create=False)
        if experiment_id is None:
            return None
        query = f"tags.`{PARENT_TAG}` = 'true' and tags.`initbench.sweep` = '{sweep}'"
        found = self.client.search_runs([experiment_id], query, max_results=1)
        return found[0] if found else None

    def sweep_run(self, sweep: str, params: dict[str, str] | None = None, tags: dict[str, str] | None = None) -> str:
        """The id of sweep `sweep`'s parent run (named `sweep-<id>`, tagged PARENT_TAG), RUNNING: the one
        a run of the same sweep opened before (reopened), or a new one with `params` and `tags`. Jobs
        name it as their parent (tag mlflow.parentRunId)."""
        found = self.find_sweep_run(sweep)
        if found is not None:
            if found.info.status != "RUNNING":
                self.client.update_run(found.info.run_id, "RUNNING")
            return found.info.run_id
        run = self.client.create_run(self._experiment_id(create=True), run_name=f"sweep-{sweep}",
                                     tags={**(tags or {}), PARENT_TAG: "true", "initbench.sweep": sweep})
        self._log_params(run.info.run_id, params or {})
        return run.info.run_id

    def close_sweep_run(self, run_id: str, status: str = "FINISHED") -> None:
        """End a sweep's parent run: FINISHED, or FAILED where a job failed (its run says why); a store
        that is gone by now is reported, not raised, since this runs as the process exits."""
        try:
            self.client.set_terminated(run_id, status)
        except Exception as err:  # noqa: BLE001  (at exit: say it, do not mask the exit status)
            print(f"could not close the sweep's parent run {run_id}: {type(err).__name__}: {err}")

    def add_to_sweep(self, run_id: str, sweep: str) -> None:
        """Count the earlier run `run_id` as a job of sweep `sweep` too, from now (tag MEMBER_TAG_PREFIX + sweep)."""
        self.client.set_tag(run_id, f"{MEMBER_TAG_PREFIX}{sweep}", f"{time.time() * 1000:.0f}")

    def mark_killed(self, run) -> None:
        """Close a run whose process is gone; its logged metrics stay."""
        self.client.set_tag(run.info.run_id, "initbench.status", "killed")
        self.client.set_terminated(run.info.run_id, "KILLED")

    def start(self, run_name: str, params: dict[str, str], tags: dict[str, str]) -> str:
        """Open a run with `params` and `tags`, plus the host, process and first heartbeat that tell
        another process whether this one is still alive (see liveness)."""
        alive = {HOST_TAG: socket.gethostname(), PROCESS_TAG: process_token(os.getpid()),
                 HEARTBEAT_TAG: f"{time.time():.0f}"}
        run = self.client.create_run(self._experiment_id(create=True), run_name=run_name, tags={**tags, **alive})
        self.run_id = run.info.run_id
        self._log_params(self.run_id, params)
        if self.system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S,
                                                 tracking_uri=with_password(self.uri))
            self._monitor.start()
        return self.run_id

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        """Params in batches of at most 100, values cut to MLflow's 6000 characters."""
        entries = [Param(k, v if len(v) <= MAX_PARAM_CHARS else v[:MAX_PARAM_CHARS - 3] + "...")
                   for k, v in params.items()]
        for chunk in _chunks(entries, MAX_PARAMS):
            self.client.log_batch(run_id, params=chunk)

    # Metric points go through MLflow's asynchronous logging queue (MlflowClient.log_batch with
    # synchronous=False): one queue per store object, shared by every Tracker of this process on the same
    # URI (MLflow caches the store), written by its worker threads while training goes on. False: every
    # log_batch returns only once the store has it (scripts/bench_logging.py compares both). None (the
    # default): MLflow's own MLFLOW_ENABLE_ASYNC_LOGGING where it is set (false: synchronous), else True.
    asynchronous: bool | None = None

    def _asynchronous(self) -> bool:
        if self.asynchronous is not None:
            return self.asynchronous
        from mlflow.environment_variables import MLFLOW_ENABLE_ASYNC_LOGGING

        return MLFLOW_ENABLE_ASYNC_LOGGING.get() if MLFLOW_ENABLE_ASYNC_LOGGING.defined else True

    @property
    def _writes(self) -> list:
        """This run's asynchronous writes not yet checked, oldest first: (MLflow RunOperations, its metrics,
        its tags), so that a request the store refused as locked can be sent again."""
        return self.__dict__.setdefault("_async_writes", [])

    def _settle(self) -> list[str]:
        """Wait for this run's asynchronous writes; the errors of those that failed (none lost: a wait
        cut short by Ctrl-C leaves the rest for the next call)."""
        failures = []
        while self._writes:
            operation, metrics, tags = self._writes[0]
            try:
                operation.wait()
            except MlflowException as err:  # RunOperations.wait names every failed request
                try:
                    if not is_busy(err):
                        raise
                    self._say_locked(len(metrics), "")
                    self._send(metrics, tags)  # a failed request is one transaction: nothing of it was written
                except Exception as final:  # the store's error, MLflow's or SQLAlchemy's
                    failures.append(getattr(final, "message", str(final)))
            self._writes.pop(0)
        return failures

    def _send(self, metrics: list[Metric], tags: list[RunTag], retries: int = BUSY_RETRIES) -> None:
        """log_batch now; while the store answers that another writer has it locked, up to `retries` more
        times, saying so on stderr."""
        for attempt in range(1, retries + 2):
            try:
                return self.client.log_batch(self.run_id, metrics=metrics, tags=tags)
            except Exception as err:  # MLflow's wrapping of SQLAlchemy's OperationalError, or that error itself
                if attempt > retries or not is_busy(err):
                    raise
                self._say_locked(len(metrics), f" ({attempt} of {retries})")

    def _say_locked(self, points: int, attempt: str) -> None:
        print(f"the MLflow store is locked by another writer; sending {points} metric points of run {self.run_id} "
              f"again{attempt}", file=sys.stderr, flush=True)

    def log_points(self, points: list[tuple[str, float, int]]) -> None:
        """Log (key, value, step) points, with the heartbeat, in requests of at most 1,000 entries
        (MLflow's limit per log_batch: the first request carries 999 points and the heartbeat tag).

        Asynchronously (unless `asynchronous` says otherwise): the points are queued and this returns
        at once, after waiting for the previous call's writes, so at most one call (one epoch) of this
        run is ever in flight; a failure of those is raised here as WriteFailed (training stops and the
        run ends `failed`, as it would have at once had the write been synchronous)."""
        failures = self._settle()
        if failures:
            raise WriteFailed(f"MLflow failed to write metric points of run {self.run_id}: {'; '.join(failures)}")
        now = time.time()
        metrics = [Metric(key, value, int(now * 1000), step) for key, value, step in points]
        beat = [RunTag(HEARTBEAT_TAG, f"{now:.0f}")]
        for chunk in [metrics[:MAX_METRICS - 1], *_chunks(metrics[MAX_METRICS - 1:], MAX_METRICS)]:
            if self._asynchronous():
                operation = self.client.log_batch(self.run_id, metrics=chunk, tags=beat, synchronous=False)
                self._writes.append((operation, chunk, beat))
            else:
                self._send(chunk, beat)
            beat = []

    def log_datasets(self, datasets: list[dict]) -> None:
        """The data the run trained and was tested on, as MLflow dataset inputs (the UI's Datasets
        column): each {name, digest, context ("train" | "test"), source (a dict), profile (a dict)}."""
        inputs = [DatasetInput(MlflowDataset(d["name"], d["digest"], "code", json.dumps(d["source"]),
                                             profile=json.dumps(d["profile"])),
                               tags=[InputTag(MLFLOW_DATASET_CONTEXT, d["context"])]) for d in datasets]
        try:
            self.client.log_inputs(self.run_id, datasets=inputs)
        except MlflowException as err:
            # Parallel jobs (joblib, SLURM) log the same dataset to one experiment at once: MLflow's store
            # checks for it, then inserts it, so the second insert can fail. Then it exists: link it again.
            text = str(err).lower()
            if "datasets" not in text or not ("unique" in text or "duplicate" in text):
                raise
            self.client.log_inputs(self.run_id, datasets=inputs)

    def log_table(self, run_id: str, frame, path: str) -> None:
        """`frame` as the MLflow table `path` of run `run_id`, replacing the one logged there before
        (MLflow's log_table appends to an existing table: a second analysis would double its rows)."""
        if any(a.path == path for a in self.client.list_artifacts(run_id, str(Path(path).parent))):
            get_artifact_repository(self.client.get_run(run_id).info.artifact_uri).delete_artifacts(path)
        self.client.log_table(run_id, frame, path)

    def set_tags(self, tags: dict[str, str]) -> None:
        for chunk in _chunks([RunTag(k, str(v)) for k, v in tags.items()], MAX_TAGS):
            self.client.log_batch(self.run_id, tags=chunk)

    def log_artifact(self, path: str | Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def _terminate(self, mlflow_status: str) -> None:
        """MlflowClient.set_terminated (status, end time) without its first step, which shuts down the
        store's asynchronous queue: that queue serves every run of this process on this store (the runs
        of a batched sweep), and its thread notices a shut-down only when its 1 s poll times out, so
        each run end would cost up to a second. This run's own writes are all done by now (end).

        For the same reason the queue's exit handler, which joins that thread, would hold up the end of
        the process by up to a second; it guards writes no one waited for, and end() has waited for every
        write of every run of initbench's, so it is unregistered (the thread is a daemon)."""
        from mlflow.entities import RunStatus
        from mlflow.utils.time import get_current_time_millis

        store = getattr(getattr(self.client, "_tracking_client", None), "store", None)
        if store is None:  # an MLflow whose client is laid out differently: its own way, queue shut-down included
            self.client.set_terminated(self.run_id, mlflow_status)
            return
        store.update_run_info(self.run_id, RunStatus.from_string(mlflow_status), end_time=get_current_time_millis(),
                              run_name=None)
        exit_handler = getattr(getattr(store, "_async_logging_queue", None), "_at_exit_callback", None)
        if exit_handler is not None:
            atexit.unregister(exit_handler)

    def end(self, status: str, error: str | None = None) -> None:
        """Wait until every metric point handed to log_points is in the store (or its write failed),
        tag the run with its initbench status (and the end of the error text, where the exception is
        named) and close it.

        A failed asynchronous write makes the run end `failed` (MLflow FAILED, so a resumed sweep runs
        it again), with `WriteFailed: ...` after any error text of the caller in `initbench.error`. The
        run is closed either way; then, for a run that would have ended finished or diverged, end
        raises WriteFailed, so that the job fails. For failed and killed it does not: the caller is
        raising its own error already (a KeyboardInterrupt included), which this would hide."""
        if self._monitor is not None:  # its last samples go in before the run closes
            self._monitor.finish()
            self._monitor = None
        failures = self._settle()
        raising = False
        if failures:
            lost = f"WriteFailed: MLflow failed to write metric points (training ended {status}): {'; '.join(failures)}"
            error = f"{error}\n{lost}" if error else lost
            raising, status = status in ("finished", "diverged"), "failed"
        tags = {"initbench.status": status}
        if error:
            tags["initbench.error"] = error if len(error) <= MAX_ERROR_CHARS else "..." + error[-MAX_ERROR_CHARS:]
        self.set_tags(tags)
        self._terminate(MLFLOW_STATUS[status])
        run_id, self.run_id = self.run_id, None
        if raising:
            raise WriteFailed(f"run {run_id} ended failed: {lost}")
