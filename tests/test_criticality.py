"""The edge of chaos (mean-field recursion, `critical`) and Kumar's variance (`kumar`), against closed forms."""

import math

import pytest
import torch
from scipy import stats
from scipy.integrate import quad
from scipy.optimize import brentq

from initbench.init import SCHEMES, InitError, build_policy, criticality
from initbench.init.criticality import critical_sigma_w, criticality_note, kumar_variance, mean_field
from initbench.models import DataShape, build_model
from initbench.run import open_job

from .conftest import compose_config

TANH_EDGE_AT_005 = 1.3270096607  # sigma_b^2 = 0.05 (the bias of Schoenholz et al.'s experiments): sigma_w^2 = 1.761


def test_tanh_without_bias_is_critical_at_sigma_w_1():
    assert critical_sigma_w("tanh", 0.0) == pytest.approx(1.0, abs=1e-6)
    assert critical_sigma_w("tanh", math.sqrt(0.05)) == pytest.approx(TANH_EDGE_AT_005, abs=1e-8)
    assert critical_sigma_w("linear", 0.3) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("sigma_b", [0.0, 0.3, 1.0])
def test_relu_is_critical_at_sqrt_2_whatever_the_bias(sigma_b):
    """chi_1 = sigma_w^2 / 2 for ReLU (its phi'^2 is a step), at any q*."""
    assert critical_sigma_w("relu", sigma_b) == pytest.approx(math.sqrt(2), abs=1e-9)
    assert critical_sigma_w("leaky_relu", sigma_b) == pytest.approx(math.sqrt(2 / (1 + 0.01**2)), abs=1e-9)


@pytest.mark.parametrize(("activation", "sigma_b"), [("tanh", 0.0), ("tanh", math.sqrt(0.05)), ("relu", 0.1),
                                                      ("sigmoid", 0.2), ("selu", 0.2), ("gelu", 0.5)])
def test_ordered_below_the_edge_and_chaotic_above(activation, sigma_b):
    edge = critical_sigma_w(activation, sigma_b)
    assert mean_field(activation, 0.95 * edge, sigma_b).chi_1 < 1 < mean_field(activation, 1.05 * edge, sigma_b).chi_1
    assert mean_field(activation, edge, sigma_b).chi_1 == pytest.approx(1.0, abs=1e-9)


def test_fixed_points_with_closed_forms():
    # ReLU: q = sigma_w^2 q / 2 + sigma_b^2; linear: q = sigma_w^2 q + sigma_b^2
    assert mean_field("relu", 1.0, 0.5) == pytest.approx((0.25 / (1 - 0.5), 0.5), rel=1e-12)
    assert mean_field("linear", 0.8, 0.3) == pytest.approx((0.09 / (1 - 0.64), 0.64), rel=1e-12)
    assert mean_field("tanh", 0.9, 0.0) == pytest.approx((0.0, 0.81), abs=1e-12)  # ordered: signals die out
    assert mean_field("relu", 0.5, 0.0).chi_1 == pytest.approx(0.125)  # at q* = 0 both sides of the kink count
    assert mean_field("relu", 1.6, 0.1) == (math.inf, pytest.approx(1.28))  # the variance grows without bound


def reference_mean_field(phi, dphi, sigma_w, sigma_b):
    """q* and chi_1 by adaptive quadrature and a root on (0.01, 100): an independent check."""

    def expect(f, q):
        return quad(lambda z: f(math.sqrt(q) * z) * math.exp(-z * z / 2) / math.sqrt(2 * math.pi), -12, 12,
                    points=[0], limit=200, epsabs=1e-13)[0]

    q_star = brentq(lambda q: sigma_w**2 * expect(lambda x: phi(x) ** 2, q) + sigma_b**2 - q, 0.01, 100, xtol=1e-13)
    return q_star, sigma_w**2 * expect(lambda x: dphi(x) ** 2, q_star)


@pytest.mark.parametrize(("activation", "phi", "dphi", "sigma_w", "sigma_b"), [
    ("tanh", math.tanh, lambda x: 1 - math.tanh(x) ** 2, 1.5, 0.0),
    ("tanh", math.tanh, lambda x: 1 - math.tanh(x) ** 2, 2.5, 0.3),
    ("sigmoid", lambda x: 1 / (1 + math.exp(-x)), lambda x: math.exp(-x) / (1 + math.exp(-x)) ** 2, 10.5, 0.2),
])
def test_fixed_point_and_chi_1_match_adaptive_quadrature(activation, phi, dphi, sigma_w, sigma_b):
    expected = reference_mean_field(phi, dphi, sigma_w, sigma_b)
    assert mean_field(activation, sigma_w, sigma_b) == pytest.approx(expected, rel=1e-8)


def test_an_activation_whose_chi_1_leaps_over_1_has_no_edge():
    """GELU at sigma_b = 0: from q^0 = 1 the variance falls to 0 (chi_1 = sigma_w^2 / 4) below sigma_w ~ 1.53
    and grows without bound (chi_1 -> sigma_w^2 / 2) above it."""
    with pytest.raises(ValueError, match=r"gelu at sigma_b=0.0: chi_1 jumps from 0.58\d to 1.17\d at sigma_w=1.53"):
        critical_sigma_w("gelu", 0.0)


