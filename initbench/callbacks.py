"""Hydra callbacks around a run or a sweep: credentials out of the config before Hydra saves it, one
sweep id per sweep command (jobs may run in other processes), the store opened once, SIGTERM handled."""

import atexit
import hashlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from . import __version__, interrupts
from .run import PARENT_ENV, SWEEP_ENV
from .store import TrackingUnavailable, clean_uri, redact
from .tracking import Tracker, git_commit

# Overrides that change how a sweep runs, not what it computes: left out of its id.
NOT_IN_SWEEP_ID = ("hydra", "tracking.rerun", "trainer.progress")


def scrub_credentials(config: DictConfig) -> None:
    """Move a password in tracking.uri to MLflow's own environment variables (see store.clean_uri) and
    take it out of the config and its recorded overrides, which Hydra writes to .hydra/*.yaml."""
    uri = config.tracking.uri
    clean = clean_uri(uri)
    if clean == uri:
        return
    with read_write(config), open_dict(config):
        config.tracking.uri = clean
        config.hydra.overrides.task = [o.replace(uri, clean) for o in config.hydra.overrides.task]
        config.hydra.job.override_dirname = str(config.hydra.job.override_dirname).replace(uri, redact(uri))


def sweep_id(config: DictConfig) -> str:
    """12 hex digits from the sweep's experiment and its overrides (in any order, without those of
    NOT_IN_SWEEP_ID) and sweeper params: the same sweep command gets the same id, so a resumed sweep
    stays one sweep."""
    overrides = sorted(o for o in config.hydra.overrides.task
                       if not o.lstrip("+~").split("=", 1)[0].startswith(NOT_IN_SWEEP_ID))
    params = OmegaConf.to_container(config.hydra.sweeper, resolve=False).get("params")
    what = {"experiment": config.tracking.experiment, "overrides": overrides, "sweeper": params}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:12]


def open_sweep_run(config: DictConfig) -> tuple[Tracker, str]:
    """Open the store, the experiment and the sweep's parent run (a resumed sweep's earlier one) and name
    it in INITBENCH_PARENT_RUN for the jobs; returns the tracker and the parent run's id."""
    tracker = Tracker(config.tracking.uri, config.tracking.experiment)
    sweep = os.environ[SWEEP_ENV]
    commit = git_commit()
    params = {"sweep.overrides": " ".join(OmegaConf.to_container(config.hydra.overrides.task))}
    tags = {"initbench.version": __version__, **({"initbench.git_commit": commit} if commit else {}),
            "mlflow.note.content": f"Sweep `{sweep}`: `python -m initbench -m {params['sweep.overrides']}`. "
                                   "`python scripts/analyze.py` puts its ranked table here."}
    parent = tracker.sweep_run(sweep, params, tags)
    os.environ[PARENT_ENV] = parent
    return tracker, parent


@contextmanager
def _refusing() -> Iterator[None]:
    """Hydra turns a callback's exception into a warning and goes on: a store that cannot be used
    stops the command here instead, with its message and exit status 2, before any job starts."""
    try:
        yield
    except TrackingUnavailable as err:
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(2)


class SweepId(Callback):
    """Before a single run: its config cleaned of credentials. Before the first job of a multirun: the
    same, INITBENCH_SWEEP_ID set unless the user set it (which launchers' worker processes inherit),
    the tracking store and experiment opened once (an unreachable URI fails before any job, parallel
    jobs do not race to create tables), the sweep's parent run opened (see open_sweep_run) and closed as
    the process exits (FINISHED, or FAILED when a job failed or the sweep stopped), and SIGTERM made to
    stop the sweep's workers and end their runs KILLED."""

    def __init__(self) -> None:
        self._previous_sigterm = None
        self._swept = False  # Hydra calls on_multirun_end only when every job of the sweep ended well

    def _close_parent(self, tracker: Tracker, parent: str) -> None:
        tracker.close_sweep_run(parent, "FINISHED" if self._swept else "FAILED")

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        with _refusing():
            scrub_credentials(config)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        with _refusing():
            scrub_credentials(config)
            if SWEEP_ENV not in os.environ:
                os.environ[SWEEP_ENV] = sweep_id(config)
                print(f"sweep {os.environ[SWEEP_ENV]} (the same command again resumes it)")
            tracker, parent = open_sweep_run(config)
        atexit.register(self._close_parent, tracker, parent)  # when this process exits, however
        self._previous_sigterm = interrupts.install(stop_children=True)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self._swept = True
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
