"""A user's mistake ends a command with its message alone and exit status 2: no traceback
(HYDRA_FULL_ERROR=1 shows one). (Hydra's own composition errors, found before initbench runs, end
with Hydra's message and status 1.) In a sweep it fails its job only."""

import os
import sys

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from .config import ConfigError
from .data import DatasetUnavailable, DataSizeError
from .footprint import TooLarge
from .init import InitError
from .packaged_data import DatasetCorrupt
from .store import TrackingUnavailable

# Found before training: the config, the data, the model's size, the policy against the model. The sweep records these.
REFUSED = (ConfigError, InitError, DatasetUnavailable, DatasetCorrupt, DataSizeError, TooLarge)
USER_ERRORS = (*REFUSED, TrackingUnavailable)


def exit_with_message(err: Exception) -> None:
    """Print `err` as one message and exit 2; re-raise it within a sweep (Hydra then fails that job
    and goes on) or when HYDRA_FULL_ERROR=1 asks for the traceback."""
    if HydraConfig.get().mode == RunMode.MULTIRUN or os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    print(f"{type(err).__name__}: {err}", file=sys.stderr)
    sys.exit(2)
