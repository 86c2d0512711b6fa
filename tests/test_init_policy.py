"""Policies: rule matching, reproducibility, the seeds' inits, shared parameters, and every error."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from initbench.init import InitError, build_policy
from initbench.init.matching import role_of
from initbench.models import DataShape, build_model

CONF = Path(__file__).resolve().parents[1] / "conf" / "init"
CIFAR = DataShape(3, 32, 32, 10)
LINEAR_CONV = ["Conv1d", "Conv2d", "Conv3d", "Linear"]


def policy_file(name: str):
    return build_policy(OmegaConf.load(CONF / f"{name}.yaml"))


def lenet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model({"name": "lenet"}, CIFAR)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def policy(*rules: dict, name: str = "test"):
    return build_policy({"name": name, "rules": list(rules)})


# --- reproducibility ---------------------------------------------------------------------------------


def test_same_seed_gives_bit_identical_weights_whatever_ran_before():
    kaiming = policy_file("kaiming")
    a, b = lenet(), lenet()
    kaiming.apply(a, gen(3))
    torch.rand(1000)  # advance the global RNG: it must not matter
    kaiming.apply(b, gen(3))
    assert_same(a, snapshot(b))
    c = lenet()
    kaiming.apply(c, gen(4))
    assert not torch.equal(a.fc1.weight, c.fc1.weight)


def test_global_rng_is_not_touched():
    state = torch.get_rng_state()
    policy_file("orthogonal").apply(lenet(), gen())
    assert torch.equal(state, torch.get_rng_state())


# --- the seeds ----------------------------------------------------------------------------------------


def test_docs_mixed_reproduces_seed_000_layer_by_layer():
    """Seed 000's Net: the same nn.init calls, in the same order, from the same generator, bit for bit."""
    ours, theirs = lenet(), lenet()
    report = policy_file("docs_mixed").apply(ours, gen(7))
    g = gen(7)
    nn.init.xavier_uniform_(theirs.conv1.weight, generator=g)
    nn.init.kaiming_uniform_(theirs.conv2.weight, generator=g)
    nn.init.xavier_uniform_(theirs.fc1.weight, generator=g)
    nn.init.xavier_uniform_(theirs.fc2.weight, generator=g)
    nn.init.normal_(theirs.fc3.weight, mean=0, std=1.0, generator=g)
    assert ours.fc1.in_features == 16 * 6 * 6
    assert_same(ours, snapshot(theirs))
    schemes = dict(zip(report.frame["param"], report.frame["scheme"], strict=True))
    assert schemes == {
        "conv1.weight": "xavier_uniform", "conv1.bias": "default", "conv2.weight": "kaiming_uniform",
        "conv2.bias": "default", "fc1.weight": "xavier_uniform", "fc1.bias": "default",
        "fc2.weight": "xavier_uniform", "fc2.bias": "default", "fc3.weight": "normal", "fc3.bias": "default",
    }


def test_docs_mixed_refuses_other_models():
    mlp = build_model({"name": "mlp"}, CIFAR)
    with pytest.raises(InitError, match=r"rule 0 \(where: \{name: conv1.weight\}.*matches no parameter"):
        policy_file("docs_mixed").apply(mlp, gen())


def test_d2l_normal_then_bimodal_as_in_seed_002():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))
    report = policy_file("normal").apply(net, gen())
    assert report.frame["scheme"].tolist() == ["normal", "zeros", "normal", "zeros"]
    assert torch.equal(net[0].bias, torch.zeros(3))
    report = policy_file("d2l_custom").apply(net, gen())
    assert report.frame["scheme"].tolist() == ["d2l_bimodal", "default", "d2l_bimodal", "default"]
    weights = torch.cat([net[0].weight.flatten(), net[2].weight.flatten()])
    assert ((weights == 0) | ((weights.abs() >= 5) & (weights.abs() <= 10))).all()


def test_shared_parameters_are_filled_and_reported_once():
    """Seed 002: nn.Sequential(linear, linear) holds one weight reachable as 0.weight and 1.weight."""
    linear = nn.Linear(1, 1, bias=False)
    net = nn.Sequential(linear, linear)
    report = policy({"where": {"name": "1.weight"}, "scheme": "constant", "args": {"val": 3.0}}).apply(net, gen())
    assert report.frame["param"].tolist() == ["0.weight"]  # reported once, by its first name
    assert linear.weight.item() == 3.0
    FILLED.clear()
    policy({"_target_": "tests.test_init_policy.counting_init_"}).apply(net, gen())
    assert FILLED == [(1, 1)]