def test_the_docstrings_table_of_critical_sigma_w_is_what_the_code_computes():
    """The module's docstring (the theory page of the docs renders it) cannot drift from the code."""
    rows = [line.split("|")[1:-1] for line in criticality.__doc__.splitlines()
            if line.startswith("| ") and not line.startswith("| activation")]
    sigma_bs = [0.0, 0.05 ** 0.5, 0.5, 1.0]
    assert len(rows) == 7
    for name, *cells in rows:
        for sigma_b, cell in zip(sigma_bs, cells, strict=True):
            if cell.strip() == "none":
                with pytest.raises(ValueError):
                    critical_sigma_w(name.strip(), sigma_b)
            else:
                assert critical_sigma_w(name.strip(), sigma_b) == pytest.approx(float(cell), abs=6e-5), (name, sigma_b)


def test_bad_activation_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown activation 'swish'; valid: linear, tanh, sigmoid, relu"):
        mean_field("swish", 1.0, 0.0)


# --- the policies ----------------------------------------------------------------------------------------


def applied(overrides):
    cfg = compose_config(["model=mlp", *overrides])
    model = build_model(cfg.model, DataShape(1, 28, 28, 10))
    return model, build_policy(cfg.init).apply(model, torch.Generator().manual_seed(0)).frame.set_index("param")


def test_critical_expected_std_is_sigma_w_over_sqrt_fan_in_and_matches_the_weights():
    model, frame = applied(["init=critical", "init.sigma_w=1.5", "init.sigma_b=0.2", "model.depth=2"])
    for name, tensor in model.named_parameters():
        row = frame.loc[name]
        theory = 1.5 / math.sqrt(tensor.shape[1]) if tensor.dim() == 2 else 0.2
        assert row.expected_std == pytest.approx(theory, rel=1e-12)
        assert row["std"] == pytest.approx(theory, rel=0.03 if tensor.numel() > 2000 else 0.3), name
        assert abs(row["mean"]) < 4 * theory / math.sqrt(tensor.numel())


@pytest.mark.parametrize(("name", "args", "shape", "std"), [
    ("critical", {"sigma_w": 1.7, "sigma_b": 0.3}, (200, 50), 1.7 / math.sqrt(50)),
    ("critical", {"sigma_w": 1.7, "sigma_b": 0.3}, (5000,), 0.3),
    ("critical", {"sigma_w": 1.2}, (40, 10, 5), 1.2 / math.sqrt(50)),  # a conv: fan_in = c_in * k
    ("kumar", {"activation": "sigmoid"}, (200, 50), math.sqrt(12.8 / 50)),
])
def test_samples_are_the_normal_the_theory_names(name, args, shape, std):
    scheme, args = SCHEMES[name], SCHEMES[name].resolve(args)
    sample = scheme(torch.empty(shape, dtype=torch.float64), torch.Generator().manual_seed(3), dict(args))
    assert scheme.expected_std(torch.Size(shape), args) == pytest.approx(std, rel=1e-12)
    assert stats.kstest(sample.flatten().numpy(), stats.norm(0, std).cdf).pvalue > 1e-3


def test_critical_refuses_a_negative_scale():
    with pytest.raises(InitError, match="needs sigma_w >= 0, got -1.0"):
        applied(["init=critical", "init.sigma_w=-1.0"])


def test_a_run_prints_where_its_scale_stands():
    cfg = compose_config(["init=critical", "model=mlp", "model.activation=tanh", "init.sigma_w=1.5"])
    note = criticality_note(build_policy(cfg.init), "tanh")
    assert note == ("critical: sigma_w=1.5, sigma_b=0.0, tanh: q*=0.7934, chi_1=1.1393 (chaotic); "
                    "tanh's critical sigma_w at sigma_b=0.0 is 1.0000")
    assert "relu: q*=0, chi_1=0.5000 (ordered); relu's critical sigma_w at sigma_b=0.0 is 1.4142" in criticality_note(
        build_policy(compose_config(["init=critical"]).init), "relu")
    at_edge = build_policy({"name": "c", "sigma_w": 1.327, "sigma_b": 0.2236, "rules": [{"scheme": "critical"}]})
    assert "chi_1=1.0000 (critical)" in criticality_note(at_edge, "tanh")
    assert "activation is unknown (model.activation is not set)" in criticality_note(build_policy(cfg.init), None)
    assert criticality_note(build_policy(compose_config(["init=kaiming"]).init), "tanh") is None


def test_open_job_prints_the_note(store, capsys):
    open_job(compose_config(["init=critical", "model=mlp", "model.activation=tanh", "init.sigma_b=0.1",
                             "dataset.train_size=64"], store))
    assert "critical: sigma_w=1.0, sigma_b=0.1, tanh: q*=" in capsys.readouterr().out


@pytest.mark.parametrize(("activation", "variance"), [("tanh", 1.0), ("sigmoid", 12.8), ("gelu", 4.0),
                                                      ("relu", 2.0), ("leaky_relu", 2 / (1 + 0.01**2))])
def test_kumar_variance_follows_the_models_activation(activation, variance):
    assert kumar_variance(activation) == pytest.approx(variance, rel=1e-12)
    model, frame = applied(["init=kumar", f"model.activation={activation}", "model.depth=2"])
    for name, tensor in model.named_parameters():
        if tensor.dim() == 2:
            theory = math.sqrt(variance / tensor.shape[1])
            assert frame.loc[name].expected_std == pytest.approx(theory, rel=1e-12)
            assert frame.loc[name]["std"] == pytest.approx(theory, rel=0.03 if tensor.numel() > 2000 else 0.3), name
        else:
            assert torch.all(tensor == 0)


def test_kumar_refuses_an_activation_kinked_at_0():
    with pytest.raises(InitError, match=r"layers.0.0.weight \(shape 256x784\).*kumar needs an activation "
                                        r"differentiable at 0.*selu is not; valid: linear, tanh, sigmoid, gelu"):
        applied(["init=kumar", "model.activation=selu"])
