"""The training loop: metrics and their steps, determinism, divergence."""

import math

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters
from torch.nn import functional as F

from initbench.batched import fit_batched
from initbench.data import load_dataset
from initbench.devices import resolve_device
from initbench.run import build_initialized_model
from initbench.train import build_optimizer, decay_exempt, fit, lr_factor, with_decay_exempt

from .conftest import compose_config


def train(overrides, epochs=1, train_size=256):
    cfg = compose_config(overrides + [f"dataset.train_size={train_size}", f"trainer.epochs={epochs}"])
    data = load_dataset(cfg.dataset, cfg.paths.data_dir, "cpu", image_size=cfg.model.get("image_size"))
    model, _ = build_initialized_model(cfg, data)
    points = []
    result = fit(model, data, cfg.trainer, cfg.optimizer, cfg.seed, log=points.extend)
    return result, points, model


def by_key(points):
    out = {}
    for key, value, step in points:
        out.setdefault(key, []).append((step, value))
    return out


def test_metrics_and_their_steps():
    result, points, model = train(["model=mlp", "trainer.batch_size=64"], epochs=2)
    metrics = by_key(points)
    assert result.status == "finished" and result.steps == 8
    assert [s for s, _ in metrics["train/loss"]] == list(range(1, 9))  # 256/64 = 4 steps per epoch
    for key in ("train/acc", "val/loss", "val/acc", "test/loss", "test/acc"):  # val: held out of train
        assert [s for s, _ in metrics[key]] == [1, 2]
    names = [n for n, _ in model.named_parameters()]
    for name in names:  # first epoch only, every step
        assert [s for s, _ in metrics[f"vitals/grad_norm/{name}"]] == [1, 2, 3, 4]
    assert all(v > 0 for _, v in metrics["vitals/grad_norm/head.weight"])
    probe = [k for k in metrics if k.startswith(("vitals/act_std/", "vitals/backprop_std/"))]
    assert "vitals/act_std/layers.0.0" in probe and "vitals/backprop_std/head" in probe
    assert all([s for s, _ in metrics[k]] == ([0, 1, 2] if k.startswith("vitals/act_std/") else [0]) for k in probe)
    # train/acc is the fraction of correct predictions over the epoch's batches
    assert 0 <= metrics["train/acc"][0][1] <= 1 and result.final["test/acc"] == metrics["test/acc"][-1][1]
    assert result.final["val/acc"] == metrics["val/acc"][-1][1]