FILLED: list[tuple[int, ...]] = []


def counting_init_(tensor, generator=None):
    FILLED.append(tuple(tensor.shape))
    return tensor


# --- matching -----------------------------------------------------------------------------------------


def test_first_matching_rule_decides_and_unmatched_keep_default():
    model = lenet()
    before = snapshot(model)
    report = policy(
        {"where": {"name": "fc3.*"}, "scheme": "default"},  # shields fc3 from the rules below
        {"where": {"module": "Linear", "param": "weight"}, "scheme": "ones"},
        {"where": {"module": LINEAR_CONV}, "scheme": "zeros"},
    ).apply(model, gen())
    schemes = dict(zip(report.frame["param"], report.frame["scheme"], strict=True))
    assert schemes["fc1.weight"] == "ones" and schemes["fc1.bias"] == "zeros" and schemes["conv1.weight"] == "zeros"
    assert schemes["fc3.weight"] == schemes["fc3.bias"] == "default"
    assert torch.equal(model.fc3.weight, before["fc3.weight"])


def test_module_match_counts_subclasses_and_roles_strip_layer_suffixes():
    class MyLinear(nn.Linear):
        pass

    net = nn.Sequential(MyLinear(5, 5), nn.LSTM(5, 4, num_layers=2, bidirectional=True))
    report = policy(
        {"where": {"module": "Linear", "param": "weight"}, "scheme": "ones"},
        {"where": {"module": "RNNBase", "param": "weight_hh"}, "scheme": "zeros"},
    ).apply(net, gen())
    assert net[0].weight.eq(1).all()
    hh = [n for n, s in zip(report.frame["param"], report.frame["scheme"], strict=True) if s == "zeros"]
    assert hh == ["1.weight_hh_l0", "1.weight_hh_l0_reverse", "1.weight_hh_l1", "1.weight_hh_l1_reverse"]
    assert role_of("weight_ih_l0_reverse") == "weight_ih" and role_of("bias_hh_l12") == "bias_hh"


def test_gate_rules_fill_only_their_rows():
    lstm = nn.LSTM(6, 8)
    report = policy(
        {"where": {"param": "bias_ih", "gate": "f"}, "scheme": "constant", "args": {"val": 1.0}},
        {"where": {"param": ["bias_ih", "bias_hh"]}, "scheme": "zeros"},
        {"where": {"param": "weight_hh", "gate": ["i", "f", "g", "o"]}, "scheme": "identity"},
    ).apply(lstm, gen())
    assert lstm.bias_ih_l0[8:16].eq(1).all() and lstm.bias_ih_l0[:8].eq(0).all() and lstm.bias_ih_l0[16:].eq(0).all()
    assert torch.equal(lstm.weight_hh_l0, torch.eye(8).repeat(4, 1))
    schemes = dict(zip(report.frame["param"], report.frame["scheme"], strict=True))
    assert schemes["bias_ih_l0"] == "zeros[i,g,o]+constant[f]"
    assert schemes["weight_hh_l0"] == "identity[i,f,g,o]" and schemes["weight_ih_l0"] == "default"


@pytest.mark.parametrize("layers", [1, 2])
def test_lstm_forget_bias_makes_the_sum_one(layers):
    torch.manual_seed(0)
    model = build_model({"name": "lstm", "hidden_size": 32, "num_layers": layers}, DataShape(1, 28, 28, 10))
    policy_file("lstm_forget_bias").apply(model, gen())
    for k in range(layers):
        total = getattr(model.rnn, f"bias_ih_l{k}") + getattr(model.rnn, f"bias_hh_l{k}")
        i, f, g, o = total.detach().split(32)
        assert f.eq(1).all() and i.eq(0).all() and g.eq(0).all() and o.eq(0).all()


def test_custom_target_function_gets_the_generator_and_args():
    report = policy({"where": {"param": "weight"}, "_target_": "initbench.init.functional.d2l_bimodal_",
                     "args": {"low": 1.0, "high": 2.0}}).apply(nn.Linear(50, 40), gen())
    assert report.frame["scheme"].tolist() == ["initbench.init.functional.d2l_bimodal_", "default"]
    assert report.frame["max"][0] <= 2.0 and report.frame["min"][0] >= -2.0


