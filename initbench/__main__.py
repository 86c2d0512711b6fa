"""`initbench [overrides]` (or `python -m initbench`): compose the Hydra config and run one job (or a sweep with -m).

A user's mistake (a bad config, a policy that does not fit the model, a missing dataset, a tracking
store that cannot be used) ends a single run with its message and exit status 2 (see errors.py).
"""

import gc

import hydra
from omegaconf import DictConfig

from .errors import USER_ERRORS, exit_with_message
from .run import run


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        result = run(cfg)
    except USER_ERRORS as err:
        exit_with_message(err)
    return result.final.get("test/acc") if result else None


def cli() -> None:
    """The `initbench` command (and `python -m initbench`)."""
    try:
        main()
    finally:
        # Everything is written (each run's Tracker.end waited for its writes): leave the objects to the
        # OS. Frozen, they escape the interpreter's last garbage collections over all that torch, MLflow
        # and SQLAlchemy loaded: the exit takes 0.3 s instead of 1.8 s on 2 CPU cores (docs/benchmarks.md,
        # Logging cost).
        gc.freeze()


if __name__ == "__main__":
    cli()
