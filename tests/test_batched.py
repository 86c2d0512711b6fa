"""Batched training (initbench.batched) against separate fit() runs: same start, same end, same metrics.

Equivalence runs in float64 (models and data cast), where only rounding separates the batched and
the single-model arithmetic: initial weights bit for bit, parameters after training to 1e-12.
"""

import copy
import math

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn
from torch._dynamo.utils import counters

from initbench.batched import LoopLSTM, Unbatchable, fit_batched, optimizer_spec, stack_models, vmappable
from initbench.batched.sweep import group_jobs, plan, run_jobs
from initbench.data import Dataset, load_dataset
from initbench.run import build_initialized_model, optimizer_scales, prepare
from initbench.train import fit

from .conftest import compose_config

DEEPNET_ALPHA_2 = (2 * 2) ** 0.25  # DeepNet's alpha for 2 blocks
TRAIN = ["dataset.train_size=240", "trainer.batch_size=32", "trainer.epochs=2"]  # 8 steps, last one short


def float64(data: Dataset) -> Dataset:
    return Dataset(data.name, data.train_x.double(), data.train_y, data.test_x.double(), data.test_y,
                   data.val_x.double(), data.val_y)


def both_ways(jobs: list[list[str]], common: list[str], lrs=None):
    """Train the jobs (override lists) together and one by one in float64; returns
    [(batched model, single model, batched result, single result, batched points, single points)]."""
    cfgs = [compose_config(common + TRAIN + job) for job in jobs]
    first = cfgs[0]
    data = load_dataset(first.dataset, first.paths.data_dir, "cpu", image_size=first.model.get("image_size"))
    batched = [build_initialized_model(cfg, data)[0].double() for cfg in cfgs]  # LSUV sees float32 data
    single = [build_initialized_model(cfg, data)[0].double() for cfg in cfgs]
    data = float64(data)
    for a, b in zip(batched, single, strict=True):  # the same start, bit for bit
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    _, params, _ = stack_models(batched)
    for k, model in enumerate(batched):
        assert all(torch.equal(params[name][k], p) for name, p in model.named_parameters())
    scales = [optimizer_scales(cfg, model) for cfg, model in zip(cfgs, single, strict=True)]  # mup's factors
    points_b = [[] for _ in cfgs]
    results_b = fit_batched(batched, data, first.trainer, first.optimizer, [cfg.seed for cfg in cfgs],
                            logs=[p.extend for p in points_b], lrs=lrs, scales=scales)
    points_s = [[] for _ in cfgs]
    results_s = [fit(model, data, cfg.trainer, cfg.optimizer, cfg.seed, log=p.extend, scales=scale)
                 for model, cfg, p, scale in zip(single, cfgs, points_s, scales, strict=True)]
    return list(zip(batched, single, results_b, results_s, points_b, points_s, strict=True))


def assert_same_run(batched, single, result_b, result_s, points_b, points_s, params_atol=1e-12):
    assert (result_b.status, result_b.steps) == (result_s.status, result_s.steps)
    assert [(k, s) for k, _, s in points_b] == [(k, s) for k, _, s in points_s]
    for (_, vb, _), (_, vs, _) in zip(points_b, points_s, strict=True):
        assert vb == pytest.approx(vs, rel=1e-6, abs=1e-9)
    assert result_b.final == pytest.approx(result_s.final, rel=1e-6)
    if result_s.status == "finished":
        for (name, a), b in zip(batched.state_dict().items(), single.state_dict().values(), strict=True):
            scale = max(1.0, b.double().abs().max().item())
            assert (a.double() - b.double()).abs().max().item() <= params_atol * scale, name


