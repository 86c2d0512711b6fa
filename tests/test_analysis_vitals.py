"""The analysis of the per-epoch vitals: act_std.png, dead_frac.png and vitals.csv per group and layer, the
Jacobian and the deepest ReLU layer's dead units in the summary; runs without vitals left out quietly; every
vitals key MLflow-safe.

One store for the module (slow: about 6 s of CPU, more on a busy machine): three real short runs (digits, MLP,
kaiming x 2 seeds and zeros, 3 epochs on 256 examples) and two hand-made runs of the same sweep logged as
initbench logged runs before it had vitals; other experiments of the same store for the other cases.
"""

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from torch import nn

from initbench.analysis import SweepRuns, analyze
from initbench.analysis.cli import main
from initbench.analysis.summary import NO_VITALS
from initbench.analysis.vitals import layer_order, layer_vitals
from initbench.metric_keys import vitals_key
from initbench.run import SWEEP_ENV, run
from initbench.vitals.points import epoch_points, init_points

from .conftest import compose_config
from .test_analysis_fair import log_run, new_store, uri_of

QUICK = ["model=mlp", "dataset.train_size=256", "trainer.epochs=3", "trainer.device=cpu", "trainer.progress=false"]
REAL = [("kaiming", 0), ("kaiming", 1), ("zeros", 0)]
HIDDEN = ["layers.0.0", "layers.1.0", "layers.2.0"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("vitals")
    client, experiment = new_store(folder)
    for seed in (0, 1):  # runs logged before vitals: test/acc and val/acc only, same sweep ("fair")
        log_run(client, experiment, "default", seed, [0.5, 0.6, 0.7], val=[0.5, 0.6, 0.7])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(SWEEP_ENV, "fair")
            patch.setenv("INITBENCH_DATA_DIR", str(folder / "data"))
            for init, seed in REAL:
                assert run(compose_config([*QUICK, f"init={init}", f"seed={seed}"], folder)).status == "finished"
    finally:
        torch.set_num_threads(threads)
    return folder


@pytest.fixture(scope="module")
def result(store):
    return analyze(uri_of(store), sweep="fair", out=store / "results")


def logged(store: Path) -> dict[tuple[str, int], dict[str, list[tuple[int, float]]]]:
    """(init, seed) -> vitals key -> its (step, value) history, straight from MLflow."""
    client = MlflowClient(uri_of(store))
    out = {}
    for r in client.search_runs([client.get_experiment_by_name("initbench").experiment_id]):
        keys = [k for k in r.data.metrics if k.startswith("vitals/")]
        if keys and "initbench.parent" not in r.data.tags:
            out[(r.data.params["init.name"], int(r.data.params["seed"]))] = {
                k: [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, k)] for k in keys}
    return out


