"""MLflow -> pandas: the runs of one sweep (one row per run) and their metric histories (a long table).

Reads only. Conventions come from initbench.tracking: tags `initbench.status`, `initbench.sweep`;
params are the resolved config flattened with dots, as strings; the runs' init_report.csv artifact
lists the parameters in model order.
"""

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from unittest import mock

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ..metric_keys import metric_name
from ..store import clean_uri, open_client, resolve_uri, sqlite_path, with_password
from ..tracking import MEMBER_TAG_PREFIX, PARENT_TAG

STATUS_TAG, SWEEP_TAG = "initbench.status", "initbench.sweep"
HASH_TAG = "tags.initbench.config_hash"  # the column of the tag that names a run's exact config
SUMMARY_TAG = "initbench.summary"  # the summary runs of analyses before parent runs: never analyzed
NOT_JOBS = (SUMMARY_TAG, PARENT_TAG)  # runs that hold a sweep or its analysis, not a job
# Per-epoch histories (per step for train/loss). val/* exist only in runs with a validation split
# (dataset.val_size > 0; runs logged before initbench had one have none).
VAL_KEYS = ("val/loss", "val/acc")
HISTORY_KEYS = ("train/loss", "train/acc", *VAL_KEYS, "test/loss", "test/acc")
# First-epoch gradient norms: vitals/grad_norm/<param>, or grad_norm/<param> in runs logged before 2026-11.
GRAD_PREFIXES = ("vitals/grad_norm/", "grad_norm/")
# Per-layer activation std and dead-unit fraction, at init and each epoch's end; runs logged before 2026-11
# have act_std/<layer> at init only. Not backprop_std or the Jacobian: one point each (step 0), so the
# runs table's last value is the whole history.
VITALS_PREFIXES = ("vitals/act_std/", "vitals/dead_frac/", "act_std/")
# An MLflow run status -> ours, for runs that lack the initbench.status tag.
FROM_MLFLOW = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "killed", "RUNNING": "running"}


class NoRuns(LookupError):
    """Nothing to analyze; the message says what was asked for and what the store holds."""


@dataclass
class SweepRuns:
    """The runs of one sweep: `runs` has one row per run (run_id, run_name, status, start_time, params.*,
    metrics.* as last logged, tags.*); `curves` has columns run_id, key, step, value."""

    uri: str
    experiment: str
    sweep: str
    runs: pd.DataFrame
    curves: pd.DataFrame
    superseded: pd.DataFrame = field(default_factory=pd.DataFrame)  # earlier runs of a re-run config


def open_store(uri: str) -> MlflowClient:
    """A client for `uri`; a sqlite file that does not exist is NoRuns (MLflow would create it empty)."""
    path = sqlite_path(uri)
    if path is not None and not path.exists():
        raise NoRuns(f"no MLflow store at {uri}: the file does not exist. Pass --tracking-uri, the URI "
                     "printed at the end of a run.")
    return open_client(uri)