# Adam divides by sqrt(v) + eps: a gradient that is pure rounding noise (a bias right before
# BatchNorm, or attention's key bias, to which the softmax is blind: their true gradient is 0) moves by
# lr * noise / eps, so there the runs agree to 1e-10.
@pytest.mark.parametrize("common,jobs,atol", [
    (["model=lenet"], [["init=default", "seed=0"], ["init=kaiming", "seed=1"]], 1e-12),
    (["model=mlp", "model.activation=tanh"],
     [["init=critical", "init.sigma_w=1.5", "init.sigma_b=0.1", "seed=0"], ["init=kumar", "seed=1"],
      ["init=zero_init", "seed=2"]], 1e-12),
    (["model=mlp", "+optimizer.nesterov=true", "optimizer.weight_decay=0.01"],
     [["init=xavier", "seed=0"], ["init=orthogonal", "seed=1"], ["init=lsuv", "seed=2"]], 1e-12),
    (["model=mlp", "model.batch_norm=true"], [["init=default", "seed=0"], ["init=kaiming", "seed=5"]], 1e-12),
    (["model=mlp", "model.batch_norm=true", "optimizer=adam"], [["init=default", "seed=0"]], 1e-10),
    (["model=mlp", "model.width=128", "optimizer.weight_decay=0.01"],
     [["init=mup", "seed=0"], ["init=default", "seed=1"], ["init=mup", "init.base_width=32", "seed=2"]], 1e-12),
    (["model=mlp", "model.width=128", "optimizer=adam", "optimizer.weight_decay=0.01", "trainer.schedule=cosine"],
     [["init=mup", "seed=0"], ["init=default", "seed=1"]], 1e-12),
    (["model=lstm", "model.hidden_size=16", "model.num_layers=2", "optimizer=adam", "trainer.schedule=cosine"],
     [["init=default", "seed=0"], ["init=lstm_forget_bias", "seed=1"]], 1e-12),
    (["model=cnn1d", "dataset=mnist1d", "optimizer=adam", "optimizer.lr=0.01"],
     [["init=default", "seed=0"], ["init=kaiming", "seed=1"], ["init=delta_orthogonal", "seed=2"]], 1e-12),
    (["model=resmlp", "model.depth=3", "model.width=16", "model.norm=layer", "model.branch_gate=scalar",
      "model.branch_bias=true"], [["init=default", "seed=0"], ["init=kaiming", "seed=1"]], 1e-12),
    (["model=resnet", "model.depth=8", "model.width=4"], [["init=default", "seed=0"], ["init=kaiming", "seed=1"]],
     1e-12),
    (["model=resnet", "model.depth=8", "model.width=4", "model.norm=none", "model.branch_gate=scalar",
      "model.branch_bias=true", "optimizer=adam", "optimizer.lr=0.01"], [["init=default", "seed=0"]], 1e-12),
    (["model=transformer", "model.depth=1", "model.width=16", "model.heads=2"],
     [["init=default", "seed=0"], ["init=xavier", "seed=1"]], 1e-12),
    (["model=transformer", "model.depth=2", "model.width=16", "model.heads=2", "model.norm=none",
      "model.branch_gate=scalar"], [["init=rezero", "seed=0"], ["init=default", "seed=1"]], 1e-12),
    (["model=transformer", "model.depth=1", "model.width=16", "model.norm_position=post", "model.tokens=rows",
      "model.pool=mean", "optimizer=adam", "optimizer.lr=0.01"], [["init=default", "seed=0"]], 1e-10),
    (["model=transformer", "model.depth=2", "model.width=16", "model.heads=2", "optimizer=adam", "optimizer.lr=0.01"],
     [["init=vit_timm", "seed=0"], ["init=vit_jax", "seed=1"], ["init=small_init", "seed=2"],
      ["init=wang_init", "seed=3"], ["init=zero_proj", "seed=4"], ["init=t_fixup", "seed=5"]], 1e-10),
    (["model=transformer", "model.depth=2", "model.width=16", "model.heads=2", "model.norm_position=post",
      f"model.residual_scale={DEEPNET_ALPHA_2}"], [["init=deepnet", "seed=0"], ["init=default", "seed=1"]], 1e-12),
    (["model=transformer", "model.depth=2", "model.width=16", "model.heads=2", "model.branch_gate=channel"],
     [["init=layerscale", "seed=0"], ["init=default", "seed=1"]], 1e-12),
    (["model=mlp", "optimizer.weight_decay=0.01", "trainer.schedule=cosine", "trainer.warmup_steps=3",
      "trainer.grad_clip=0.5", "trainer.decay_exempt=true"], [["init=default", "seed=0"], ["init=mup", "seed=1"]],
     1e-12),
    (["model=transformer", "model.depth=2", "model.width=16", "model.heads=2", "model.branch_gate=channel",
      "model.norm_position=post", "model.residual_scale=1.5", "model.attn_scale=inv_d", "optimizer=adamw",
      "optimizer.lr=0.01", "trainer.warmup_steps=5", "trainer.grad_clip=0.2",
      "trainer.decay_exempt=true"], [["init=default", "seed=0"], ["init=xavier", "seed=1"]], 1e-10),
], ids=["lenet", "mlp-tanh-critical-kumar-zero", "mlp-nesterov-lsuv", "mlp-batchnorm", "mlp-batchnorm-adam",
        "mlp-mup-sgd-wd", "mlp-mup-adam-wd-cosine", "lstm2-adam-cosine", "cnn1d-mnist1d-adam",
        "resmlp-layernorm-gate-bias", "resnet-batchnorm", "resnet-plain-gate-bias-adam", "transformer",
        "transformer-no-norm-rezero", "transformer-post-rows-mean-adam", "transformer-timm-jax-neox-zero-tfixup-adam",
        "transformer-deepnet", "transformer-layerscale", "mlp-sgd-warmup-cosine-clip-exempt",
        "transformer-post-deepnet-layerscale-adamw-warmup-clip-exempt"])