# --- errors: each names the parameter, its shape, the rule and the fix; the model stays untouched ----


def test_fan_based_scheme_on_a_bias_is_refused_before_anything_changes():
    """Seed 001's weights_init calls xavier_normal_ on a Conv bias; torch says only 'Fan in and fan out...'."""
    model = lenet()
    before = snapshot(model)
    bad = policy({"where": {"module": "Linear"}, "scheme": "kaiming_normal"},
                 {"where": {"module": "Conv2d"}, "scheme": "xavier_normal"})
    with pytest.raises(InitError) as err:
        bad.apply(model, gen())
    text = str(err.value)
    assert "conv1.bias (shape 6) <- rule 1 (where: {module: Conv2d}, scheme: xavier_normal)" in text
    assert "fc1.bias (shape 120) <- rule 0 (where: {module: Linear}, scheme: kaiming_normal)" in text
    assert "at least 2 dimensions (this one has 1)" in text and "fix: give 1-D parameters (biases)" in text
    assert_same(model, before)


@pytest.mark.parametrize(("scheme", "where", "param", "says"), [
    ("orthogonal", {"param": "bias"}, "fc1.bias (shape 120)", "orthogonal needs a tensor of at least 2"),
    ("eye", {"name": "conv1.weight"}, "conv1.weight (shape 6x3x3x3)", "eye fills 2-D tensors only"),
    ("identity", {"name": "fc1.weight"}, "fc1.weight (shape 120x576)", "identity needs a square 2-D tensor"),
    ("dirac", {"name": "fc2.weight"}, "fc2.weight (shape 84x120)", "dirac fills 3-, 4- or 5-D conv weights"),
    ("lstm_forget_bias", {"name": "fc3.bias"}, "fc3.bias (shape 10)", "lstm_forget_bias fills an LSTM's"),
])
def test_shapes_a_scheme_cannot_fill(scheme, where, param, says):
    model = lenet()
    before = snapshot(model)
    with pytest.raises(InitError, match="fix: narrow this rule") as err:
        policy({"where": where, "scheme": scheme}).apply(model, gen())
    assert param in str(err.value) and says in str(err.value) and "rule 0 (where: " in str(err.value)
    assert_same(model, before)


def test_rule_matching_nothing_is_an_error_unless_optional():
    rule = {"where": {"module": "LSTM", "param": "weight_hh"}, "scheme": "orthogonal"}
    with pytest.raises(InitError) as err:
        policy(rule).apply(lenet(), gen())
    text = str(err.value)
    assert "rule 0 (where: {module: LSTM, param: weight_hh}, scheme: orthogonal) matches no parameter" in text
    assert "add `optional: true`" in text and "conv1.weight (6x3x3x3)" in text and "modules: Conv2d, Linear" in text
    policy({**rule, "optional": True}).apply(lenet(), gen())


def test_forget_bias_on_one_bias_only_is_an_error():
    lstm = nn.LSTM(4, 8)
    with pytest.raises(InitError, match=r"bias_ih_l0 \(shape 32\).*PyTorch adds bias_ih and bias_hh.*bias_hh_l0"):
        policy({"where": {"param": "bias_ih"}, "scheme": "lstm_forget_bias"}).apply(lstm, gen())


def test_a_fill_that_fails_midway_restores_the_model():
    model = lenet()
    before = snapshot(model)
    with pytest.raises(InitError, match=r"(?s)failed at fc1.weight \(shape 120x576\) <- rule 1.*boom.*restored"):
        policy(
            {"where": {"name": "conv*"}, "scheme": "zeros"},
            {"where": {"name": "fc1.weight"}, "_target_": "tests.test_init_policy.broken_init_"},
        ).apply(model, gen())
    assert_same(model, before)


def broken_init_(tensor, generator=None):
    raise RuntimeError("boom")