def search_frame(client: MlflowClient, experiment_ids: list[str]) -> pd.DataFrame:
    """All active runs of the experiments but those tagged NOT_JOBS (a sweep's parent, old summary
    runs), in mlflow.search_runs' pandas layout.

    mlflow.search_runs itself reads the process-global tracking URI (it has no URI argument), and
    setting that also exports MLFLOW_TRACKING_URI to every subprocess: so page with the client."""
    rows, token = [], None
    while True:
        page = client.search_runs(experiment_ids, max_results=1000, page_token=token)
        for run in page:
            if any(run.data.tags.get(tag) == "true" for tag in NOT_JOBS):
                continue
            row = {"run_id": run.info.run_id, "run_name": run.info.run_name,
                   "experiment_id": run.info.experiment_id, "mlflow_status": run.info.status,
                   "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True)}
            row.update({f"params.{k}": v for k, v in run.data.params.items()})
            row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
            row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
            rows.append(row)
        token = page.token
        if not token:
            break
    return pd.DataFrame(rows)


def _sweep_of(frame: pd.DataFrame) -> pd.Series:
    return frame.get(f"tags.{SWEEP_TAG}", pd.Series(None, index=frame.index)).fillna("(none)")


def joined_at(frame: pd.DataFrame) -> pd.DataFrame:
    """Which runs each sweep holds beyond its own: (run_id, sweep, time) per run of an earlier sweep that a
    later sweep's job found done and skipped (tag MEMBER_TAG_PREFIX + sweep id, see initbench.run.join_sweep)."""
    prefix = f"tags.{MEMBER_TAG_PREFIX}"
    rows = [(run_id, column[len(prefix):], pd.to_datetime(int(value), unit="ms", utc=True))
            for column in frame.columns if column.startswith(prefix)
            for run_id, value in zip(frame.run_id, frame[column], strict=True) if isinstance(value, str)]
    return pd.DataFrame(rows, columns=["run_id", "sweep", "time"])


def latest_sweep(frame: pd.DataFrame, joined: pd.DataFrame) -> str:
    """The sweep that a job started or joined last."""
    times = pd.concat([frame.groupby("sweep").start_time.max(), joined.groupby("sweep").time.max()])
    return times.groupby(level=0).max().idxmax()


def describe_store(client: MlflowClient, uri: str) -> str:
    """Each experiment of the store with its sweeps (id, start, number of runs, inits), newest first."""
    lines = [f"experiments and sweeps in {uri}:"]
    for exp in client.search_experiments():
        frame = search_frame(client, [exp.experiment_id])
        lines.append(f"  experiment {exp.name!r}: {len(frame)} runs")
        if frame.empty:
            continue
        frame = frame.assign(sweep=_sweep_of(frame))
        by_sweep = frame.groupby("sweep").agg(start=("start_time", "min"), runs=("run_id", "size"))
        for sweep, row in by_sweep.sort_values("start", ascending=False).iterrows():
            inits = frame.loc[frame.sweep == sweep].get("params.init.name", pd.Series(dtype=str))
            names = ", ".join(sorted(inits.dropna().unique())) or "?"
            lines.append(f"    sweep {sweep}  started {row.start:%Y-%m-%d %H:%M} UTC  {row.runs} runs  "
                         f"init: {names}")
    if len(lines) == 1:
        lines.append("  (no experiments)")
    return "\n".join(lines)


def run_status(frame: pd.DataFrame) -> pd.Series:
    """finished | diverged | failed from the initbench tag; running (or killed) for a run that never
    ended, from MLflow's status where the tag says running or is missing."""
    tag = frame.get(f"tags.{STATUS_TAG}", pd.Series(None, index=frame.index))
    from_mlflow = frame["mlflow_status"].map(FROM_MLFLOW).fillna("running")
    ended = tag.isin(["finished", "diverged", "failed"])
    return tag.where(ended, from_mlflow.where(from_mlflow != "finished", "running"))


def latest_per_config(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, superseded): one run per exact config (tag initbench.config_hash, seed included). A run
    that ended beats one that never did (a killed job resumed), then the later start (rerun=true)."""
    if HASH_TAG not in frame:
        return frame, frame.iloc[:0]
    ended = frame.status.isin(["finished", "diverged", "failed"])
    ranked = frame.assign(_ended=ended).sort_values(["_ended", "start_time"])
    later = ranked.duplicated(HASH_TAG, keep="last") & ranked[HASH_TAG].notna()
    kept = ranked[~later].drop(columns="_ended").sort_values("start_time", ignore_index=True)
    return kept, ranked[later].drop(columns="_ended")


def fetch_histories(client: MlflowClient, runs: pd.DataFrame, uri: str) -> pd.DataFrame:
    """Every history (HISTORY_KEYS, the gradient norms and the per-layer vitals: GRAD_PREFIXES,
    VITALS_PREFIXES) of every run: one row per point.

    The public client fetches one (run, metric) history per call; against a tracking server these
    calls are latency-bound and go out 8 at a time, against a local store serially (faster there)."""
    prefixes = GRAD_PREFIXES + VITALS_PREFIXES
    wanted = [c for c in runs.columns
              if c.startswith("metrics.") and (c[8:] in HISTORY_KEYS or c[8:].startswith(prefixes))]
    pairs = [(run_id, col[8:]) for col in wanted
             for run_id in runs.loc[runs[col].notna(), "run_id"]]

    def history(pair: tuple[str, str]) -> list[tuple]:
        return [(pair[0], pair[1], m.step, m.value) for m in client.get_metric_history(*pair)]

    workers = 8 if uri.startswith(("http://", "https://")) else 1
    with ThreadPoolExecutor(workers) as pool:
        points = [p for chunk in pool.map(history, pairs) for p in chunk]
    curves = pd.DataFrame(points, columns=["run_id", "key", "step", "value"])
    # A metric re-logged at the same step keeps its last value, as MLflow's own "latest" does.
    return curves.drop_duplicates(["run_id", "key", "step"], keep="last").sort_values(
        ["run_id", "key", "step"], ignore_index=True)


def load_sweep(uri: str, experiment: str, sweep: str | None = None) -> SweepRuns:
    """The runs of `sweep` (the one a job started or joined last when None; every run of the experiment
    when "all"): its own runs and the earlier runs its jobs found done and skipped.

    Raises NoRuns, listing the experiments and sweeps that exist, when there is nothing to analyze."""
    uri = resolve_uri(clean_uri(uri))
    client = open_store(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise NoRuns(f"no experiment {experiment!r} in {uri}.\n{describe_store(client, uri)}")
    frame = search_frame(client, [exp.experiment_id])
    if frame.empty:
        raise NoRuns(f"experiment {experiment!r} has no runs.\n{describe_store(client, uri)}")
    frame = frame.assign(sweep=_sweep_of(frame))
    joined = joined_at(frame)
    if sweep is None:
        sweep = latest_sweep(frame, joined)
    if sweep != "all":  # its own runs and those its jobs found done, whenever they ran
        member = frame.run_id.isin(joined.run_id[joined.sweep == sweep])
        frame = frame[(frame.sweep == sweep) | member].reset_index(drop=True)
    if frame.empty:
        raise NoRuns(f"no runs of sweep {sweep!r} in experiment {experiment!r}.\n"
                     f"{describe_store(client, uri)}")
    frame.insert(2, "status", run_status(frame))
    frame, superseded = latest_per_config(frame)
    return SweepRuns(uri, experiment, sweep, frame, fetch_histories(client, frame, uri), superseded)


def parameter_order(uri: str, run_id: str) -> pd.DataFrame | None:
    """The run's init_report.csv (param, shape, ... in model order), or None where it has none; `param` as
    the metric keys write it (metric_name)."""
    client = MlflowClient(with_password(uri))
    quiet = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}  # no progress bar for one small file
    with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, quiet):
        try:
            path = client.download_artifacts(run_id, "init_report.csv", tmp)
        except (MlflowException, OSError):
            return None
        report = pd.read_csv(path, dtype={"param": str, "shape": str})
    if not {"param", "shape"} <= set(report.columns):
        return None
    return report.assign(param=report.param.astype(str).map(metric_name))