def test_batched_training_equals_separate_fits(common, jobs, atol):
    for outcome in both_ways(jobs, common):
        assert_same_run(*outcome, params_atol=atol)


def test_per_model_lr_and_one_divergence_stops_that_model_only():
    runs = both_ways([["optimizer.lr=0.05", "seed=0"], ["optimizer.lr=1e6", "init=ones", "seed=1"],
                      ["optimizer.lr=0.001", "seed=2"]],
                     ["model=mlp", "optimizer.weight_decay=0.001", "trainer.schedule=cosine"],
                     lrs=[0.05, 1e6, 0.001])
    assert [r[2].status for r in runs] == ["finished", "diverged", "finished"]
    for outcome in runs:
        assert_same_run(*outcome)
    diverged_losses = [v for k, v, _ in runs[1][4] if k == "train/loss"]
    assert all(math.isfinite(v) for v in diverged_losses) and len(diverged_losses) < 16


def logged_losses(uri: str, run_id: str) -> list[float]:
    return [m.value for m in sorted(MlflowClient(uri).get_metric_history(run_id, "train/loss"), key=lambda m: m.step)]


def test_run_jobs_trains_each_model_of_a_chunk_at_its_own_lr(store, monkeypatch):
    """The batched launcher's core on jobs that differ in optimizer.lr alone (same seed and init): each
    job's MLflow run holds what fit() gives at that job's lr (float32: to rounding)."""
    monkeypatch.chdir(store)  # MLflow puts a sqlite store's artifacts in ./mlruns
    cfgs = [compose_config(["model=mlp", *TRAIN, f"optimizer.lr={lr}"], store) for lr in (0.01, 0.2)]
    outcomes = run_jobs(cfgs, mode="batched", say=lambda _: None)
    uri = cfgs[0].tracking.uri
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(cfgs[0].tracking.experiment).experiment_id])
    run_of_lr = {float(run.data.params["optimizer.lr"]): run.info.run_id for run in runs}
    curves = []
    for cfg, outcome in zip(cfgs, outcomes, strict=True):
        data = load_dataset(cfg.dataset, cfg.paths.data_dir, "cpu")
        points = []
        single = fit(build_initialized_model(cfg, data)[0], data, cfg.trainer, cfg.optimizer, cfg.seed,
                     log=points.extend)
        curves.append(logged_losses(uri, run_of_lr[cfg.optimizer.lr]))
        assert curves[-1] == pytest.approx([v for k, v, _ in points if k == "train/loss"], rel=1e-4)
        assert outcome.result.final == pytest.approx(single.final, rel=1e-4)
    assert curves[0][1:] != pytest.approx(curves[1][1:], rel=1e-2)  # after the first step, the lrs show


