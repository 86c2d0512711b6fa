"""MLflow logging: one run per job, metrics in batches. The only module that writes to MLflow.

Conventions other tools rely on: run name `{model}-{init}-{dataset}-s{seed}`; params = the resolved
config flattened with dots; tags `initbench.status` (finished | diverged | failed), `initbench.sweep`,
`initbench.config_hash`, `initbench.version`, `initbench.torch`, `initbench.device`,
`initbench.git_commit`, `initbench.error`.
"""

import hashlib
import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

# MLflow's per-request limits (log_batch): 1000 metrics, 100 params, 100 tags; param values 6000 chars.
MAX_METRICS, MAX_PARAMS, MAX_TAGS, MAX_PARAM_CHARS = 1000, 100, 100, 6000
# Config groups that say where things go, not what is computed: left out of the config hash.
NOT_HASHED = ("paths", "tracking")
MLFLOW_STATUS = {"finished": "FINISHED", "diverged": "FINISHED", "failed": "FAILED"}


class TrackingUnavailable(ConnectionError):
    """The tracking URI cannot be reached."""


def resolve_uri(uri: str) -> str:
    """A relative sqlite path (sqlite:///mlflow.db) made absolute, so the printed URI works anywhere."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


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


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, naming the URI and the reason, when an http(s) tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as err:
        if err.code >= 500:  # an answer below 500 (401 from an auth proxy, say) means it is there
            raise TrackingUnavailable(f"MLflow tracking server {uri} answered HTTP {err.code}") from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingUnavailable(f"MLflow tracking server {uri} cannot be reached: {reason}") from err


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


class Tracker:
    """One MLflow run at a time in `experiment` at `uri`; the experiment is created by the first run."""

    def __init__(self, uri: str, experiment: str):
        self.uri = resolve_uri(uri)
        check_reachable(self.uri)
        self.experiment = experiment
        self.run_id: str | None = None
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        """The MLflow client, made on first use (for a SQLite URI that creates the file)."""
        if self._client is None:
            self._client = MlflowClient(self.uri)
        return self._client

    def _store_missing(self) -> bool:
        """A SQLite store that does not exist yet: it holds no runs, and looking would create it."""
        return self.uri.startswith("sqlite:///") and not Path(self.uri[len("sqlite:///"):]).exists()

    def _experiment_id(self, create: bool) -> str | None:
        if not create and self._store_missing():
            return None
        found = self.client.get_experiment_by_name(self.experiment)
        if found or not create:
            return found.experiment_id if found else None
        try:
            return self.client.create_experiment(self.experiment)
        except MlflowException:  # a parallel job created it first
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

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

    def mark_killed(self, run) -> None:
        """Close a run that a killed process left RUNNING; its logged metrics stay."""
        self.client.set_tag(run.info.run_id, "initbench.status", "killed")
        self.client.set_terminated(run.info.run_id, "KILLED")

    def start(self, run_name: str, params: dict[str, str], tags: dict[str, str]) -> str:
        run = self.client.create_run(self._experiment_id(create=True), run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        entries = [Param(k, v if len(v) <= MAX_PARAM_CHARS else v[:MAX_PARAM_CHARS - 3] + "...")
                   for k, v in params.items()]
        for chunk in _chunks(entries, MAX_PARAMS):
            self.client.log_batch(self.run_id, params=chunk)
        return self.run_id
    def log_points(self, points: list[tuple[str, float, int]]) -> None:
        """Log (key, value, step) points in batches of at most 1000."""
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value, step in points]
        for chunk in _chunks(metrics, MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=chunk)

    def set_tags(self, tags: dict[str, str]) -> None:
        for chunk in _chunks([RunTag(k, str(v)) for k, v in tags.items()], MAX_TAGS):
            self.client.log_batch(self.run_id, tags=chunk)

    def log_artifact(self, path: str | Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def end(self, status: str, error: str | None = None) -> None:
        """Tag the run with its initbench status (and error text) and close it."""
        tags = {"initbench.status": status}
        if error:
            tags["initbench.error"] = error[:5000]
        self.set_tags(tags)
        self.client.set_terminated(self.run_id, MLFLOW_STATUS[status])
        self.run_id = None
