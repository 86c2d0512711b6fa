"""Which keys a table groups runs by: those asked for, and every other param in which runs of one group
differ, so that no row averages over two configs (a swept init.sigma_w, an init.rules override)."""

import pandas as pd

from .stats import param_column

SEED = "params.seed"
# Params that say where things go or how progress shows, not what is computed (the config hash leaves
# paths and tracking out too; trainer.progress is a progress bar).
NOT_COMPARED = ("params.paths.", "params.tracking.", "params.trainer.progress")
ABSENT = "(absent)"  # a param some runs lack: it differs from any value the others have


def differing_keys(runs: pd.DataFrame, group_keys: list[str]) -> list[str]:
    """The params (as --group-by names them, sorted) in which two runs of one group of `group_keys` differ,
    the seed aside: a param equal to the seed in every run (dataset.split_seed=${seed}) is the seed too."""
    grouped_by = [param_column(runs, key) for key in group_keys]
    seed = runs.get(SEED)
    candidates = [column for column in runs.columns
                  if column.startswith("params.") and column != SEED and column not in grouped_by
                  and not column.startswith(NOT_COMPARED) and not (seed is not None and runs[column].eq(seed).all())]
    if not candidates:
        return []
    distinct = runs[grouped_by + candidates].fillna(ABSENT).groupby(grouped_by, dropna=False).nunique()
    return sorted(column.removeprefix("params.") for column in candidates if (distinct[column] > 1).any())
