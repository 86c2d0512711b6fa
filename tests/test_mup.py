"""The mup policy (muP, Yang et al. 2021): its init and per-parameter optimizer factors against the mup
package's own (MuReadout, set_base_shapes, MuSGD, MuAdam, MuAdamW), and its defining property: the width
check stays flat."""

import copy
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from initbench.init import InitError, build_policy
from initbench.models import DataShape, build_model
from initbench.probe import width_check, width_tables
from initbench.run import optimizer_scales
from initbench.train import build_optimizer

from .conftest import compose_config

MUP = Path(__file__).resolve().parents[1] / "conf" / "init" / "mup.yaml"
SHAPE = DataShape(1, 4, 5, 10)  # 20 features, 10 classes
BASE, WIDTH = 32, 128  # m = 4
OPTIMIZERS = {  # large weight decay and eps, so that a wrong factor on either shows
    "sgd": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.1},
    "adam": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.01, "eps": 1e-3, "weight_decay": 0.1},
    "adamw": {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 0.01, "eps": 1e-3, "weight_decay": 0.1},
}


def mup_policy(base_width: int = BASE):
    cfg = OmegaConf.load(MUP)
    cfg.base_width = base_width
    return build_policy(cfg)


def mlp(width: int, depth: int = 3) -> nn.Module:
    return build_model({"name": "mlp", "depth": depth, "width": width}, SHAPE).double()


def reference(width: int) -> nn.Module:
    """initbench's MLP with the mup package's MuReadout head, its base shapes set (base BASE, delta 2 BASE):
    PyTorch's default init rescaled by set_base_shapes, as the mup package's users build it."""
    mup = pytest.importorskip("mup")

    def build(w):
        model = mlp(w)
        model.head = mup.MuReadout(w, SHAPE.num_classes).double()
        return model

    return mup.set_base_shapes(build(width), build(BASE), delta=build(2 * BASE))


def test_init_has_the_mup_package_distribution():
    """Per parameter, mup's values (its readout as the function it computes: W / m) fill the same uniform
    range as the policy's: none outside our bound, and the largest close to it, pooled over 40 models."""
    m = WIDTH / BASE
    ours, theirs = {}, {}
    for seed in range(40):
        torch.manual_seed(seed)
        ref = reference(WIDTH)
        model = mlp(WIDTH)
        report = mup_policy().apply(model, torch.Generator().manual_seed(seed))
        for name, p in ref.named_parameters():
            theirs.setdefault(name, []).append(p.detach().flatten() / (m if name == "head.weight" else 1))
        for name, p in model.named_parameters():
            ours.setdefault(name, []).append(p.detach().flatten())
    bound = dict(zip(report.frame.param, report.frame.expected_std * math.sqrt(3), strict=True))
    for name in bound:
        mine, ref = torch.cat(ours[name]), torch.cat(theirs[name])
        for values in (mine, ref):
            assert values.abs().max() <= bound[name] * (1 + 1e-9), name
            assert values.abs().max() >= 0.97 * bound[name], name  # P(miss) < 0.97^400
        assert mine.std().item() == pytest.approx(ref.std().item(), rel=0.1), name
    assert bound["layers.1.0.weight"] == pytest.approx(1 / math.sqrt(WIDTH))  # hidden: 1/fan_in, any width
    assert bound["head.weight"] == pytest.approx(1 / math.sqrt(BASE) / m)  # readout: the base's, over m


