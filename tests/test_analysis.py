"""Analysis of a real small sweep: groups, counts, means against pandas on the raw runs, files, MLflow.

One sweep for the module (digits, MLP, init=default,kaiming x seed=0,1,2, one epoch on 256 examples),
plus one kaiming run that diverges (lr=1e6), added to the same sweep through INITBENCH_SWEEP_ID; and a
hand-made sweep with a killed run, in another experiment of the same store. Fast tests use hand-made
sweeps in a store of their own (seeds that agree exactly; stores that refuse the analysis' logging).
"""

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from scipy import stats

from initbench.analysis import NoRuns, SweepRuns, analyze, linear, load_sweep
from initbench.analysis.cli import main
from initbench.analysis.stats import bootstrap_ci, cast, first_epoch_grad_norms, steps_to_reach
from initbench.data import load_dataset
from initbench.run import SWEEP_ENV, run
from initbench.tracking import PARENT_TAG, Tracker

from .conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["model=mlp", "dataset.train_size=256", "trainer.epochs=1", "trainer.device=cpu",
         "trainer.progress=false"]


def initbench(*args: str, cwd: Path, **env: str) -> None:
    # one torch thread: on a small shared CPU, two threads wait on each other (about 10x slower here)
    environ = {**os.environ, "INITBENCH_DATA_DIR": str(cwd / "data"), "PYTHONPATH": str(ROOT),
               "OMP_NUM_THREADS": "1", **env}
    command = [sys.executable, "-m", "initbench", *args, *QUICK, f"tracking.uri={uri_of(cwd)}"]
    done = subprocess.run(command, cwd=cwd, env=environ, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def uri_of(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def raw_runs(uri: str) -> pd.DataFrame:
    """The jobs' runs straight from MLflow (not the sweep's parent run), one row each: what the analysis
    is checked against."""
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("initbench").experiment_id])
    rows = []
    for logged in (r for r in runs if PARENT_TAG not in r.data.tags):
        params, tags = logged.data.params, logged.data.tags
        losses = [m.value for m in client.get_metric_history(logged.info.run_id, "train/loss")]
        rows.append({"run_id": logged.info.run_id, "init": params.get("init.name"), "seed": params.get("seed"),
                     "status": tags["initbench.status"],
                     "sweep": tags["initbench.sweep"],
                     "test_acc": logged.data.metrics.get("test/acc", math.nan),
                     "train_loss": np.mean(losses) if losses else math.nan})
    return pd.DataFrame(rows)


def hand_acc(seed: int, epoch: int) -> float:
    return 0.5 + 0.1 * epoch + 0.01 * seed


def log_hand_run(client: MlflowClient, experiment: str, seed: int, epochs: int, status: str,
                 test_acc: Callable[[int, int], float] = hand_acc) -> None:
    """A run of sweep `hand` logged as initbench logs one, of a 3-epoch config: 2 steps per epoch,
    train/loss 2 / (step + seed), test/acc test_acc(seed, epoch); test/loss only if it finished."""
    run_id = client.create_run(experiment, run_name=f"mlp-default-digits-s{seed}").info.run_id
    params = {"model.name": "mlp", "dataset.name": "digits", "init.name": "default", "seed": str(seed),
              "trainer.epochs": "3"}
    tags = {"initbench.sweep": "hand", "initbench.status": status, "initbench.config_hash": f"h{seed}"}
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    points = [Metric("train/loss", 2.0 / (step + seed), 0, step) for step in range(1, 2 * epochs + 1)]
    for epoch in range(1, epochs + 1):
        points += [Metric("test/acc", test_acc(seed, epoch), 0, epoch), Metric("train/acc", 0.6, 0, epoch)]
        points += [Metric("test/loss", 1.0, 0, epoch)] if status == "finished" else []
    client.log_batch(run_id, metrics=points)
    if status == "finished":
        client.set_terminated(run_id)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sweep")
    initbench("-m", "init=default,kaiming", "seed=0,1,2", cwd=folder)
    [sweep] = raw_runs(uri_of(folder)).sweep.unique()
    # the same job as the sweep's but for lr, in this process (faster than a second subprocess)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SWEEP_ENV, sweep)
        patch.setenv("INITBENCH_DATA_DIR", str(folder / "data"))
        diverging = compose_config([*QUICK, "init=kaiming", "seed=3", "optimizer.lr=1e6"], folder)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            assert run(diverging).status == "diverged"
        finally:
            torch.set_num_threads(threads)
    return folder


