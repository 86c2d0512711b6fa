"""Each scheme's samples against its theory: std within a few percent, KS tests where the law is known."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from initbench.init import SCHEMES, InitError, build_policy, register
from initbench.init.schemes import NONLINEARITIES

# Large tensors of the three kinds the models have: (out, in) Linear, (out, in, k, k) Conv2d and an
# LSTM's stacked (4H, in) input weights.
LINEAR, CONV, LSTM_IH = (384, 256), (96, 64, 3, 3), (4 * 128, 192)
SHAPES = {"linear": LINEAR, "conv": CONV, "lstm": LSTM_IH}

# (scheme, args, the scipy law of one entry given the expected std, or None)
CASES = [
    ("uniform", {"a": -0.3, "b": 0.7}, lambda s, a: stats.uniform(a["a"], a["b"] - a["a"])),
    ("normal", {"mean": 0.1, "std": 0.02}, lambda s, a: stats.norm(a["mean"], a["std"])),
    ("trunc_normal", {"std": 1.0, "a": -1.5, "b": 2.0}, lambda s, a: stats.truncnorm(-1.5, 2.0)),
    ("trunc_normal", {"mean": 0.0, "std": 0.02, "a": -0.04, "b": 0.04}, lambda s, a: stats.truncnorm(-2, 2, 0, 0.02)),
    ("xavier_uniform", {}, lambda s, a: stats.uniform(-s * 3**0.5, 2 * s * 3**0.5)),
    ("xavier_uniform", {"nonlinearity": "tanh"}, lambda s, a: stats.uniform(-s * 3**0.5, 2 * s * 3**0.5)),
    ("xavier_normal", {"gain": 2.0}, lambda s, a: stats.norm(0, s)),
    ("xavier_normal", {"nonlinearity": "leaky_relu", "negative_slope": 0.2}, lambda s, a: stats.norm(0, s)),
    ("kaiming_uniform", {}, lambda s, a: stats.uniform(-s * 3**0.5, 2 * s * 3**0.5)),  # torch: leaky_relu, a=0
    ("kaiming_uniform", {"a": math.sqrt(5)}, lambda s, a: stats.uniform(-s * 3**0.5, 2 * s * 3**0.5)),
    (
        "kaiming_uniform",
        {"mode": "fan_out", "nonlinearity": "relu"},
        lambda s, a: stats.uniform(-s * 3**0.5, 2 * s * 3**0.5),
    ),  # noqa: E501
    ("kaiming_normal", {"mode": "fan_in", "nonlinearity": "relu"}, lambda s, a: stats.norm(0, s)),
    ("kaiming_normal", {"mode": "fan_out", "nonlinearity": "leaky_relu", "a": 0.2}, lambda s, a: stats.norm(0, s)),
    ("kaiming_normal", {"nonlinearity": "tanh"}, lambda s, a: stats.norm(0, s)),
    ("kaiming_normal", {"nonlinearity": "selu"}, lambda s, a: stats.norm(0, s)),
    ("lecun_normal", {}, lambda s, a: stats.norm(0, s)),
    ("lecun_normal", {"nonlinearity": "tanh"}, lambda s, a: stats.norm(0, s)),
    ("lecun_uniform", {}, lambda s, a: stats.uniform(-s * 3**0.5, 2 * s * 3**0.5)),
    ("orthogonal", {}, None),
    ("orthogonal", {"nonlinearity": "relu"}, None),
    ("sparse", {"sparsity": 0.3, "std": 0.05}, None),
    ("d2l_bimodal", {}, None),
]


def fill(name: str, shape, args: dict, seed: int = 0) -> tuple[torch.Tensor, float]:
    scheme = SCHEMES[name]
    resolved = scheme.resolve(args)
    tensor = torch.empty(shape)
    scheme(tensor, torch.Generator().manual_seed(seed), resolved)
    return tensor, scheme.expected_std(tensor.shape, resolved)


@pytest.mark.parametrize("kind", sorted(SHAPES))
@pytest.mark.parametrize(("name", "args", "law"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_sample_std_matches_theory(name, args, law, kind):
    if name == "sparse" and kind == "conv":
        pytest.skip("sparse fills 2-D tensors only (as torch's does)")
    tensor, expected = fill(name, SHAPES[kind], args)
    assert tensor.std().item() == pytest.approx(expected, rel=0.03)
    if law is not None:
        sample = tensor.flatten()[::2].double().numpy()  # ~50k draws: sensitive, still fast
        assert stats.kstest(sample, law(expected, SCHEMES[name].resolve(args)).cdf).pvalue > 1e-3


def test_theory_uses_the_right_fans_and_gains():
    """The expected std, recomputed by hand from the fans: the numbers a reader checks in the report."""
    fan_in, fan_out = 64 * 9, 96 * 9
    expect = {
        ("kaiming_normal", (("nonlinearity", "relu"),)): math.sqrt(2 / fan_in),
        ("kaiming_normal", (("mode", "fan_out"), ("nonlinearity", "relu"))): math.sqrt(2 / fan_out),
        ("kaiming_uniform", (("a", math.sqrt(5)),)): 1 / math.sqrt(3 * fan_in),  # PyTorch's default
        ("xavier_uniform", (("nonlinearity", "tanh"),)): 5 / 3 * math.sqrt(2 / (fan_in + fan_out)),
        ("lecun_normal", ()): 1 / math.sqrt(fan_in),
        ("orthogonal", ()): 1 / math.sqrt(fan_in),  # 96 x 576: the rows are orthonormal
    }
    for (name, args), std in expect.items():
        scheme = SCHEMES[name]
        assert scheme.expected_std(torch.Size(CONV), scheme.resolve(dict(args))) == pytest.approx(std)


def test_d2l_bimodal_follows_the_seed():
    """Seed 002: zero with probability 1/2, else uniform on [-10, -5] U [5, 10]."""
    tensor, _ = fill("d2l_bimodal", LINEAR, {})
    values = tensor.flatten().double().numpy()
    zero = values == 0
    assert zero.mean() == pytest.approx(0.5, abs=0.01)
    nonzero = np.abs(values[~zero])
    assert nonzero.min() >= 5 and nonzero.max() <= 10
    assert stats.kstest(nonzero[::4], stats.uniform(5, 5).cdf).pvalue > 1e-3
    assert (values[~zero] < 0).mean() == pytest.approx(0.5, abs=0.01)


def test_orthogonal_rows_are_orthonormal_times_gain():
    tensor, _ = fill("orthogonal", CONV, {"gain": 1.5})
    flat = tensor.reshape(CONV[0], -1).double()
    assert torch.allclose(flat @ flat.T, 1.5**2 * torch.eye(CONV[0], dtype=torch.double), atol=1e-5)


def test_sparse_zeros_per_column_and_ignores_the_global_rng():
    tensor, _ = fill("sparse", (100, 40), {"sparsity": 0.25})
    assert ((tensor == 0).sum(0) == 25).all()
    torch.manual_seed(123)
    again, _ = fill("sparse", (100, 40), {"sparsity": 0.25})
    assert torch.equal(tensor, again)  # torch's own sparse_ would differ: it uses torch.randperm globally


def test_identity_fills_each_lstm_gate_block():
    hidden = 16
    tensor, expected = fill("identity", (4 * hidden, hidden), {"gain": 0.5})
    for block in tensor.split(hidden):
        assert torch.equal(block, 0.5 * torch.eye(hidden))
    assert tensor.std().item() == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize(("name", "shape", "args"), [
    ("eye", (30, 50), {}), ("dirac", (32, 16, 3, 3), {}), ("dirac", (32, 16, 5), {"groups": 2}),
    ("constant", (7, 3), {"val": 0.3}), ("ones", (5,), {}), ("zeros", (5, 5), {}),
    ("lstm_forget_bias", (4 * 32,), {"value": 2.0}),
])
def test_deterministic_fills_match_their_predicted_moments(name, shape, args):
    tensor, expected = fill(name, shape, args)
    scheme = SCHEMES[name]
    n = tensor.numel()
    population_std = tensor.std().item() * math.sqrt((n - 1) / n)
    assert population_std == pytest.approx(expected, abs=1e-6)
    assert tensor.mean().item() == pytest.approx(scheme.expected_mean(tensor.shape, scheme.resolve(args)), abs=1e-6)


def test_every_torch_init_function_is_registered():
    torch_schemes = ["uniform", "normal", "trunc_normal", "constant", "ones", "zeros", "eye", "dirac",
                     "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal",
                     "sparse"]
    ours = ["lecun_normal", "lecun_uniform", "identity", "lstm_forget_bias", "d2l_bimodal"]
    assert set(torch_schemes + ours) <= set(SCHEMES)
    assert SCHEMES["xavier_uniform"].fn is nn.init.xavier_uniform_  # torch's own, for bit-identical results


def test_arg_errors_name_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown args \['gian'\].*valid args: gain, nonlinearity, negative_slope"):
        SCHEMES["xavier_uniform"].resolve({"gian": 1.0})
    with pytest.raises(ValueError, match="unknown nonlinearity 'rleu'; valid: " + ", ".join(NONLINEARITIES)):
        SCHEMES["kaiming_normal"].resolve({"nonlinearity": "rleu"})
    with pytest.raises(ValueError, match="unknown mode 'fan_avg'; valid: fan_in, fan_out"):
        SCHEMES["kaiming_normal"].resolve({"mode": "fan_avg"})
    with pytest.raises(ValueError, match=r"needs args \['sparsity'\]"):
        SCHEMES["sparse"].resolve({})
    with pytest.raises(ValueError, match="arg std must be a number, got '0.01'"):
        SCHEMES["normal"].resolve({"std": "0.01"})
    with pytest.raises(ValueError, match="give gain or nonlinearity, not both"):
        SCHEMES["orthogonal"].resolve({"gain": 1.0, "nonlinearity": "relu"})


def test_register_refuses_silent_overwrite_and_extends_policies():
    with pytest.raises(ValueError, match="already registered.*overwrite=True"):
        register("kaiming_normal")(nn.init.kaiming_normal_)

    def scaled_normal_(tensor, scale: float = 1.0, generator=None):
        """N(0, scale^2 / fan_in)."""
        with torch.no_grad():
            return tensor.normal_(0, scale / math.sqrt(tensor.shape[1]), generator=generator)

    register("test_scaled_normal", std=lambda shape, a: a["scale"] / math.sqrt(shape[1]), fan_based=True)(
        scaled_normal_
    )
    try:
        policy = build_policy({"name": "t", "rules": [{"where": {"param": "weight"}, "scheme": "test_scaled_normal",
                                                       "args": {"scale": 2.0}}]})
        report = policy.apply(nn.Linear(400, 300, bias=False), torch.Generator().manual_seed(0))
        row = report.frame.iloc[0]
        assert row["expected_std"] == pytest.approx(0.1)
        assert row["std"] == pytest.approx(0.1, rel=0.03)
        with pytest.raises(InitError, match=r"unknown args \['scael'\]"):
            build_policy({"name": "t", "rules": [{"scheme": "test_scaled_normal", "args": {"scael": 2.0}}]})
    finally:
        del SCHEMES["test_scaled_normal"]


def test_every_scheme_with_a_theory_std_states_it_in_words():
    """Scheme.std_rule is the docs' generated scheme reference's "theory std" column: one per std."""
    missing = [name for name, scheme in SCHEMES.items() if scheme.std is not None and not scheme.std_rule]
    stray = [name for name, scheme in SCHEMES.items() if scheme.std is None and scheme.std_rule]
    assert not missing and not stray, (missing, stray)