@pytest.mark.parametrize(("cfg", "says"), [
    ({"name": "t", "rules": [{"scheme": "kaiming_normall"}]},
     "unknown scheme 'kaiming_normall'; valid: .*, kaiming_normal, "),
    ({"name": "t", "rules": [{"scheme": "kaiming_normal", "args": {"nonlinearity": "rleu"}}]},
     "unknown nonlinearity 'rleu'; valid: linear"),
    ({"name": "t", "rules": [{"scheme": "xavier_normal", "args": {"nonlinearity": "swish"}}]},
     "unknown nonlinearity 'swish'"),
    ({"name": "t", "rules": [{"scheme": "normal", "args": {"sd": 1}}]},
     r"unknown args \['sd'\].*valid args: mean, std"),
    ({"name": "t", "rules": [{"where": {"parm": "bias"}, "scheme": "zeros"}]}, "unknown where keys"),
    ({"name": "t", "rules": [{"where": {"gate": "x"}, "scheme": "zeros"}]}, "unknown gates"),
    ({"name": "t", "rules": [{"scheme": "zeros", "_target_": "a.b"}]}, "exactly one of scheme or _target_"),
    ({"name": "t", "rules": [{"_target_": "math.sqrt"}]}, "does not take a generator= keyword"),
    ({"name": "t", "rules": [{"_target_": "no_such_pkg.fn"}]}, "cannot import _target_"),
    ({"name": "t", "rulez": []}, r"unknown keys \['rulez'\]"),
    ({"rules": []}, "needs `name: <str>`"),
    ({"name": "t", "lsuv": {"tolerance": 0.1}}, r"unknown lsuv keys \['tolerance'\]"),
])
def test_config_errors_list_the_valid_names(cfg, says):
    with pytest.raises(InitError, match=says) as err:
        build_policy(cfg)
    if cfg.get("rules"):
        assert "rule 0 {" in str(err.value) and "fix: " in str(err.value)


def test_data_dependent_policy_without_batch_and_bad_generator():
    lsuv = policy_file("lsuv")
    assert lsuv.needs_data and not policy_file("kaiming").needs_data
    with pytest.raises(InitError, match="init policy 'lsuv' is data-dependent.*batch=inputs"):
        lsuv.apply(lenet(), gen())
    with pytest.raises(TypeError, match="torch.Generator"):
        policy_file("kaiming").apply(lenet(), 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_model_on_the_gpu_gets_the_same_weights_from_a_cpu_generator():
    cpu, cuda = lenet(), lenet().cuda()
    for model in (cpu, cuda):
        policy_file("kaiming").apply(model, gen(3))
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu.parameters(), cuda.parameters(), strict=True))


# --- policy parameters and model facts ------------------------------------------------------------------


def fill_scaled(tensor, *, scale: float = 1.0, num_branches: int, generator=None):
    """A scheme that reads a policy parameter (scale) and a model fact (num_branches): the value scale/L."""
    return tensor.fill_(scale / num_branches)


class TwoBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.ModuleDict({"branch": nn.Linear(3, 3)}) for _ in range(2))


def scaled_policy(**params):
    return build_policy({"name": "scaled", **params, "rules": [
        {"where": {"param": "weight"}, "_target_": "tests.test_init_policy.fill_scaled"}]})


def test_a_policy_parameter_and_a_model_fact_reach_the_scheme():
    model = TwoBranches()
    report = scaled_policy(scale=3.0).apply(model, gen())
    assert all(torch.all(b["branch"].weight == 1.5) for b in model.blocks)  # 3.0 / 2 branches
    assert "scale=3.0" in str(scaled_policy(scale=3.0)) and len(report) == 4


def test_a_model_without_the_structure_a_scheme_needs_is_refused_untouched():
    model, state = lenet(), snapshot(lenet())
    with pytest.raises(InitError, match=r"needs residual branches \(modules named `branch`.*LeNet has none"):
        scaled_policy().apply(model, gen())
    assert_same(model, state)


def test_a_parameter_no_scheme_reads_is_refused():
    with pytest.raises(InitError, match=r"parameters \['sigma'\] are read by none"):
        scaled_policy(sigma=2.0)
    with pytest.raises(InitError, match=r"unknown keys \['scale'\]"):
        scaled_policy(scale="big")


def test_a_policy_says_what_a_model_it_cannot_apply_to_lacks():
    gated = {"name": "gated", "requires": "a model built with model.branch_gate=scalar",
             "rules": [{"where": {"module": "ScalarGate"}, "scheme": "zeros"}]}
    with pytest.raises(InitError, match="policy 'gated' requires: a model built with model.branch_gate=scalar"):
        build_policy(gated).apply(lenet(), gen())
    with pytest.raises(InitError, match="`requires` is a sentence"):
        build_policy({**gated, "requires": 3})