def test_grad_norms_are_the_first_epochs():
    """grad_norm/* over 2 epochs: steps 1..4, and at step 1 the norms of the first batch's gradient at init,
    recomputed here by hand (the same batch: the first of fit()'s seeded order)."""
    cfg = compose_config(["model=mlp", "trainer.batch_size=64", "dataset.train_size=256", "trainer.epochs=2"])
    data = load_dataset(cfg.dataset, cfg.paths.data_dir, "cpu")
    model, _ = build_initialized_model(cfg, data)
    idx = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(cfg.seed))[:64]
    F.cross_entropy(model(data.train_x[idx]), data.train_y[idx]).backward()
    at_init = {name: p.grad.norm().item() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    points = []
    fit(model, data, cfg.trainer, cfg.optimizer, cfg.seed, log=points.extend)
    metrics = by_key(points)
    for name, norm in at_init.items():
        steps, values = zip(*metrics[f"vitals/grad_norm/{name}"], strict=True)
        assert steps == (1, 2, 3, 4)
        assert values[0] == pytest.approx(norm, rel=1e-5)


class Overflows(nn.Module):
    """A linear classifier whose logits, once its weights have moved, are a finite +-3e38 that no input
    changes: cross-entropy +inf (3e38 - (-3e38) overflows float32), not NaN, and gradients 0."""

    def __init__(self, features: int, classes: int):
        super().__init__()
        self.fc = nn.Linear(features, classes)
        self.register_buffer("start", self.fc.weight.detach().clone())
        self.register_buffer("huge", torch.full((classes,), -3e38).index_fill(0, torch.tensor([0]), 3e38))

    def forward(self, x):
        logits = self.fc(x.flatten(1))
        return logits if torch.equal(self.fc.weight, self.start) else logits * 0 + self.huge


def test_an_infinite_loss_is_a_divergence_too():
    cfg = compose_config(["trainer.batch_size=64", "dataset.train_size=256", "trainer.epochs=2"])
    data = load_dataset(cfg.dataset, cfg.paths.data_dir, "cpu")
    torch.manual_seed(0)
    model, points = Overflows(data.train_x[0].numel(), 10), []
    result = fit(model, data, cfg.trainer, cfg.optimizer, cfg.seed, log=points.extend)
    assert F.cross_entropy(model(data.train_x), data.train_y).item() == math.inf  # +inf from step 2 on
    losses = by_key(points)["train/loss"]
    assert (result.status, result.steps) == ("diverged", 1)
    assert len(losses) == 1 and math.isfinite(losses[0][1])  # the step before the blow-up only


def test_same_seed_same_curves_and_different_seed_different():
    a = by_key(train(["seed=3"])[1])["train/loss"]
    b = by_key(train(["seed=3"])[1])["train/loss"]
    c = by_key(train(["seed=4"])[1])["train/loss"]
    assert a == b
    assert a != c


def test_training_learns_digits():
    result, _, _ = train(["model=mlp", "optimizer=adam"], epochs=3, train_size=1000)
    assert result.final["test/acc"] > 0.85


def test_summary_names_the_first_step_whose_loss_reached_the_threshold():
    """whole_run/steps_to_loss_0.5: the first logged train/loss <= 0.5 (the analysis' rule), once, however
    high the loss goes after it; absent from a run whose loss never got there."""
    result, points, _ = train(["model=mlp", "optimizer=adam"], epochs=3, train_size=1000)
    losses = by_key(points)["train/loss"]
    first = next(step for step, loss in losses if loss <= 0.5)
    assert 1 < first < result.steps and result.summary()["steps_to_loss_0.5"] == first
    slow, slow_points, _ = train(["model=mlp", "optimizer.lr=1e-5"], epochs=1)
    assert "steps_to_loss_0.5" not in slow.summary()
    assert min(v for _, v in by_key(slow_points)["train/loss"]) > 0.5


def test_non_finite_loss_ends_diverged_not_an_exception():
    result, points, _ = train(["model=mlp", "model.activation=leaky_relu", "init=ones", "optimizer.lr=1e6"], epochs=3)
    assert result.status == "diverged"
    losses = [v for k, v, _ in points if k == "train/loss"]
    assert all(math.isfinite(v) for v in losses)  # the steps before the blow-up only
    assert "test/acc" not in by_key(points) or len(by_key(points)["test/acc"]) < 3


def test_cosine_schedule_and_adam_run():
    result, _, _ = train(["optimizer=adam", "trainer.schedule=cosine", "model=lstm", "model.hidden_size=16"])
    assert result.status == "finished"


def test_warmup_is_linear_then_the_schedule_runs_over_the_steps_after_it():
    constant = [lr_factor(t, "constant", 10, warmup_steps=4) for t in range(10)]
    assert constant == [0.25, 0.5, 0.75] + [1.0] * 7
    cosine = [lr_factor(t, "cosine", 10, warmup_steps=4) for t in range(10)]
    assert cosine[:4] == [0.25, 0.5, 0.75, 1.0]
    assert cosine[4:] == pytest.approx([(1 + math.cos(math.pi * i / 6)) / 2 for i in range(6)])
    no_warmup = [lr_factor(t, "cosine", 10) for t in range(10)]
    opt = torch.optim.SGD([torch.zeros(1)], lr=1.0)
    torch_cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    for t in range(10):  # without warmup, torch's own cosine
        assert opt.param_groups[0]["lr"] == pytest.approx(no_warmup[t], abs=1e-12)
        opt.step()
        torch_cosine.step()


def one_sgd_step(overrides):
    """(parameters before, after, their gradients at the start) of one plain SGD step (lr 0.5, no momentum)."""
    cfg = compose_config(["model=mlp", "model.width=32", "optimizer.momentum=0", "optimizer.lr=0.5",
                          "trainer.batch_size=64", "dataset.train_size=64", "trainer.epochs=1", *overrides])
    data = load_dataset(cfg.dataset, cfg.paths.data_dir, "cpu")
    model, _ = build_initialized_model(cfg, data)
    before = [p.detach().clone() for p in model.parameters()]
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(cfg.seed))
    F.cross_entropy(model(data.train_x[perm]), data.train_y[perm]).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    fit(model, data, cfg.trainer, cfg.optimizer, cfg.seed)
    return before, [p.detach() for p in model.parameters()], grads


def test_the_first_step_of_a_warmup_takes_a_warmup_steps_th_of_the_lr():
    before, after, grads = one_sgd_step(["trainer.warmup_steps=4"])
    for b, a, g in zip(before, after, grads, strict=True):
        assert torch.allclose(b - a, 0.5 / 4 * g, rtol=1e-4, atol=1e-7)