@pytest.mark.slow
def test_compiled_batched_step_matches_eager_and_a_divergence_does_not_recompile(recwarn):
    cfgs = [compose_config(["model=mlp", "model.activation=leaky_relu", *TRAIN, *job]) for job in
            (["seed=0"], ["init=ones", "seed=1"], ["init=kaiming", "seed=2"])]
    data = load_dataset(cfgs[0].dataset, cfgs[0].paths.data_dir, "cpu")
    runs = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        counters.clear()
        points = [[] for _ in cfgs]
        results = fit_batched([build_initialized_model(cfg, data)[0] for cfg in cfgs], data, cfgs[0].trainer,
                              cfgs[0].optimizer, [0, 1, 2], logs=[p.extend for p in points], lrs=[0.05, 1e6, 0.01],
                              compile=compiled)
        runs[compiled] = [r.status for r in results], points
    assert not [w for w in recwarn if "torch.compile" in str(w.message)]  # it did compile
    # 240 = 7 x 32 + 16: two batch shapes, with and without gradient norms; the model that stopped in
    # epoch 1 keeps its slot, so epoch 2 runs the same K and compiles nothing new
    assert counters["stats"]["unique_graphs"] == 4
    (eager_status, eager), (compiled_status, compiled) = runs[False], runs[True]
    assert eager_status == compiled_status == ["finished", "diverged", "finished"]
    for a, b in zip(eager, compiled, strict=True):
        assert [(key, step) for key, _, step in a] == [(key, step) for key, _, step in b]
        assert [v for _, v, _ in b] == pytest.approx([v for _, v, _ in a], rel=1e-4, abs=1e-6)


def test_loop_lstm_matches_nn_lstm_forward_and_backward():
    torch.manual_seed(0)
    for batch_first in (True, False):
        lstm = nn.LSTM(5, 7, num_layers=2, batch_first=batch_first).double()
        loop = LoopLSTM(copy.deepcopy(lstm))
        x = torch.randn(3, 4, 5, dtype=torch.float64)
        out, (h, c) = lstm(x)
        out2, (h2, c2) = loop(x)
        for a, b in ((out, out2), (h, h2), (c, c2)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-14)
        out.square().sum().backward()
        out2.square().sum().backward()
        for (name, p), q in zip(lstm.named_parameters(), loop.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-13, msg=name)
    assert [n for n, _ in vmappable(nn.Sequential(nn.LSTM(5, 7))).named_parameters()] == \
        [f"0.{n}" for n, _ in nn.LSTM(5, 7).named_parameters()]


def test_what_cannot_be_batched_says_so():
    with pytest.raises(Unbatchable, match="RMSprop has no batched version"):
        optimizer_spec({"_target_": "torch.optim.RMSprop", "_partial_": True, "lr": 0.1})
    with pytest.raises(Unbatchable, match="GRU"):
        vmappable(nn.Sequential(nn.GRU(3, 4)))
    with pytest.raises(Unbatchable, match="bidirectional"):
        LoopLSTM(nn.LSTM(3, 4, bidirectional=True))
    with pytest.raises(Unbatchable, match="another architecture"):
        stack_models([nn.Linear(3, 4), nn.Linear(3, 5)])


def test_jobs_group_when_they_differ_only_in_seed_init_and_lr():
    cfgs = [compose_config(o) for o in (["seed=0"], ["seed=1", "init=kaiming"], ["optimizer.lr=0.3"],
                                        ["model=mlp"], ["model=mlp", "seed=4"], ["trainer.epochs=3"])]
    assert group_jobs(cfgs) == [[0, 1, 2], [3, 4], [5]]


def test_plan_runs_short_or_single_jobs_sequentially_and_probes_the_rest():
    cfg = compose_config(["model=mlp", "dataset.train_size=256"])
    jobs = [prepare(compose_config(["model=mlp", "dataset.train_size=256", f"seed={s}"])) for s in range(3)]
    said = []
    assert plan(jobs, cfg, "auto", 64, said.append) == 1 and "too few" in said[0]  # 2 steps per model
    assert plan(jobs[:1], cfg, "batched", 64, said.append) == 1
    assert plan(jobs, cfg, "sequential", 64, said.append) == 1
    assert plan(jobs, cfg, "batched", 2, said.append) == 2
    with pytest.raises(ValueError, match="valid: auto, batched, sequential"):
        plan(jobs, cfg, "parallel", 64)
