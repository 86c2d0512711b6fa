"""`python scripts/analyze.py [options]`: the table, CSVs and plots of a sweep, printed and written."""

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

from ..store import TrackingUnavailable
from ..tracking import UI_PORT
from . import (
    DEFAULT_GROUP_BY,
    DEFAULT_LOSS_THRESHOLD,
    HEATMAP_MEASURES,
    NoRuns,
    NoValidation,
    OutUnusable,
    UnknownGroupKey,
    analyze,
)

# The runs' own defaults (conf/tracking/default.yaml), so that a bare command finds what a bare run logged.
TRACKING_CONF = Path(__file__).resolve().parents[2] / "conf" / "tracking" / "default.yaml"


def tracking_defaults() -> tuple[str, str]:
    conf = OmegaConf.load(TRACKING_CONF) if TRACKING_CONF.exists() else {}
    return conf.get("uri", "sqlite:///mlflow.db"), conf.get("experiment", "initbench")


def parser() -> argparse.ArgumentParser:
    uri, experiment = tracking_defaults()
    p = argparse.ArgumentParser(
        prog="analyze.py", description="Compare the init schemes of a sweep over seeds: a ranked markdown "
        "table (printed), CSVs and PNG plots (written to --out) logged to the sweep's parent run in MLflow.")
    p.add_argument("--tracking-uri", default=uri, help=f"MLflow store of the runs (default: {uri}, "
                   "relative to the working directory, as the runs use it)")
    p.add_argument("--experiment", default=experiment, help=f"MLflow experiment (default: {experiment})")
    p.add_argument("--sweep", default=None, help="sweep id (tag initbench.sweep); default: the sweep of the "
                   "most recently started run; 'all': every run of the experiment")
    p.add_argument("--group-by", default=",".join(DEFAULT_GROUP_BY),
                   help="comma-separated config keys: model, dataset, init (their .name) or any dotted "
                   "param such as optimizer.lr or model.depth (default: %(default)s)")
    p.add_argument("--baseline", default="default",
                   help="init that the others are tested against; 'none' for no test (default: %(default)s)")
    p.add_argument("--out", default=None, help="folder for the tables and plots (default: "
                   "analysis/<experiment>/<sweep> in the working "
                   "directory; results/ holds the project's committed findings)")
    p.add_argument("--loss-threshold", type=float, default=DEFAULT_LOSS_THRESHOLD,
                   help="training loss for the steps-to-threshold column (default: %(default)s)")
    p.add_argument("--no-linear-baseline", action="store_true",
                   help="leave out the linear baseline (logistic regression on the runs' training split), which "
                   "loads the runs' dataset; its fit is cached in the data folder")
    p.add_argument("--no-log", action="store_true", help="do not log the analysis to the sweep's parent run in MLflow")
    p.add_argument("--tune", metavar="KEY", default=None,
                   help="a param to tune per group (typically optimizer.lr): per group of the other --group-by "
                   "keys, the value with the best mean validation accuracy over seeds, its test accuracy at best "
                   "validation and the runner-up; writes tune.csv, tune_grid.csv and tune.png. Needs runs with "
                   "a validation split (val/acc)")
    p.add_argument("--heatmap", metavar="KEY1,KEY2", default=None,
                   help="two params (model.depth,init.sigma_w): --measure per cell over seeds, with n, one panel "
                   "per value of the other --group-by keys; writes heatmap_KEY1_KEY2.png and .csv")
    p.add_argument("--measure", choices=list(HEATMAP_MEASURES), default=None,
                   help="what --heatmap shows (default: test_acc_at_best_val, or final_test_acc for runs "
                   "without a validation split)")
    return p


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    keys = [k.strip() for k in args.group_by.split(",") if k.strip()]
    if not keys:
        cli.error("--group-by needs at least one key")
    axes = None
    if args.heatmap is not None:
        axes = [k.strip() for k in args.heatmap.split(",") if k.strip()]
        if len(axes) != 2 or axes[0] == axes[1]:
            cli.error(f"--heatmap needs two different keys, KEY1,KEY2 (got {args.heatmap!r})")
    elif args.measure is not None:
        cli.error("--measure goes with --heatmap")
    tune = args.tune.strip() if args.tune else None
    try:
        result = analyze(args.tracking_uri, args.experiment, args.sweep, keys,
                         None if args.baseline.lower() == "none" else args.baseline, args.out,
                         args.loss_threshold, log_to_mlflow=not args.no_log, tune_key=tune,
                         heatmap_keys=axes, measure=args.measure, linear_baseline=not args.no_linear_baseline)
    except NoRuns as err:
        print(f"nothing to analyze: {err}", file=sys.stderr)
        return 2
    except NoValidation as err:  # --tune or a validation measure on runs without a validation split
        print(f"cannot select on validation: {err}", file=sys.stderr)
        return 2
    except OutUnusable as err:
        print(f"cannot write the analysis: {err}", file=sys.stderr)
        return 2
    except TrackingUnavailable as err:  # a store that cannot be read: its own one-line reason
        print(f"TrackingUnavailable: {err}", file=sys.stderr)
        return 2
    except UnknownGroupKey as err:  # a bad --group-by; any other error is a bug and keeps its traceback
        cli.error(str(err))
    print(result.markdown)
    out = result.files[0].parent
    print(f"wrote {', '.join(p.name for p in result.files)} to {out}")
    if result.removed:
        print(f"removed what an earlier analysis left there: {', '.join(p.name for p in result.removed)}")
    uri = result.sweep.uri
    if result.sweep_run_id:
        print(f"logged them to the sweep's parent run {result.sweep_run_id} (sweep-{result.sweep.sweep}) "
              f"in experiment {result.sweep.experiment!r}")
    if uri.startswith(("http://", "https://")):  # a tracking server is its own UI
        print(f"open the runs in MLflow's UI: {uri}")
    else:
        print(f"open the runs with: mlflow ui --backend-store-uri {uri} --port {UI_PORT}")
    if result.log_error:  # the analysis succeeded: a warning, exit status 0
        print(f"warning: the summary could not be logged to MLflow ({uri}): {result.log_error}; --no-log skips "
              "this step", file=sys.stderr)
    return 0