@pytest.mark.slow
def test_figures_and_vitals_csv_are_written_and_logged_to_the_sweep_run(store, result):
    out = store / "results"
    names = {p.name for p in result.files}
    assert {"act_std.png", "dead_frac.png", "vitals.csv"} <= names
    for png in ("act_std.png", "dead_frac.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / png).stat().st_size > 10_000
    parent = {a.path for a in MlflowClient(uri_of(store)).list_artifacts(result.sweep_run_id, "analysis")}
    assert {"analysis/act_std.png", "analysis/dead_frac.png", "analysis/vitals.csv"} <= parent
    written = pd.read_csv(out / "vitals.csv")
    assert len(written) == len(result.vitals) and set(written.kind) == {"act_std", "dead_frac"}


@pytest.mark.slow
def test_per_layer_values_are_the_logged_values_mean_over_seeds_in_model_order(store, result):
    raw = logged(store)
    table = result.vitals[result.vitals.init == "kaiming"]
    for kind, layers in (("act_std", [*HIDDEN, "head"]), ("dead_frac", HIDDEN)):
        rows = table[table.kind == kind]
        assert rows.sort_values("position").drop_duplicates("layer").layer.tolist() == layers  # model order
        for layer in layers:
            per_seed = [dict(raw[("kaiming", seed)][f"vitals/{kind}/{layer}"]) for seed in (0, 1)]
            assert sorted(per_seed[0]) == [0, 1, 2, 3]  # init and each epoch's end
            for epoch in range(4):
                values = [h[epoch] for h in per_seed]
                row = rows[(rows.layer == layer) & (rows.epoch == epoch)].iloc[0]
                assert row.n == 2 and row["mean"] == pytest.approx(sum(values) / 2, rel=1e-12)
                assert (row["min"], row["max"]) == (min(values), max(values))
    zeros = result.vitals[(result.vitals.init == "zeros") & (result.vitals.kind == "dead_frac")]
    assert (zeros["mean"] == 1.0).all() and set(zeros.epoch) == {0, 1, 2, 3}  # dead at init, dead for good


@pytest.mark.slow
def test_summary_has_the_jacobian_and_the_deepest_relu_layers_dead_units(store, result):
    raw = logged(store)
    summary = result.summary.set_index("init")
    for name in ("sv_mean", "sv_max"):
        seeds = [raw[("kaiming", s)][f"vitals/jacobian/{name}"][0][1] for s in (0, 1)]
        assert summary.loc["kaiming", f"{name}_mean"] == pytest.approx(sum(seeds) / 2, rel=1e-12)
        assert summary.loc["kaiming", f"{name}_n"] == 2
    deepest = [raw[("kaiming", s)]["vitals/dead_frac/layers.2.0"] for s in (0, 1)]
    assert summary.loc["kaiming", "dead_frac_layer"] == "layers.2.0"
    assert summary.loc["kaiming", "dead_frac_init_mean"] == pytest.approx(sum(h[0][1] for h in deepest) / 2)
    assert summary.loc["kaiming", "dead_frac_last_mean"] == pytest.approx(sum(h[-1][1] for h in deepest) / 2)
    assert summary.loc["zeros", ["dead_frac_init_mean", "dead_frac_last_mean"]].tolist() == [1.0, 1.0]
    section = result.markdown.split("**Vitals**")[1]
    assert "| kaiming | 2 |" in section and "| zeros | 1 |" in section and "layers.2.0" in section
    assert "100.00" in section.split("| zeros |")[1].splitlines()[0]
    saved = pd.read_csv(store / "results" / "summary.csv")
    assert {"sv_mean_mean", "sv_max_mean", "dead_frac_init_mean", "dead_frac_last_mean"} <= set(saved.columns)


@pytest.mark.slow
def test_runs_without_vitals_are_left_out_quietly(result):
    assert "default" not in set(result.vitals.init)  # the two runs logged before vitals
    default = result.summary.set_index("init").loc["default"]
    assert default.sv_mean_n == 0 and math.isnan(default.dead_frac_init_mean) and default.n_used == 2
    assert "| default | 2 | — | — | — | — | — |" in result.markdown
    assert "Left out: 2 averaged run(s) that logged no vitals" in result.markdown
    assert result.runs.set_index("init").loc["default", "dead_frac_init"].isna().all()


@pytest.mark.slow
def test_a_sweep_without_vitals_writes_no_figure_and_says_so_in_one_line(store, tmp_path, capsys):
    client = MlflowClient(uri_of(store))
    experiment = client.create_experiment("before_vitals", artifact_location=(store / "old").as_uri())
    for seed in (0, 1):
        log_run(client, experiment, "default", seed, [0.5, 0.6], val=[0.5, 0.6])
    assert main(["--tracking-uri", uri_of(store), "--experiment", "before_vitals", "--out", str(tmp_path / "out"),
                 "--no-log"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("No vitals") == 1 and NO_VITALS in printed.splitlines()
    assert not {"act_std.png", "dead_frac.png", "vitals.csv"} & {p.name for p in (tmp_path / "out").iterdir()}


def test_old_keys_and_the_root_module_are_read_as_todays_names():
    """Keys as runs before 2026-11 wrote them (act_std/<layer> at init only, `(model)` for the root) read
    as today's (`_model_`); layers without an init report in natural order."""
    curves = pd.DataFrame({"run_id": "r", "key": ["act_std/(model)", "act_std/fc", "vitals/dead_frac/fc"],
                           "step": 0, "value": [1.0, 2.0, 0.5]})
    table = layer_vitals(SweepRuns("uri", "e", "s", pd.DataFrame(), curves))
    assert table[["kind", "layer", "epoch", "value"]].values.tolist() == [
        ["act_std", "_model_", 0, 1.0], ["act_std", "fc", 0, 2.0], ["dead_frac", "fc", 0, 0.5]]


def test_layer_order_follows_the_parameters_and_puts_a_relu_of_a_sum_after_its_block():
    params = ["stem.weight", "blocks.0.conv1.weight", "blocks.0.bn1.weight", "blocks.0.conv2.weight",
              "blocks.1.conv1.weight", "head.weight", "scale"]
    layers = {"head", "blocks.0.relu", "blocks.0.conv1", "blocks.0.bn1", "stem", "blocks.1.conv1", "_model_",
              "relu", "blocks.0.relu.2"}
    assert layer_order(layers, params) == ["stem", "blocks.0.conv1", "blocks.0.bn1", "blocks.0.relu",
                                           "blocks.0.relu.2", "blocks.1.conv1", "head", "_model_", "relu"]
    assert layer_order({"layers.10", "layers.2", "head"}, None) == ["head", "layers.2", "layers.10"]


class OddNames(nn.Module):
    """A model whose root owns a parameter and whose layer and parameter names hold characters MLflow
    refuses in a key."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.blocks = nn.ModuleDict({"fc(in)": nn.Linear(6, 8), "out:1": nn.Linear(8, 3)})

    def forward(self, x):
        return self.blocks["out:1"](torch.relu(self.blocks["fc(in)"](x))) * self.scale


@pytest.mark.slow
def test_every_vitals_key_is_one_mlflow_accepts(store):
    torch.manual_seed(0)
    model, x, y = OddNames(), torch.randn(16, 6), torch.randint(0, 3, (16,))
    grads = [(vitals_key("grad_norm", name), 1.0, 1) for name, _ in model.named_parameters()]
    points = init_points(model, x, y) + epoch_points(model, x, 1) + grads
    keys = {key for key, _, _ in points}
    assert {"vitals/act_std/_model_", "vitals/backprop_std/_model_", "vitals/dead_frac/blocks.fc_in_",
            "vitals/grad_norm/blocks.out_1.weight"} <= keys
    client = MlflowClient(uri_of(store))
    run_id = client.create_run(client.create_experiment("odd_names")).info.run_id
    client.log_batch(run_id, metrics=[Metric(k, v, 0, s) for k, v, s in points])  # raises on a refused key
    assert set(client.get_run(run_id).data.metrics) == keys