def test_grad_clip_bounds_the_global_norm_of_the_step():
    before, after, grads = one_sgd_step(["trainer.grad_clip=0.01"])
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert norm > 0.1  # so the clip acts: the step is the gradient scaled to a norm of 0.01
    for b, a, g in zip(before, after, grads, strict=True):
        assert torch.allclose(b - a, 0.5 * g * 0.01 / norm, rtol=1e-4, atol=1e-8)


def test_decay_exempt_keeps_biases_norms_gates_and_embeddings_out_of_weight_decay():
    cfg = compose_config(["model=transformer", "model.depth=2", "model.branch_gate=scalar", "optimizer=adamw",
                          "dataset.train_size=64",
                          "trainer.decay_exempt=true"])
    data = load_dataset(cfg.dataset, cfg.paths.data_dir, "cpu")
    model, _ = build_initialized_model(cfg, data)
    exempt = set(decay_exempt(model))
    names = dict(model.named_parameters())
    assert {"cls.weight", "pos.weight", "head.bias", "norm.weight", "blocks.0.attn.gate.weight",
            "blocks.1.mlp.branch.norm.weight"} <= exempt
    assert all(names[n].dim() == 2 for n in set(names) - exempt)  # the Linear weights, decayed
    assert {"embed.weight", "head.weight", "blocks.0.attn.branch.qkv.weight"}.isdisjoint(exempt)
    opt = build_optimizer(cfg.optimizer, list(names.items()), with_decay_exempt(None, model, cfg.trainer))
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert {n for n, p in names.items() if decay[id(p)] == 0} == exempt
    assert {decay[id(names[n])] for n in set(names) - exempt} == {0.01}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the messages of a machine without CUDA")
def test_device_auto_falls_back_to_the_cpu_and_a_named_cuda_fails_clearly():
    assert resolve_device("auto").type in ("cpu", "mps")
    with pytest.raises(ValueError, match="trainer.device='cuda' but CUDA is not available here"):
        resolve_device("cuda")


def test_bf16_precision_is_autocast_and_an_unknown_one_is_refused():
    full = by_key(train(["model=mlp"])[1])["train/loss"]
    half = by_key(train(["model=mlp", "trainer.precision=bf16"])[1])["train/loss"]
    assert len(half) == len(full) and half != full  # bf16 rounding shows in the losses ...
    assert all(abs(h - f) < 0.1 * f for (_, h), (_, f) in zip(half, full, strict=True))  # ... and only there
    with pytest.raises(ValueError, match="unknown trainer.precision 'fp8'; valid: float32, tf32, bf16"):
        train(["trainer.precision=fp8"])


@pytest.mark.parametrize("precision,tf32", [("float32", False), ("tf32", True), ("bf16", False)])
def test_precision_sets_tf32_for_the_run_only(precision, tf32):
    def flags():
        return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32

    before, seen = flags(), set()
    cfg = compose_config(["model=mlp", f"trainer.precision={precision}", "dataset.train_size=256", "trainer.epochs=1"])
    data = load_dataset(cfg.dataset, cfg.paths.data_dir, "cpu")
    fit(build_initialized_model(cfg, data)[0], data, cfg.trainer, cfg.optimizer, 0, log=lambda _: seen.add(flags()))
    fit_batched([build_initialized_model(cfg, data)[0]], data, cfg.trainer, cfg.optimizer, [0],
                logs=[lambda _: seen.add(flags())])
    assert seen == {(tf32, tf32)}  # matmuls and cuDNN (convolutions, LSTM) alike, in both trainers
    assert flags() == before


def test_an_unknown_compile_setting_or_mode_is_refused():
    with pytest.raises(ValueError, match="unknown trainer.compile 'yes'; valid: auto, true, false"):
        train(["model=mlp", "trainer.compile=yes"])
    with pytest.raises(ValueError, match="unknown trainer.compile_mode 'fast'; valid: null, default, reduce-overhead"):
        train(["model=mlp", "trainer.compile=true", "trainer.compile_mode=fast"])


@pytest.mark.slow
def test_compiled_training_step_matches_eager_and_compiles_once_per_batch_shape(recwarn):
    eager = by_key(train(["model=mlp", "trainer.compile=false"], epochs=2, train_size=240)[1])["train/loss"]
    torch._dynamo.reset()
    counters.clear()
    compiled = by_key(train(["model=mlp", "trainer.compile=true"], epochs=2, train_size=240)[1])["train/loss"]
    assert not [w for w in recwarn if "torch.compile failed" in str(w.message)]  # it did compile
    assert counters["stats"]["unique_graphs"] == 2  # 240 = 128 + 112: two batch shapes, not one per step
    assert [s for s, _ in compiled] == [s for s, _ in eager]
    assert all(abs(c - e) < 1e-4 * e for (_, c), (_, e) in zip(compiled, eager, strict=True))