@pytest.fixture(scope="module")
def result(store):
    return analyze(uri_of(store), out=store / "results")


@pytest.mark.slow
def test_groups_and_counts(result):
    """The diverging run differs from the sweep's kaiming runs in optimizer.lr: a group of its own."""
    table = result.summary.set_index(["init", "optimizer.lr"])
    assert sorted(table.index) == [("default", 0.02), ("kaiming", 0.02), ("kaiming", 1e6)]
    assert (table.model == "mlp").all() and (table.dataset == "digits").all()
    counts = ["n_runs", "n_seeds", "n_used", "n_diverged", "n_failed", "n_incomplete"]
    assert table.loc[("default", 0.02), counts].tolist() == [3, 3, 3, 0, 0, 0]
    assert table.loc[("kaiming", 0.02), counts].tolist() == [3, 3, 3, 0, 0, 0]
    assert table.loc[("kaiming", 1e6), counts].tolist() == [1, 1, 0, 1, 0, 0]
    assert result.runs.set_index("seed").query("init == 'kaiming'").loc[3, "status"] == "diverged"
    assert "grouped also by optimizer.lr (runs of one group differed in them)" in result.markdown


@pytest.mark.slow
def test_means_equal_pandas_on_the_raw_runs_without_the_diverged_one(store, result):
    raw = raw_runs(uri_of(store))
    finished = raw[raw.status == "finished"].groupby("init")
    table = result.summary[result.summary.n_used > 0].set_index("init").sort_index()  # the sweep's lr
    # one epoch: final test accuracy = test accuracy at best val (where the runs have a validation split);
    # final train loss = the mean of all its batch losses
    pairs = [("final_test_acc", "test_acc"), ("final_train_loss", "train_loss")]
    if result.runs.has_val.any():
        pairs.append(("test_acc_at_best_val", "test_acc"))
    for column, raw_column in pairs:
        for stat in ("mean", "std"):
            expected = finished[raw_column].agg(stat)
            pd.testing.assert_series_equal(table[f"{column}_{stat}"], expected, check_names=False)
    kaiming = raw[raw.init == "kaiming"]
    assert not math.isclose(kaiming.test_acc.mean(), table.loc["kaiming", "final_test_acc_mean"])  # it counts
    low, high = table.loc["kaiming", ["final_test_acc_ci_low", "final_test_acc_ci_high"]]
    assert low <= table.loc["kaiming", "final_test_acc_mean"] <= high
    a, b = (finished.get_group(i).test_acc for i in ("kaiming", "default"))  # = test acc at best val here
    assert table.loc["kaiming", "p_welch"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert table.loc["kaiming", "p_holm"] == table.loc["kaiming", "p_welch"]  # one comparison: unchanged
    assert math.isnan(table.loc["default", "p_welch"])


@pytest.mark.slow
def test_markdown_is_ranked_and_says_diverged_runs_are_not_averaged(result):
    rows = [line for line in result.markdown.splitlines() if line.startswith(("| 1 |", "| 2 |", "| 3 |"))]
    by = "best_val_acc_mean" if result.runs.has_val.any() else "final_test_acc_mean"  # never a test maximum
    ranked = result.summary.sort_values(by, ascending=False).init.tolist()  # the diverged group, unscored, last
    assert [row.split("|")[2].strip() for row in rows] == ranked
    assert "| 3 | kaiming | 1000000.0 | 1 | 1 | 0 |" in rows[2]  # n, diverged, failed
    assert "those are counted, not averaged in" in result.markdown
    assert "(model=mlp, dataset=digits)" in result.markdown  # keys shared by every group go in the caption


@pytest.mark.slow
def test_files_and_non_empty_pngs(store, result):
    out = store / "results"
    names = {"summary.md", "summary.csv", "runs.csv", "curves.csv", "grad_norms.csv", "vitals.csv", "train_loss.png",
             "test_acc.png", "grad_norms.png", "act_std.png", "dead_frac.png"} | (
                {"val_acc.png"} if result.runs.has_val.any() else set())
    assert {p.name for p in result.files} == names and all(p.parent == out for p in result.files)
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert (out / "summary.md").read_text() == result.markdown
    curves = pd.read_csv(out / "curves.csv")
    assert curves.run_id.nunique() == 7
    val = {"val/loss", "val/acc"} if result.runs.has_val.any() else set()
    assert set(curves.key) == {"train/loss", "train/acc", "test/acc", "test/loss"} | val
    grads = pd.read_csv(out / "grad_norms.csv")
    layers = grads[grads.is_layer & (grads.init == "default")].sort_values("position").param.tolist()
    assert layers == ["layers.0.0.weight", "layers.1.0.weight", "layers.2.0.weight", "head.weight"]  # model order


@pytest.mark.slow
def test_the_analysis_goes_to_the_sweeps_parent_run_and_later_analysis_ignores_it(store, result):
    client = MlflowClient(uri_of(store))
    parent = client.get_run(result.sweep_run_id)
    assert parent.info.run_name == f"sweep-{result.sweep.sweep}" and parent.data.tags[PARENT_TAG] == "true"
    assert parent.data.tags["initbench.sweep"] == result.sweep.sweep
    description = parent.data.tags["mlflow.note.content"]  # its Description: the ranking in a few columns
    assert description == result.overview and result.markdown.split("\n")[0] in description  # the caption
    header = description.split("\n")[0]
    assert header.startswith("| # | init | optimizer.lr | n | diverged |") and header.count("|") == 8, header
    logged = {a.path for a in client.list_artifacts(result.sweep_run_id, "analysis")}
    assert logged == {f"analysis/{p.name}" for p in result.files} | {"analysis/summary.json"}
    assert parent.data.tags["initbench.analysis.group_by"] == "model,dataset,init,optimizer.lr"  # what it grouped by
    again = load_sweep(uri_of(store), "initbench")  # the parent run is not a job
    assert again.sweep == result.sweep.sweep and len(again.runs) == 7


@pytest.mark.slow
def test_the_table_says_what_a_linear_model_gets_on_the_same_split(store, result):
    """Logistic regression on the runs' own training split and test set, fit once (cached by the data's
    digests in the data folder): on digits it is the bar that a trained net has to clear."""
    from sklearn.linear_model import LogisticRegression

    [cfg] = linear.dataset_configs(result.sweep.runs)
    assert cfg["name"] == "digits" and cfg["val_size"] == 0.1
    data = load_dataset({k: v for k, v in cfg.items() if k != "data_dir"}, store)
    fit = LogisticRegression(max_iter=linear.MAX_ITER).fit(data.train_x.flatten(1).numpy(), data.train_y.numpy())
    expected = fit.score(data.test_x.flatten(1).numpy(), data.test_y.numpy())
    assert 0.5 < expected < 1  # (chance: 0.1; these runs train on a few hundred images)
    assert "Linear baseline" in result.markdown and f"**{100 * expected:.2f} %**" in result.markdown
    [cache] = Path(cfg["data_dir"]).expanduser().glob(linear.CACHE)
    assert list(json.loads(cache.read_text()).values()) == [pytest.approx(expected)]


def test_runs_that_did_not_log_their_data_folder_read_the_default_one():
    """Runs from before paths.data_dir was logged (pandas gives them NaN) or refused before their config
    resolved (the interpolation as written) mixed with runs that did: one config each, the others with no
    folder of their own (the analysis then reads the default one, never a folder named `${...}`)."""
    unresolved = "${oc.env:INITBENCH_DATA_DIR,'~/.cache/initbench'}"
    runs = pd.DataFrame({"params.dataset.name": ["digits"] * 4, "params.dataset.val_size": ["0.1"] * 4,
                         "params.paths.data_dir": [float("nan"), "~/data", float("nan"), unresolved]})
    assert linear.dataset_configs(runs) == [{"name": "digits", "val_size": 0.1, "data_dir": None},
                                            {"name": "digits", "val_size": 0.1, "data_dir": "~/data"}]


@pytest.mark.slow
def test_cli_prints_the_table(store, capsys):
    assert main(["--tracking-uri", uri_of(store), "--out", str(store / "cli"), "--no-log",
                 "--group-by", "init,optimizer.lr", "--loss-threshold", "2.5"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"\| [12] \| default \| [0-9.e-]+ \| 3 \| 0 \| 0 \|", printed)  # # init lr n div fail
    assert "| 3 | kaiming | 1000000.0 | 1 | 1 | 0 | — |" in printed  # the diverged run alone, last
    assert "steps to loss ≤ 2.5" in printed and "mlflow ui --backend-store-uri" in printed


@pytest.mark.slow
def test_no_runs_lists_what_exists_and_exits_2(store, tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "analyze.py"), "--tracking-uri",
                           uri_of(store), "--sweep", "nosuchsweep"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    sweep = raw_runs(uri_of(store)).sweep.iloc[0]
    assert "no runs of sweep 'nosuchsweep'" in done.stderr and f"sweep {sweep}" in done.stderr
    assert "experiment 'initbench': 7 runs" in done.stderr  # the sweep's parent run is not a job
    assert main(["--tracking-uri", uri_of(tmp_path)]) == 2
    assert not (tmp_path / "mlflow.db").exists()  # a missing store is reported, not created


@pytest.mark.slow
def test_unknown_group_key_names_the_params(store):
    with pytest.raises(ValueError, match="cannot group by 'optimiser'.*optimizer.lr"):
        analyze(uri_of(store), group_by=["optimiser"], out=store / "bad", log_to_mlflow=False)


@pytest.mark.slow
def test_killed_run_is_included_with_what_it_has_and_flagged(store):
    """A hand-made sweep: two finished 3-epoch runs and one killed after its first epoch."""
    client = MlflowClient(uri_of(store))
    experiment = client.create_experiment("hand")
    for seed, epochs, status in [(0, 3, "finished"), (1, 3, "finished"), (2, 1, "running")]:
        log_hand_run(client, experiment, seed, epochs, status)
    result = analyze(uri_of(store), "hand", out=store / "hand", log_to_mlflow=False, loss_threshold=0.4)
    [row] = result.summary.itertuples()
    assert (row.n_runs, row.n_used, row.n_incomplete) == (3, 3, 1)
    assert row.final_test_acc_mean == pytest.approx(np.mean([0.80, 0.81, 0.62]))
    assert row.notes == "mlp-default-digits-s2: running (never ended); 1/3 epochs; no test/loss"
    assert " †" in result.markdown
    # loss 2/(step+seed) <= 0.4 from step 5 - seed; the killed run stops at step 2: never
    assert result.runs.steps_to_loss.tolist() == [5, 4, math.inf]
    assert (row.steps_to_loss_median, row.n_reached_loss) == (5, 2)
    assert result.runs.final_train_loss.iloc[0] == pytest.approx(np.mean([2 / 5, 2 / 6]))  # last epoch: 5, 6

    log_hand_run(client, experiment, 2, 3, "finished")  # the killed job resumed: its run replaces the killed one
    result = analyze(uri_of(store), "hand", out=store / "hand", log_to_mlflow=False, loss_threshold=0.4)
    [row] = result.summary.itertuples()
    assert (row.n_runs, row.n_used, row.n_incomplete, row.notes) == (3, 3, 0, "")
    assert row.final_test_acc_mean == pytest.approx(np.mean([0.80, 0.81, 0.82]))
    assert "Left out: 1 earlier run(s) of a config that was run again" in result.markdown
    assert "mlp-default-digits-s2 (running)" in result.markdown


def test_statistics_helpers():
    assert all(math.isnan(v) for v in bootstrap_ci([0.5])[:2])
    low, high, method = bootstrap_ci([0.1, 0.2, 0.3, 0.9])
    assert 0.1 <= low < np.mean([0.1, 0.2, 0.3, 0.9]) < high <= 0.9 and method == "BCa"
    losses = pd.DataFrame({"step": [1, 2, 3], "value": [2.0, 0.3, 0.1]})
    assert steps_to_reach(losses, 0.5) == 2 and steps_to_reach(losses, 0.01) == math.inf
    assert cast(pd.Series(["0", "2"])).tolist() == [0, 2]
    assert cast(pd.Series(["1e-3", "0.1"])).tolist() == [1e-3, 0.1]
    assert cast(pd.Series(["null", "3"])).tolist() == ["null", "3"]


def test_bootstrap_ci_is_the_95_percent_interval_of_the_mean():
    """A large normal sample: the CI of its mean is mean ± z(0.975)·s/√n = ± 1.96·s/√n to within the
    bootstrap's noise (about 1.5% of it here); a 90% interval would be 16% narrower (± 1.645·s/√n)."""
    x = np.random.default_rng(1).normal(10.0, 2.0, 1000)
    half = stats.norm.ppf(0.975) * x.std() / math.sqrt(len(x))
    low, high, _ = bootstrap_ci(x)
    assert (low + high) / 2 == pytest.approx(x.mean(), abs=0.05 * half)
    assert (high - low) / 2 == pytest.approx(half, rel=0.05)


@pytest.mark.slow
def test_empty_experiment_is_no_runs(store):
    MlflowClient(uri_of(store)).create_experiment("empty")
    with pytest.raises(NoRuns, match="experiment 'empty' has no runs"):
        load_sweep(uri_of(store), "empty")


def test_grad_norm_layers_without_an_init_report_follow_natural_name_order():
    curves = pd.DataFrame({"run_id": "r", "key": [f"grad_norm/{p}" for p in
                                                  ("layers.10.weight", "layers.2.weight", "layers.2.bias")],
                           "step": 1, "value": [1.0, 2.0, 3.0]})
    grads = first_epoch_grad_norms(SweepRuns("uri", "e", "s", pd.DataFrame(), curves))
    assert grads.param.tolist() == ["layers.2.bias", "layers.2.weight", "layers.10.weight"]
    assert grads.is_layer.tolist() == [False, True, True]


@pytest.fixture(scope="module")
def agreeing(tmp_path_factory) -> Path:
    """A hand-made sweep whose 3 seeds all end every epoch at 10.00% test accuracy (chance, as under
    init=zeros): the mean of equal floats can land 1e-17 past their min and max."""
    folder = tmp_path_factory.mktemp("agreeing")
    client = MlflowClient(uri_of(folder))
    experiment = client.create_experiment("initbench", artifact_location=(folder / "mlruns").as_uri())
    for seed in range(3):
        log_hand_run(client, experiment, seed, 3, "finished", test_acc=lambda seed, epoch: 0.1)
    return folder


def test_seeds_that_agree_exactly_are_plotted(agreeing, tmp_path):
    assert main(["--tracking-uri", uri_of(agreeing), "--out", str(tmp_path), "--no-log"]) == 0
    assert (tmp_path / "test_acc.png").read_bytes()[:4] == b"\x89PNG"


def test_only_a_bad_group_key_is_a_usage_error(agreeing, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--tracking-uri", uri_of(agreeing), "--out", str(tmp_path), "--no-log", "--group-by", "optimiser"])
    assert exit_.value.code == 2 and "cannot group by 'optimiser'" in capsys.readouterr().err

    def broken(*args, **kwargs):
        raise ValueError("a bug of the analysis")

    monkeypatch.setattr("initbench.analysis.plot_grad_norms", broken)
    with pytest.raises(ValueError, match="a bug of the analysis"):  # a traceback, not a usage message
        main(["--tracking-uri", uri_of(agreeing), "--out", str(tmp_path), "--no-log"])


def read_only(uri: str) -> type[Tracker]:
    """A Tracker that opens `uri`'s SQLite file read-only (a chmod would not stop a test run as root).
    MLflow makes the folder of the path after sqlite:///, here the relative `file:/...`: run it from
    a temporary folder."""
    path = uri[len("sqlite:///"):]

    class ReadOnlyTracker(Tracker):
        @property
        def client(self) -> MlflowClient:
            return MlflowClient(f"sqlite:///file:{path}?mode=ro&uri=true")

    return ReadOnlyTracker


def assert_table_then_one_warning(captured, reason: str) -> None:
    assert "| 1 | default | 3 | 0 | 0 | 10.00 ± 0.00 |" in captured.out and "wrote summary.md" in captured.out
    [warning] = captured.err.strip().splitlines()
    assert warning.startswith("warning: the summary could not be logged to MLflow") and reason in warning


def test_a_read_only_store_gets_the_table_and_a_one_line_warning(agreeing, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("initbench.analysis.summary.Tracker", read_only(uri_of(agreeing)))
    assert main(["--tracking-uri", uri_of(agreeing), "--out", str(tmp_path)]) == 0  # the analysis succeeded
    assert_table_then_one_warning(capfd.readouterr(), "OperationalError: attempt to write a readonly database")
    assert (tmp_path / "summary.md").exists()


def test_refused_artifacts_end_a_parent_run_made_for_the_analysis_failed(agreeing, tmp_path, monkeypatch, capfd):
    def refuse(self, run_id, path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(MlflowClient, "log_artifact", refuse)
    assert main(["--tracking-uri", uri_of(agreeing), "--out", str(tmp_path)]) == 0
    assert_table_then_one_warning(capfd.readouterr(), "PermissionError: [Errno 13] Permission denied")
    client = MlflowClient(uri_of(agreeing))
    [parent] = client.search_runs([client.get_experiment_by_name("initbench").experiment_id],
                                  f"tags.`{PARENT_TAG}` = 'true'")
    assert parent.info.status == "FAILED"  # not left RUNNING


@pytest.mark.slow
def test_each_run_carries_summary_metrics_that_agree_with_the_analysis(result):
    """whole_run/* (FitResult.summary, logged at the run's end) sort and group runs in MLflow's runs table
    without the analysis; they are the analysis' own per-run numbers."""
    logged = result.sweep.runs.set_index("run_id")
    for job in result.runs.itertuples():
        row = logged.loc[job.run_id]
        assert row["metrics.whole_run/diverged"] == (job.status == "diverged")
        assert row["metrics.whole_run/final_test_acc"] == pytest.approx(job.final_test_acc)
        reached = row.get("metrics.whole_run/steps_to_loss_0.5", math.nan)  # logged where the loss got there
        assert reached == job.steps_to_loss if math.isfinite(job.steps_to_loss) else math.isnan(reached)
        if job.status == "finished":
            assert row["metrics.whole_run/test_acc_at_best_val"] == pytest.approx(job.test_acc_at_best_val)
            assert row["metrics.whole_run/best_val_acc"] == pytest.approx(job.best_val_acc)
            assert row["metrics.whole_run/best_val_epoch"] == job.best_val_epoch
