"""LSUV on a real batch (scikit-learn's bundled digits): unit output variance per layer, reproducibly."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F

from initbench.init import build_policy
from initbench.init.lsuv import lsuv_layers
from initbench.models import DataShape, build_model

LSUV = build_policy(OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "init" / "lsuv.yaml"))
DIGITS = DataShape(1, 8, 8, 10)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """500 digits, each pixel scaled to mean 0 and std 1 over the set (constant pixels stay 0)."""
    x = torch.tensor(load_digits().data[:500], dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
    return x.reshape(-1, 1, 8, 8)


def output_variances(model: nn.Module, batch: torch.Tensor) -> dict[str, float]:
    """Var of each Linear/Conv output on `batch` in train mode, measured independently of lsuv.py."""
    variances, hooks = {}, []

    def record(name: str):
        def hook(module, args, out) -> None:
            variances.setdefault(name, out.var().item())

        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            hooks.append(module.register_forward_hook(record(name)))
    model.train()
    with torch.no_grad():
        model(batch)
    for hook in hooks:
        hook.remove()
    return variances


MODELS = {
    "mlp_relu": ({"name": "mlp", "depth": 6, "width": 64}, lambda x: x),
    "mlp_tanh_bn": ({"name": "mlp", "depth": 4, "width": 64, "activation": "tanh", "batch_norm": True}, lambda x: x),
    "lenet": ({"name": "lenet"}, lambda x: F.interpolate(x, size=16)),  # LeNet needs >= 10x10 pixels
    "lstm": ({"name": "lstm", "hidden_size": 32}, lambda x: x),
}


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_lsuv_reaches_unit_variance_per_layer(digits, model_name):
    cfg, prepare = MODELS[model_name]
    batch = prepare(digits)
    torch.manual_seed(0)
    model = build_model(cfg, DataShape(1, batch.shape[2], batch.shape[3], 10))
    buffers = [b.clone() for b in model.buffers()]
    report = LSUV.apply(model, torch.Generator().manual_seed(0), batch=batch)
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), buffers, strict=True))  # BN stats untouched
    trace = report.lsuv
    assert trace["converged"].all()
    assert list(trace["layer"]) == list(output_variances(model, batch))  # every Linear/Conv, forward order
    for layer, var in output_variances(model, batch).items():
        assert abs(var - 1.0) < LSUV.lsuv.tol, layer
    rescaled = report.frame[report.frame["scheme"] == "orthogonal+lsuv"]
    assert len(rescaled) == len(trace) and rescaled["expected_std"].isna().all()


def test_lsuv_is_reproducible_and_leaves_the_global_rng_alone(digits):
    def run() -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = build_model(MODELS["mlp_relu"][0], DIGITS)
        torch.rand(7)
        LSUV.apply(model, torch.Generator().manual_seed(5), batch=digits)
        return [p.detach().clone() for p in model.parameters()]

    state = torch.get_rng_state()
    first = run()
    torch.set_rng_state(state)
    assert all(torch.equal(a, b) for a, b in zip(first, run(), strict=True))


def test_lsuv_with_a_tight_tolerance_iterates_and_records_it(digits):
    policy = build_policy({"name": "lsuv_tight", "rules": [
        {"where": {"module": "Linear", "param": "weight"}, "scheme": "orthogonal"}],  # biases keep default
        "lsuv": {"tol": 0.001, "max_iters": 20}})
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "depth": 3, "width": 64}, DIGITS)
    trace = policy.apply(model, torch.Generator(), batch=digits).lsuv
    assert (abs(trace["var_after"] - 1) < 0.001).all() and (trace["iterations"] >= 1).all()
    assert list(trace.columns) == ["layer", "iterations", "var_before", "var_after", "converged"]


def test_layers_come_in_forward_order_not_definition_order(digits):
    class Backwards(nn.Module):
        def __init__(self):
            super().__init__()
            self.second = nn.Linear(16, 10)
            self.first = nn.Linear(64, 16)

        def forward(self, x):
            return self.second(torch.relu(self.first(x.flatten(1))))

    assert [name for name, _ in lsuv_layers(Backwards(), digits, ("Linear",))] == ["first", "second"]
