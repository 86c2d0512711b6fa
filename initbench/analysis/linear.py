"""The linear baseline of a comparison: multinomial logistic regression (scikit-learn's
LogisticRegression, its defaults: L2, C = 1, lbfgs) fit on the runs' own training split, as the
trainer sees it (normalized pixels, flattened), and scored on their test set. A table on a dataset
says with it what "trained" means there: on digits a linear model already gets about 97%.

Fits are cached in the data folder (linear_baselines.json), keyed by the digests of the training and
test tensors and scikit-learn's version: the same data, the same number, fit once.
"""

import json
import os
import tempfile
import warnings
from pathlib import Path

import pandas as pd
import yaml

from ..data import load_dataset

CACHE = "linear_baselines.json"
MAX_ITER = 1000  # lbfgs iterations (scikit-learn's default 100 stops short on 784 pixels)


def dataset_configs(runs: pd.DataFrame) -> list[dict]:
    """The distinct dataset configs of `runs` (their params dataset.*, values parsed as YAML), each with
    `data_dir`, the folder the runs read it from (params paths.data_dir; None where a run did not log it or
    logged it unresolved, as a job refused before its config resolved does: the default folder then)."""
    columns = [c for c in runs.columns if c.startswith("params.dataset.")]
    configs = []
    for _, row in runs[columns + [c for c in ["params.paths.data_dir"] if c in runs]].drop_duplicates().iterrows():
        cfg = {c[len("params.dataset."):]: yaml.safe_load(row[c]) for c in columns if isinstance(row[c], str)}
        data_dir = row.get("params.paths.data_dir")  # NaN: not logged; "${...}": a refused job's, unresolved
        cfg["data_dir"] = data_dir if isinstance(data_dir, str) and "${" not in data_dir else None
        if cfg.get("name") and cfg not in configs:
            configs.append(cfg)
    return configs


def linear_test_acc(cfg: dict, default_dir: Path) -> float:
    """Test accuracy of logistic regression on the training split of dataset config `cfg`."""
    from sklearn import __version__ as sklearn_version
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    folder = Path(cfg.get("data_dir") or default_dir).expanduser()
    data = load_dataset({k: v for k, v in cfg.items() if k != "data_dir"}, folder)
    key = f"{data.digest('train')}-{data.digest('test')}-sklearn{sklearn_version}"
    cache = folder / CACHE
    known = json.loads(cache.read_text()) if cache.exists() else {}
    if key not in known:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LogisticRegression(max_iter=MAX_ITER).fit(data.train_x.flatten(1).numpy(), data.train_y.numpy())
        known[key] = float(model.score(data.test_x.flatten(1).numpy(), data.test_y.numpy()))
        _write_atomic(cache, known)
    return known[key]


def _write_atomic(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as out:
        json.dump(value, out, indent=1, sort_keys=True)
    os.replace(tmp, path)


def linear_note(runs: pd.DataFrame, default_dir: Path) -> str:
    """One line for the table's notes: the linear baseline's test accuracy per dataset config of `runs`
    (a dataset that cannot be loaded here says why instead)."""
    parts = []
    for cfg in dataset_configs(runs):
        shown = ", ".join(f"{k}={v}" for k, v in cfg.items() if k not in ("name", "data_dir"))
        where = f"{cfg['name']}" + (f" ({shown})" if shown else "")
        try:
            parts.append(f"{where}: **{100 * linear_test_acc(cfg, default_dir):.2f} %**")
        except (OSError, ValueError) as err:  # the data is not on this machine, or its config is not loadable
            parts.append(f"{where}: — ({type(err).__name__}: {str(err).splitlines()[0][:200]})")
    if not parts:
        return ""
    return ("Linear baseline, test accuracy of a multinomial logistic regression (scikit-learn, C = 1) on the "
            "same training split and test set: " + "; ".join(parts) + ".")
