"""Hydra callbacks: one sweep id shared by every job of a multirun (jobs may run in other processes)."""

import os
import uuid

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .run import SWEEP_ENV
from .tracking import Tracker


class SweepId(Callback):
    """Before the first job of a multirun: sets INITBENCH_SWEEP_ID unless the user set it (to add runs
    to an earlier sweep), which launchers' worker processes inherit; and opens the tracking store and
    experiment once, so that an unreachable URI fails before any job and parallel jobs do not race to
    create the store's tables."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        os.environ.setdefault(SWEEP_ENV, uuid.uuid4().hex[:12])
        Tracker(config.tracking.uri, config.tracking.experiment).ensure_experiment()
