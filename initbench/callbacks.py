"""Hydra callbacks: one sweep id shared by every job of a multirun (jobs may run in other processes)."""

import os
import uuid

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .run import SWEEP_ENV


class SweepId(Callback):
    """Sets INITBENCH_SWEEP_ID before the first job starts, unless the user set it (to add runs to an
    earlier sweep); launchers' worker processes inherit it."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        os.environ.setdefault(SWEEP_ENV, uuid.uuid4().hex[:12])