def three_steps_alike(model, ours, ref, theirs, plain, unscaled, shape, m: float, rtol: float) -> None:
    """Three steps on the same random batches: `model` under `ours` ends where `ref` under `theirs` does (its
    readout compared as W / m), and `plain` under `unscaled` does not."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(16, *shape, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 10, (16,), generator=gen)
        for net, opt in ((model, ours), (ref, theirs), (plain, unscaled)):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        q = q / (m if name == "head.weight" else 1)
        assert torch.allclose(p, q, rtol=rtol, atol=rtol / 1000), name
    assert not all(torch.allclose(p, r, rtol=1e-6) for p, r in zip(model.parameters(), plain.parameters(), strict=True))


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_training_steps_match_the_mup_package_optimizers(kind):
    """Three steps of MuSGD / MuAdam / MuAdamW on the set_base_shapes model move every parameter as the
    policy's factors on torch's optimizer move ours (float64; the readout compared as W / m)."""
    mup = pytest.importorskip("mup")
    m = WIDTH / BASE
    cfg = OPTIMIZERS[kind]
    model = mlp(WIDTH)
    policy = mup_policy()
    policy.apply(model, torch.Generator().manual_seed(0))
    ref = reference(WIDTH)
    with torch.no_grad():
        for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
            q.copy_(p * (m if name == "head.weight" else 1))
    scales = policy.optimizer_scales(model, cfg)
    assert scales  # a width other than the base scales something under every optimizer
    ours = build_optimizer(cfg, list(model.named_parameters()), scales)
    options = {k: v for k, v in cfg.items() if not k.startswith("_")}
    theirs = {"sgd": mup.MuSGD, "adam": mup.MuAdam, "adamw": mup.MuAdamW}[kind](ref.parameters(), **options)
    plain = copy.deepcopy(model)  # the same optimizer without the factors: must not match
    unscaled = build_optimizer(cfg, list(plain.named_parameters()))
    three_steps_alike(model, ours, ref, theirs, plain, unscaled, (SHAPE.channels, SHAPE.height, SHAPE.width), m, 1e-10)


TRANSFORMER = Path(__file__).resolve().parents[1] / "conf" / "init" / "mup_transformer.yaml"
IMAGES = DataShape(1, 8, 8, 10)  # patches of 2: 16 tokens and a class token


def transformer(width: int) -> nn.Module:
    return build_model({"name": "transformer", "depth": 2, "width": width, "heads": 4, "attn_scale": "inv_d"},
                       IMAGES).double()


def transformer_policy(width: int):
    cfg = OmegaConf.create({"model": {"width": width}, "init": OmegaConf.load(TRANSFORMER)})
    cfg.init.base_width = BASE
    return build_policy(cfg.init)


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_transformer_steps_match_the_mup_package_optimizers(kind):
    """The transformer under mup_transformer against the mup package's own recipe for it: the same net with
    MuReadout, set_base_shapes (base BASE, delta 2 BASE), MuSGD / MuAdam / MuAdamW. Three steps move every
    parameter alike (float64; the readout compared as W / m); without the factors they do not."""
    mup = pytest.importorskip("mup")
    m = WIDTH / BASE

    def with_mureadout(width):
        net = transformer(width)
        net.head = mup.MuReadout(width, IMAGES.num_classes).double()
        return net

    ref = mup.set_base_shapes(with_mureadout(WIDTH), with_mureadout(BASE), delta=with_mureadout(2 * BASE))
    model, policy, cfg = transformer(WIDTH), transformer_policy(WIDTH), OPTIMIZERS[kind]
    policy.apply(model, torch.Generator().manual_seed(0))
    assert model.head.weight.eq(0).all() and model.blocks[0].attn.branch.qkv.weight[:WIDTH].eq(0).all()
    with torch.no_grad():
        for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
            q.copy_(p * (m if name == "head.weight" else 1))
    ours = build_optimizer(cfg, list(model.named_parameters()), policy.optimizer_scales(model, cfg))
    options = {k: v for k, v in cfg.items() if not k.startswith("_")}
    theirs = {"sgd": mup.MuSGD, "adam": mup.MuAdam, "adamw": mup.MuAdamW}[kind](ref.parameters(), **options)
    plain = copy.deepcopy(model)
    unscaled = build_optimizer(cfg, list(plain.named_parameters()))
    three_steps_alike(model, ours, ref, theirs, plain, unscaled, (1, 8, 8), m, 1e-9)


def test_mup_transformer_refuses_the_standard_attention_scale():
    net = build_model({"name": "transformer", "depth": 1, "width": 32, "heads": 2}, IMAGES)
    with pytest.raises(InitError, match="model.attn_scale=inv_d"):
        transformer_policy(32).apply(net, torch.Generator())


@pytest.mark.slow  # 18 width checks of 30 steps: about 40 s on 2 cores
def test_transformer_width_check_is_flatter_under_mup_than_under_default():
    """The coordinate check as mup's own runs it, over 3 seeds and 30 Adam steps, widths 32-128: each
    layer's change from init under mup_transformer keeps its size (every |slope| < 0.25 in the mean over
    seeds), where under `default` the readout's grows with the width."""
    slopes = {}
    for init, extra in (("mup_transformer", ["model.attn_scale=inv_d", "init.base_width=32"]), ("default", [])):
        per_seed = []
        for seed in range(3):
            cfg = compose_config(["model=transformer", "model.depth=2", f"init={init}", *extra, "optimizer=adam",
                                  "optimizer.lr=0.003", "dataset.val_size=0", "trainer.batch_size=32", f"seed={seed}"])
            table = width_check(cfg, [32, 64, 128], 30)
            per_seed.append(width_tables(table, 30)["mean |change from init| after 30 steps"]["slope"])
        slopes[init] = sum(per_seed) / len(per_seed)
    assert slopes["mup_transformer"].abs().max() < 0.25, slopes["mup_transformer"]
    assert slopes["default"]["head"] > 0.35, slopes["default"]


def test_at_the_base_width_mup_is_pytorchs_default():
    """Same theory std, no optimizer factors, and (drawing U(-b, b) in PyTorch's order) the very float32
    weights PyTorch's default init draws from the same seed."""
    model = build_model({"name": "mlp", "depth": 3, "width": BASE}, SHAPE)
    mup_report = mup_policy().apply(model, torch.Generator().manual_seed(3))
    torch.manual_seed(3)
    default = build_model({"name": "mlp", "depth": 3, "width": BASE}, SHAPE)
    default_report = build_policy({"name": "default", "rules": []}).apply(default, torch.Generator())
    assert mup_report.frame.expected_std.tolist() == pytest.approx(default_report.frame.expected_std.tolist())
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), default.parameters(), strict=True))
    for cfg in OPTIMIZERS.values():
        assert mup_policy().optimizer_scales(model, cfg) == {}


