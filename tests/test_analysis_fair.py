"""Fair comparisons: selection on the validation split (never on test), --tune, --heatmap, and the
statistics (BCa CIs, Holm's correction, P(X > Y), Hedges' g), on small known answers and on hand-made
MLflow stores (fast: no training).
"""

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from scipy import stats

from initbench.analysis import NoValidation, analyze
from initbench.analysis.cli import main
from initbench.analysis.grid import ordered
from initbench.analysis.stats import bootstrap_ci, effect_size, holm, prob_superiority, selected_on_val


def uri_of(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def new_store(folder: Path) -> tuple[MlflowClient, str]:
    client = MlflowClient(uri_of(folder))
    return client, client.create_experiment("initbench", artifact_location=(folder / "mlruns").as_uri())


def log_run(client: MlflowClient, experiment: str, init: str, seed: int, test: Sequence[float],
            val: Sequence[float] | None = None, status: str = "finished", **params) -> str:
    """A run of sweep `fair` as initbench logs one: per epoch test/acc `test[i]` and, with `val`, val/acc
    `val[i]` (and val/loss, test/loss, train/acc); train/loss 1 / step at 2 steps per epoch. `params`:
    more params, dotted names with __ for the dots (optimizer__lr=0.1)."""
    epochs = len(test)
    extra = {k.replace("__", "."): str(v) for k, v in params.items()}
    run_id = client.create_run(experiment, run_name=f"mlp-{init}-digits-s{seed}").info.run_id
    config = {"model.name": "mlp", "dataset.name": "digits", "init.name": init, "seed": str(seed),
              "trainer.epochs": str(epochs), **extra}
    tags = {"initbench.sweep": "fair", "initbench.status": status,
            "initbench.config_hash": "-".join(f"{k}={v}" for k, v in sorted(config.items()))}
    client.log_batch(run_id, params=[Param(k, v) for k, v in config.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    points = [Metric("train/loss", 1.0 / step, 0, step) for step in range(1, 2 * epochs + 1)]
    for epoch, acc in enumerate(test, start=1):
        points += [Metric("test/acc", acc, 0, epoch), Metric("test/loss", 1.0, 0, epoch),
                   Metric("train/acc", 0.9, 0, epoch)]
        if val is not None:
            points += [Metric("val/acc", val[epoch - 1], 0, epoch), Metric("val/loss", 1.0, 0, epoch)]
    client.log_batch(run_id, metrics=points)
    client.set_terminated(run_id, "FINISHED" if status != "failed" else "FAILED")
    return run_id


# ---------------------------------------------------------------- statistics with known answers

def test_bootstrap_ci_is_scipys_bca_with_a_fixed_seed():
    x = np.array([0.61, 0.64, 0.70, 0.71, 0.74, 0.80, 0.95])  # sorted, as bootstrap_ci sorts them
    ci = bootstrap_ci(x)
    expected = stats.bootstrap((x,), np.mean, n_resamples=10_000, method="BCa",
                               rng=np.random.default_rng(0)).confidence_interval
    assert ci.method == "BCa" and (ci.low, ci.high) == pytest.approx((expected.low, expected.high), abs=1e-12)
    assert bootstrap_ci(x) == ci and bootstrap_ci(x[::-1]) == ci  # reproducible, whatever the runs' order
    percentile = stats.bootstrap((x,), np.mean, n_resamples=10_000, method="percentile",
                                 rng=np.random.default_rng(0)).confidence_interval
    assert (ci.low, ci.high) != pytest.approx((percentile.low, percentile.high), abs=1e-6)  # not the old method


def test_bca_follows_the_skew_of_the_sample():
    """A right-skewed sample (exponential): BCa's CI of the mean reaches further above the mean than
    below it, and more so than the symmetric normal-theory interval."""
    x = np.random.default_rng(3).exponential(1.0, 40)
    ci = bootstrap_ci(x)
    assert ci.method == "BCa" and ci.high - x.mean() > 1.15 * (x.mean() - ci.low)


def test_bootstrap_ci_of_equal_values_is_that_value_and_of_one_value_nan():
    assert bootstrap_ci([0.1, 0.1, 0.1]) == (0.1, 0.1, "equal")  # BCa divides by 0 here: scipy gives NaN
    low, high, method = bootstrap_ci([0.5])
    assert math.isnan(low) and math.isnan(high) and method == ""
    assert bootstrap_ci([0.2, math.nan, 0.2, math.inf]) == (0.2, 0.2, "equal")  # non-finite values are dropped


def test_holm_on_known_p_values():
    # R: p.adjust(c(0.01, 0.04, 0.03, 0.005), "holm") -> 0.03 0.06 0.06 0.02
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.01, math.nan, 0.02])  # NaN is no comparison: m = 2
    assert adjusted[[0, 2]] == pytest.approx([0.02, 0.02]) and math.isnan(adjusted[1])
    assert holm([0.5, 0.6]).tolist() == [1.0, 1.0]  # capped at 1
    assert holm([0.04]).tolist() == [0.04] and holm([]).size == 0


def test_probability_of_superiority_on_known_samples():
    assert prob_superiority([1, 2, 3], [0, 0, 0]) == 1.0
    assert prob_superiority([0, 0, 0], [1, 2, 3]) == 0.0
    assert prob_superiority([0.5, 0.5], [0.5, 0.5, 0.5]) == 0.5  # all tied
    assert prob_superiority([1, 2], [2, 3]) == 0.125  # of 4 pairs: one tie (1/2), three losses
    x, y = np.random.default_rng(0).integers(0, 5, (2, 7))
    pairs = (x[:, None] > y).mean() + 0.5 * (x[:, None] == y).mean()  # by definition, over 7 x 7 pairs
    assert prob_superiority(x, y) == pytest.approx(pairs)
    assert math.isnan(prob_superiority([], [1.0]))


def test_effect_size_cohens_d_and_hedges_g():
    d, g = effect_size([1, 2, 3], [0, 1, 2])  # means 2 and 1, pooled std 1
    assert d == pytest.approx(1.0) and g == pytest.approx(1.0 * (1 - 3 / (4 * 6 - 9)))
    assert all(math.isnan(v) for v in effect_size([1, 1], [1, 1]))  # no spread: undefined
    assert all(math.isnan(v) for v in effect_size([1], [0, 1]))


def test_selected_on_val_takes_the_first_best_validation_epoch():
    val = pd.DataFrame({"step": [1, 2, 3, 4], "value": [0.5, 0.8, 0.8, 0.7]})
    test = pd.DataFrame({"step": [1, 2, 3, 4], "value": [0.99, 0.6, 0.7, 0.75]})
    assert selected_on_val(val, test) == (2, 0.8, 0.6)
    assert all(math.isnan(v) for v in selected_on_val(val.iloc[:0], test))


def test_ordered_sorts_numbers_numerically_and_text_naturally():
    assert ordered(["0.1", "0.01", "1e-3", "1"]) == ["1e-3", "0.01", "0.1", "1"]
    assert ordered([10, 2, 2, 30]) == [2, 10, 30]
    assert ordered(["layer10", "layer2", "a"]) == ["a", "layer2", "layer10"]


# ---------------------------------------------------------------- ranking: validation, never test

@pytest.fixture(scope="module")
def selection(tmp_path_factory) -> Path:
    """`peaky`: the best test accuracy of any epoch (0.99, at epoch 1) and the best final test accuracy
    (0.90), but the lower validation accuracy; `steady`: the better validation accuracy (0.85 at epoch 2).
    Selecting on test would put peaky first."""
    folder = tmp_path_factory.mktemp("selection")
    client, experiment = new_store(folder)
    for seed in range(3):
        s = 0.01 * seed
        log_run(client, experiment, "peaky", seed, test=[0.99, 0.80, 0.90 + s], val=[0.70, 0.75 + s, 0.72])
        log_run(client, experiment, "steady", seed, test=[0.60, 0.82 + s, 0.81], val=[0.60, 0.85 + s, 0.84])
        log_run(client, experiment, "default", seed, test=[0.10, 0.11, 0.10 + s], val=[0.10, 0.10, 0.10 + s])
    return folder


def test_runs_are_read_at_their_best_validation_epoch(selection, tmp_path):
    result = analyze(uri_of(selection), out=tmp_path, log_to_mlflow=False)
    runs = result.runs.set_index(["init", "seed"])
    assert runs.loc[("peaky", 1), ["best_val_epoch", "best_val_acc", "test_acc_at_best_val", "final_test_acc"]
                    ].tolist() == pytest.approx([2, 0.76, 0.80, 0.91])
    assert runs.loc[("steady", 0), "test_acc_at_best_val"] == pytest.approx(0.82)
    assert "best_test_acc" not in result.runs and not result.summary.columns.str.contains("best_test").any()
    curves = pd.read_csv(tmp_path / "curves.csv")
    assert {"val/acc", "val/loss"} <= set(curves.key)
    assert (tmp_path / "val_acc.png").exists()
    assert (result.summary.notes == "").all()  # runs with val/* lack nothing


def test_ranking_is_on_validation_never_on_test(selection, tmp_path):
    result = analyze(uri_of(selection), out=tmp_path, log_to_mlflow=False)
    table = result.summary
    assert table.init.tolist() == ["steady", "peaky", "default"]  # by best val; by any test measure: peaky
    assert (table.ranked_by == "best_val_acc").all() and (table.compared_on == "test_acc_at_best_val").all()
    peaky = table.set_index("init").loc["peaky"]
    assert peaky.final_test_acc_mean > table.set_index("init").loc["steady", "final_test_acc_mean"]
    assert peaky.test_acc_at_best_val_mean == pytest.approx(np.mean([0.80, 0.80, 0.80]))
    assert "Ranked by mean best validation accuracy" in result.markdown


def test_the_table_header_and_caption(selection, tmp_path):
    markdown = analyze(uri_of(selection), out=tmp_path, log_to_mlflow=False).markdown
    header = next(line for line in markdown.splitlines() if line.startswith("| # |"))
    assert header == ("| # | init | n | diverged | failed | best val acc % | test acc at best val % | 95% CI | "
                      "final test acc % | final train loss | steps to loss ≤ 0.5 | grad norm first/last | "
                      "Δ acc vs default (pp) | P(X>Y) | g | p (Holm) |")
    assert "Holm-corrected over 2 comparisons" in markdown and "n_x × n_y pairs" in markdown
    assert "BCa bootstrap" in markdown and "test acc" not in header.split("best val acc %")[0]
    steady = next(line for line in markdown.splitlines() if line.startswith("| 1 | steady |"))
    # vs default: every steady seed beats every default seed; p Holm = 2 x the smaller raw p (or 1)
    assert "| 1.00 |" in steady


def test_comparisons_against_the_baseline_are_holm_corrected(selection, tmp_path):
    table = analyze(uri_of(selection), out=tmp_path, log_to_mlflow=False).summary.set_index("init")
    steady, peaky = table.loc["steady"], table.loc["peaky"]
    low, high = sorted([steady.p_welch, peaky.p_welch])  # 2 comparisons: the smaller p x 2, then x 1
    assert sorted([steady.p_holm, peaky.p_holm]) == pytest.approx([min(1, 2 * low), min(1, max(2 * low, high))])
    # default's test acc at best val: seed 0 ties on val at every epoch (the first counts), 1 and 2 peak at 3
    x, y = np.array([0.82, 0.83, 0.84]), np.array([0.10, 0.11, 0.12])
    assert steady.p_welch == pytest.approx(stats.ttest_ind(x, y, equal_var=False).pvalue)
    assert steady.p_superior == 1.0 and steady.n_baseline == 3
    d, g = effect_size(x, y)
    assert steady.hedges_g == pytest.approx(g) and steady.cohens_d == pytest.approx(d)
    assert steady.delta_vs_baseline == pytest.approx(x.mean() - y.mean())
    assert math.isnan(table.loc["default", "p_holm"])


@pytest.fixture(scope="module")
def old_runs(tmp_path_factory) -> Path:
    """Runs without a validation split: `peaky` has the best test accuracy of any epoch, `late` the best
    final test accuracy."""
    folder = tmp_path_factory.mktemp("old")
    client, experiment = new_store(folder)
    for seed in range(3):
        log_run(client, experiment, "peaky", seed, test=[0.99, 0.70, 0.70 + 0.01 * seed])
        log_run(client, experiment, "late", seed, test=[0.50, 0.70, 0.80 + 0.01 * seed])
    return folder


def test_runs_without_validation_are_ranked_by_final_test_accuracy_and_say_so(old_runs, tmp_path):
    result = analyze(uri_of(old_runs), out=tmp_path, log_to_mlflow=False, baseline="peaky")
    assert result.summary.init.tolist() == ["late", "peaky"]
    assert (result.summary.ranked_by == "final_test_acc").all()
    assert result.runs.test_acc_at_best_val.isna().all() and (result.runs.flag == "").all()  # not "no val/*"
    assert "Ranked by mean final test accuracy: these runs have no validation split" in result.markdown
    header = next(line for line in result.markdown.splitlines() if line.startswith("| # |"))
    assert "| final test acc % | 95% CI | final train loss |" in header and "val" not in header
    assert not (tmp_path / "val_acc.png").exists()


def test_groups_without_validation_come_after_those_with(selection, old_runs, tmp_path):
    """`--sweep all` over old and new runs: old groups are ranked after, by final test accuracy."""
    client = MlflowClient(uri_of(selection))
    experiment = client.create_experiment("mixed")
    for seed in range(2):
        log_run(client, experiment, "old", seed, test=[0.99, 0.99])
        log_run(client, experiment, "new", seed, test=[0.50, 0.60], val=[0.5, 0.6])
    result = analyze(uri_of(selection), "mixed", out=tmp_path, log_to_mlflow=False, baseline=None)
    assert result.summary.init.tolist() == ["new", "old"]
    assert result.summary.ranked_by.tolist() == ["best_val_acc", "final_test_acc"]
    assert "come after them, ranked by mean final test accuracy: old" in result.markdown


# ---------------------------------------------------------------- --tune

LRS = (0.01, 0.1, 1.0)


@pytest.fixture(scope="module")
def tuning(tmp_path_factory) -> Path:
    """init x lr x seed, 2 epochs. kaiming: best val at lr 0.1; lr 0.01 has the better test accuracy
    but the worse val (a test-set choice would take it); lr 1.0 diverges on every seed. default: best
    val at lr 1.0, runner-up 0.1 a close second. (means of val acc over the 3 seeds, in %)"""
    folder = tmp_path_factory.mktemp("tuning")
    client, experiment = new_store(folder)
    scores = {  # (init, lr): (best val, test at best val), before + 0.01 * seed
        ("kaiming", 0.01): (0.80, 0.95), ("kaiming", 0.1): (0.90, 0.88),
        ("default", 0.01): (0.50, 0.50), ("default", 0.1): (0.69, 0.70), ("default", 1.0): (0.70, 0.60),
    }
    for seed in range(3):
        s = 0.01 * seed
        for (init, lr), (val, test) in scores.items():
            log_run(client, experiment, init, seed, test=[test + s, 0.3], val=[val + s, 0.2],
                    optimizer__lr=lr)
        log_run(client, experiment, "kaiming", seed, test=[0.1], val=[0.1], status="diverged", optimizer__lr=1.0)
    return folder


def test_tune_picks_each_inits_best_value_on_validation(tuning, tmp_path):
    result = analyze(uri_of(tuning), out=tmp_path, log_to_mlflow=False, tune_key="optimizer.lr")
    table = result.tune.set_index("init")
    assert table.loc["kaiming", "optimizer.lr"] == 0.1  # not 0.01, whose test accuracy is higher
    assert table.loc["default", "optimizer.lr"] == 1.0
    assert result.tune.init.tolist() == ["kaiming", "default"]  # ranked by the chosen value's val acc
    kaiming = table.loc["kaiming"]
    assert kaiming.test_acc_at_best_val_mean == pytest.approx(0.89) and kaiming.test_acc_at_best_val_n == 3
    assert kaiming.best_val_acc_mean == pytest.approx(0.91) and kaiming.n_values == 2  # lr 1.0: all diverged
    assert (kaiming.runner_up, kaiming.runner_up_n) == (0.01, 3)
    assert kaiming.gap == pytest.approx(0.10)
    assert kaiming.test_acc_at_best_val_ci_low <= 0.89 <= kaiming.test_acc_at_best_val_ci_high
    default = table.loc["default"]
    assert (default.runner_up, default.gap) == (0.1, pytest.approx(0.01))  # a flat optimum
    # each init at its own chosen lr against the baseline at its own: test acc 0.89 vs 0.61
    assert kaiming.delta_vs_baseline == pytest.approx(0.89 - 0.61) and kaiming.p_superior == 1.0
    assert kaiming.p_holm == pytest.approx(kaiming.p_welch)  # one comparison


def test_tune_grid_counts_and_marks_the_choice(tuning, tmp_path):
    result = analyze(uri_of(tuning), out=tmp_path, log_to_mlflow=False, tune_key="optimizer.lr")
    grid = result.tune_grid.set_index(["init", "optimizer.lr"])
    assert grid.loc[("kaiming", 1.0), ["state", "n_runs", "n_diverged", "best_val_acc_n"]].tolist() == \
        ["diverged", 3, 3, 0]
    assert math.isnan(grid.loc[("kaiming", 1.0), "best_val_acc_mean"])  # diverged, not an accuracy of 0
    assert grid.loc[("kaiming", 0.01), "best_val_acc_mean"] == pytest.approx(0.81)
    assert grid.loc[("kaiming", 0.01), "test_acc_at_best_val_mean"] == pytest.approx(0.96)
    assert grid.chosen.sum() == 2 and grid.loc[("kaiming", 0.1), "chosen"]
    assert [v for v in result.tune_grid["optimizer.lr"].unique()] == [0.01, 0.1, 1.0]
    assert {"tune.csv", "tune_grid.csv", "tune.png"} <= {p.name for p in result.files}
    assert (tmp_path / "tune.png").read_bytes()[:4] == b"\x89PNG"
    assert pd.read_csv(tmp_path / "tune.csv").init.tolist() == ["kaiming", "default"]
    # the main table: one row per init and lr
    assert len(result.summary) == 6 and "optimizer.lr" in result.summary


def test_tune_on_the_command_line(tuning, tmp_path, capsys):
    assert main(["--tracking-uri", uri_of(tuning), "--out", str(tmp_path), "--no-log", "--tune", "optimizer.lr"]) == 0
    printed = capsys.readouterr().out
    assert "**optimizer.lr tuned on validation accuracy**, per model, dataset, init" in printed
    header = next(line for line in printed.splitlines() if "| chosen optimizer.lr |" in line)
    assert header == ("| # | init | optimizer.lr values | chosen optimizer.lr | n | diverged | best val acc % | "
                      "test acc at best val % | 95% CI | runner-up optimizer.lr | runner-up val acc % | "
                      "gap (pp) | Δ acc vs default (pp) | P(X>Y) | g | p (Holm) |")
    assert "| 1 | kaiming | 2 | 0.1 | 3 | 0 | 91.00 ± 1.00 | 89.00 ± 1.00 |" in printed
    assert "| 0.01 | 81.00 (n=3) | +10.00 |" in printed


def test_tune_refuses_runs_without_validation(old_runs, tmp_path, capsys):
    client = MlflowClient(uri_of(old_runs))
    log_run(client, client.get_experiment_by_name("initbench").experiment_id, "late", 9, test=[0.5],
            optimizer__lr=0.1)
    with pytest.raises(NoValidation, match="none of the 7 runs has a validation split"):
        analyze(uri_of(old_runs), out=tmp_path / "a", log_to_mlflow=False, tune_key="optimizer.lr")
    assert main(["--tracking-uri", uri_of(old_runs), "--out", str(tmp_path / "b"), "--tune", "optimizer.lr"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cannot select on validation: --tune optimizer.lr selects on validation accuracy")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing written


# ---------------------------------------------------------------- --heatmap

@pytest.fixture(scope="module")
def grid_store(tmp_path_factory) -> Path:
    """init (kaiming, xavier) x model.depth (2, 10) x optimizer.lr (1e-3, 0.01, 0.1 as logged: text) x 2
    seeds; test at best val = 0.5 + depth / 100 + lr + 0.01 seed (xavier: - 0.1); at depth 10 and lr 0.1
    kaiming diverges on both seeds, xavier on seed 1 only."""
    folder = tmp_path_factory.mktemp("grid")
    client, experiment = new_store(folder)
    for init, shift in (("kaiming", 0.0), ("xavier", -0.1)):
        for depth in (2, 10):
            for lr in ("0.1", "1e-3", "0.01"):
                for seed in range(2):
                    diverged = depth == 10 and lr == "0.1" and (init == "kaiming" or seed == 1)
                    acc = 0.5 + depth / 100 + float(lr) + 0.01 * seed + shift
                    log_run(client, experiment, init, seed, test=[acc], val=[0.5],
                            status="diverged" if diverged else "finished", model__depth=depth, optimizer__lr=lr)
    return folder


def test_heatmap_cell_means_and_n(grid_store, tmp_path):
    result = analyze(uri_of(grid_store), out=tmp_path, log_to_mlflow=False,
                     heatmap_keys=("model.depth", "optimizer.lr"))
    assert result.measure == "test_acc_at_best_val"
    cells = result.heatmap.set_index(["init", "model.depth", "optimizer.lr"])
    assert cells.loc[("kaiming", 2, 0.01), ["value", "n", "state"]].tolist() == [pytest.approx(0.535), 2, "ok"]
    assert cells.loc[("xavier", 10, 0.1), ["value", "n", "n_diverged"]].tolist() == [pytest.approx(0.6), 1, 1]
    kaiming = cells.loc[("kaiming", 10, 0.1)]
    assert kaiming.state == "diverged" and kaiming.n == 0 and math.isnan(kaiming.value)  # not 0 accuracy
    lrs = result.heatmap[result.heatmap.init == "kaiming"]["optimizer.lr"].drop_duplicates().tolist()
    assert lrs == [0.001, 0.01, 0.1]  # numeric order
    assert len(result.heatmap) == 12
    assert {"heatmap_model.depth_optimizer.lr.csv", "heatmap_model.depth_optimizer.lr.png"} <= \
        {p.name for p in result.files}
    assert (tmp_path / "heatmap_model.depth_optimizer.lr.png").read_bytes()[:4] == b"\x89PNG"
    saved = pd.read_csv(tmp_path / "heatmap_model.depth_optimizer.lr.csv")
    assert len(saved) == 12 and set(saved.measure) == {"test_acc_at_best_val"}
    assert "| 10 | 60.60 (n=2) | 61.50 (n=2) | diverged (2) |" in result.markdown  # kaiming's panel, depth 10
    assert "| 10 | 50.60 (n=2) | 51.50 (n=2) | 60.00 (n=1; 1 diverged) |" in result.markdown  # xavier's


def test_heatmap_of_the_fraction_diverged_and_other_measures(grid_store, tmp_path):
    result = analyze(uri_of(grid_store), out=tmp_path, log_to_mlflow=False,
                     heatmap_keys=("model.depth", "optimizer.lr"), measure="diverged")
    cells = result.heatmap.set_index(["init", "model.depth", "optimizer.lr"])
    assert cells.loc[("kaiming", 10, 0.1), ["value", "n"]].tolist() == [1.0, 2]
    assert cells.loc[("xavier", 10, 0.1), "value"] == 0.5 and cells.loc[("xavier", 2, 0.1), "value"] == 0.0
    loss = analyze(uri_of(grid_store), out=tmp_path, log_to_mlflow=False, group_by=["init"],
                   heatmap_keys=("optimizer.lr", "model.depth"), measure="final_train_loss").heatmap
    assert loss.loc[0, "value"] == pytest.approx(np.mean([1 / 1, 1 / 2]))  # the one epoch's steps 1, 2
    steps = analyze(uri_of(grid_store), out=tmp_path, log_to_mlflow=False, group_by=["init"],
                    heatmap_keys=("optimizer.lr", "model.depth"), measure="steps_to_loss").heatmap
    assert steps.loc[0, "value"] == 2  # 1 / step <= 0.5 from step 2


def test_heatmap_on_the_command_line(grid_store, tmp_path, capsys):
    args = ["--tracking-uri", uri_of(grid_store), "--out", str(tmp_path), "--no-log"]
    assert main([*args, "--heatmap", "model.depth,optimizer.lr", "--measure", "final_test_acc"]) == 0
    printed = capsys.readouterr().out
    assert "**final test acc % per model.depth (rows) and optimizer.lr (columns)**" in printed
    assert "| model.depth \\ optimizer.lr | 0.001 | 0.01 | 0.1 |" in printed
    for bad in (["--heatmap", "model.depth"], ["--measure", "diverged"], ["--heatmap", "a,a"]):
        with pytest.raises(SystemExit) as exit_:
            main([*args, *bad])
        assert exit_.value.code == 2
    with pytest.raises(SystemExit):
        main([*args, "--heatmap", "model.depth,optimiser.lr"])
    assert "cannot group by 'optimiser.lr'" in capsys.readouterr().err


def test_heatmap_defaults_to_final_test_accuracy_without_validation(old_runs, tmp_path):
    result = analyze(uri_of(old_runs), out=tmp_path, log_to_mlflow=False, group_by=["init"],
                     heatmap_keys=("init", "seed"))
    assert result.measure == "final_test_acc"
    with pytest.raises(NoValidation):
        analyze(uri_of(old_runs), out=tmp_path, log_to_mlflow=False, group_by=["init"],
                heatmap_keys=("init", "seed"), measure="best_val_acc")


def test_tune_with_two_group_keys_tunes_each_group_and_draws_its_grid(grid_store, tmp_path):
    """--group-by init,model.depth --tune optimizer.lr: one choice per (init, depth), each on validation
    (a tie here: the first lr); tune.png is drawn for groups named by two keys (it once raised KeyError)."""
    result = analyze(uri_of(grid_store), out=tmp_path, log_to_mlflow=False, tune_key="optimizer.lr",
                     group_by=("init", "model.depth"))
    assert sorted(zip(result.tune.init, result.tune["model.depth"].astype(int), strict=True)) == \
        [("kaiming", 2), ("kaiming", 10), ("xavier", 2), ("xavier", 10)]
    assert (tmp_path / "tune.png").read_bytes()[:4] == b"\x89PNG"


def test_tune_counts_a_group_whose_every_run_diverged(tmp_path):
    """An init that diverges at every value of the tuned key gets no choice, and its row counts all its runs
    as diverged (it once said n 0, diverged 0)."""
    client, experiment = new_store(tmp_path)
    for seed in range(2):
        for lr in (0.01, 0.1):
            log_run(client, experiment, "kaiming", seed, test=[0.9], val=[0.8 + lr], optimizer__lr=lr)
            log_run(client, experiment, "d2l_custom", seed, test=[0.1], val=[0.1], status="diverged", optimizer__lr=lr)
    result = analyze(uri_of(tmp_path), out=tmp_path / "out", log_to_mlflow=False, tune_key="optimizer.lr",
                     baseline="kaiming")
    row = result.tune.set_index("init").loc["d2l_custom"]
    assert (row.n_runs, row.n_diverged, row.n_values) == (4, 4, 0) and math.isnan(row["optimizer.lr"])
    assert result.tune.set_index("init").loc["kaiming", "optimizer.lr"] == 0.1