def test_the_factors_follow_the_width_multiplier():
    """SGD: lr m for the input layer and every bias of the width, 1/m for the readout weight; Adam: 1/m for
    hidden and readout weights. Weight decay keeps lr * weight_decay (but for V = W/m under coupled Adam)."""
    model, m = mlp(WIDTH), WIDTH / BASE
    sgd = mup_policy().optimizer_scales(model, OPTIMIZERS["sgd"])
    assert {name: f["lr"] for name, f in sgd.items()} == {
        "layers.0.0.weight": m, "layers.0.0.bias": m, "layers.1.0.bias": m, "layers.2.0.bias": m, "head.weight": 1 / m}
    assert all(f["weight_decay"] == 1 / f["lr"] for f in sgd.values())
    adam = mup_policy().optimizer_scales(model, OPTIMIZERS["adam"])
    assert adam == {"layers.1.0.weight": {"lr": 1 / m, "weight_decay": m}, "layers.2.0.weight": {"lr": 1 / m,
                    "weight_decay": m}, "head.weight": {"lr": 1 / m, "weight_decay": m * m, "eps": m}}


def test_width_check_is_flat_under_mup_and_not_under_default():
    """The defining property (the coordinate check): after 10 SGD steps each layer's change from init keeps
    its size across widths 64-512 under mup (log-log slope near 0), while under `default` the readout's
    grows with the width and the input layer's shrinks."""
    slopes = {}
    for init in ("mup", "default"):
        cfg = compose_config(["model=mlp", f"init={init}", "dataset.val_size=0"])
        table = width_check(cfg, [64, 128, 256, 512], 10)
        slopes[init] = width_tables(table, 10)["mean |change from init| after 10 steps"]["slope"]
    assert slopes["mup"].abs().max() < 0.2, slopes["mup"]
    assert slopes["default"]["head"] > 0.35 and slopes["default"]["layers.0.0"] < -0.35, slopes["default"]


def test_bad_input_is_refused_with_the_valid_choices():
    model = mlp(WIDTH)
    with pytest.raises(InitError, match=r"layers.0.0.weight.*torch.optim.SGD, Adam and AdamW, not torch.optim.RMSprop"):
        mup_policy().optimizer_scales(model, {"_target_": "torch.optim.RMSprop"})
    with pytest.raises(InitError, match="needs base_width > 0, got 0"):
        mup_policy(0).apply(model, torch.Generator())
    with pytest.raises(InitError, match=r"needs args \['base_width'\]"):
        build_policy({"name": "t", "rules": [{"scheme": "mup_hidden"}]})
    lenet = build_model({"name": "lenet"}, DataShape(3, 32, 32, 10))
    with pytest.raises(InitError, match=r"rule 0 .*head.*matches no parameter"):
        mup_policy().apply(lenet, torch.Generator())
    with pytest.raises(ValueError, match=r"cannot scale \['betas'\] of Adam .* numeric options are .*eps.*lr"):
        build_optimizer(OPTIMIZERS["adam"], list(model.named_parameters()), {"head.weight": {"betas": 2.0}})
    with pytest.raises(ValueError, match=r"parameters the model lacks: \['fc9.weight'\]"):
        build_optimizer(OPTIMIZERS["sgd"], list(model.named_parameters()), {"fc9.weight": {"lr": 2.0}})


def test_a_job_gets_its_policys_factors():
    cfg = compose_config(["model=mlp", "model.width=128", "init=mup", "optimizer=adam"])
    model = build_model(cfg.model, SHAPE)
    assert optimizer_scales(cfg, model)["head.weight"]["lr"] == 0.5  # base_width 64
    assert optimizer_scales(compose_config(["model=mlp", "init=kaiming"]), model) == {}


@pytest.mark.slow  # four MLflow runs: about 30 s on a busy 2-core machine
def test_a_batched_sweep_trains_with_the_factors_as_one_by_one(tmp_path, monkeypatch):
    """The batched launcher's core hands each job's factors to the batched trainer: its runs end where
    one-by-one runs end (float32: to summation order)."""
    from initbench.batched.sweep import run_jobs

    monkeypatch.chdir(tmp_path)  # MLflow puts a sqlite store's artifacts in ./mlruns
    finals = {}
    for mode in ("batched", "sequential"):
        (tmp_path / mode).mkdir()
        cfgs = [compose_config(["model=mlp", "model.width=128", "init=mup", "init.base_width=32", "optimizer.lr=0.1",
                                "dataset.train_size=256", f"seed={seed}"], tmp_path / mode) for seed in (0, 1)]
        finals[mode] = [outcome.result.final for outcome in run_jobs(cfgs, mode=mode, say=lambda _: None)]
    for batched, single in zip(finals["batched"], finals["sequential"], strict=True):
        assert batched == pytest.approx(single, rel=1e-4)
