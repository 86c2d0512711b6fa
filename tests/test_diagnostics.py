"""Diagnostics at init and during training: the Jacobian's spectrum, dead units, the width check."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.nn import functional as F

from initbench.config import ConfigError
from initbench.data import load_dataset
from initbench.init import build_policy
from initbench.metric_keys import metric_name
from initbench.models import DataShape, build_model
from initbench.probe import main as probe_main
from initbench.probe import probe_options, width_check, width_tables
from initbench.run import build_initialized_model
from initbench.train import fit
from initbench.vitals.measures import activation_vitals, jacobian_singular_values, jacobian_summary
from initbench.vitals.points import epoch_points, init_points
from initbench.vitals.signal import signal_probe

from .conftest import compose_config

CONF = Path(__file__).resolve().parents[1] / "conf" / "init"
DIGITS = DataShape(1, 8, 8, 10)


def orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def deep_linear(depth: int, width: int, scale: float) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    layers = [nn.Linear(width, width, bias=False).double() for _ in range(depth)]
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(scale * orthogonal(width, gen))
    return nn.Sequential(*layers)


@pytest.mark.parametrize("scale", [1.0, 1.5, 0.5])
def test_deep_linear_orthogonal_net_has_singular_values_scale_to_the_depth(scale):
    """Dynamical isometry's textbook case: W_L ... W_1 with orthogonal W_l times c is c^L times an orthogonal
    matrix, so every singular value of every example's Jacobian is c^L."""
    depth, width = 6, 16
    sv = jacobian_singular_values(deep_linear(depth, width, scale), torch.randn(32, width, dtype=torch.float64))
    assert sv.shape == (8, width)  # 8 examples by default, min(classes, input dims) values each
    assert torch.allclose(sv, torch.full_like(sv, scale ** depth), rtol=1e-10, atol=0)
    summary = jacobian_summary(sv)
    for key in ("sv_mean", "sv_max", "sv_min"):
        assert summary[key] == pytest.approx(scale ** depth, rel=1e-10)
    assert summary["sv_log_std"] < 1e-10


def test_jacobian_is_each_examples_own_batchnorm_included():
    """With BatchNorm in train mode examples interact: example i's Jacobian holds the others fixed, i.e. the
    diagonal block (i, i) of the Jacobian of the whole batch's logits."""
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "depth": 2, "width": 32, "activation": "tanh", "batch_norm": True},
                        DIGITS).double()
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    full = torch.autograd.functional.jacobian(lambda t: model(t), x).reshape(6, 10, 6, 64)
    expected = torch.linalg.svdvals(torch.stack([full[i, :, i] for i in range(6)]))
    assert torch.allclose(jacobian_singular_values(model, x, max_examples=6), expected, rtol=1e-10, atol=1e-14)
    assert jacobian_singular_values(model, x, max_examples=3).shape == (3, 10)


def test_jacobian_of_zeros_init_is_zero_and_degenerate_outputs_are_refused():
    model = build_model({"name": "mlp", "depth": 2, "width": 16}, DIGITS)
    build_policy(OmegaConf.load(CONF / "zeros.yaml")).apply(model, torch.Generator().manual_seed(0))
    summary = jacobian_summary(jacobian_singular_values(model, torch.randn(16, 1, 8, 8)))
    assert (summary["sv_mean"], summary["sv_max"], summary["sv_min"]) == (0, 0, 0)
    assert summary["sv_log_std"] != summary["sv_log_std"]  # NaN: log 0
    assert init_points(model, torch.randn(16, 1, 8, 8), torch.arange(16) % 10)[-3:] == [
        ("vitals/jacobian/sv_mean", 0.0, 0), ("vitals/jacobian/sv_max", 0.0, 0), ("vitals/jacobian/sv_min", 0.0, 0)]
    with pytest.raises(ValueError, match="floating-point"):
        jacobian_singular_values(model, torch.zeros(4, 1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(batch, classes\) logits"):
        jacobian_singular_values(nn.Flatten(0), torch.randn(4, 3))


def mlp(init: str, **extra) -> nn.Module:
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "depth": 4, "width": 64, "activation": "relu", **extra}, DIGITS)
    build_policy(OmegaConf.load(CONF / f"{init}.yaml")).apply(model, torch.Generator().manual_seed(0))
    return model


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    cfg = compose_config()
    data = load_dataset(cfg.dataset, cfg.paths.data_dir, "cpu")
    return data.train_x[:128], data.train_y[:128]


def test_zeros_init_kills_every_relu_unit_and_kaiming_almost_none(digits):
    x, _ = digits
    dead = activation_vitals(mlp("zeros"), x).set_index("layer")["dead_frac"]
    assert list(dead.index) == [f"layers.{i}.0" for i in range(4)] + ["head"]
    assert (dead.iloc[:4] == 1.0).all()
    assert dead["head"] != dead["head"]  # no ReLU reads the logits: NaN, and not logged
    alive = activation_vitals(mlp("kaiming"), x).set_index("layer")["dead_frac"]
    assert (alive.iloc[:4] < 0.2).all()


def test_act_std_is_signal_probes_and_nothing_changes(digits):
    x, y = digits
    model = mlp("kaiming", batch_norm=True)
    model.eval()
    model.layers[1].train()
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    vitals = activation_vitals(model, x)
    jacobian_singular_values(model, x)
    assert list(vitals.act_std) == pytest.approx(list(signal_probe(model, x, y).act_std), rel=1e-12)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(rng, torch.get_rng_state())
    # BatchNorm between Linear and ReLU: the ReLU reads the BatchNorm's output, which names the units
    assert vitals.set_index("layer")["dead_frac"].notna().to_dict() == {
        **{f"layers.{i}.0": False for i in range(4)}, **{f"layers.{i}.1": True for i in range(4)}, "head": False}


def test_relus_are_found_functional_in_place_and_on_sums():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 64, 8)
            self.act = nn.ReLU(inplace=True)
            self.out = nn.Linear(8, 3)

        def forward(self, x):
            h = F.relu(self.conv(x))  # functional, on a layer's output: the conv's channels
            h = torch.relu(h + 1.0)  # on a sum: named after its caller, the root
            z = self.fc(h.flatten(1))
            return self.out(self.act(z))  # an nn.ReLU in place on the fc's output

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.conv.weight.zero_()
        net.conv.bias.copy_(torch.tensor([-1.0, -2.0, 0.5, 1.0]))  # 2 of 4 channels dead, then alive after +1
    x = torch.randn(16, 1, 8, 8)
    table = activation_vitals(net, x).set_index("layer")
    assert list(table.index) == ["conv", "fc", "out", "relu"]
    assert table.loc["conv", "dead_frac"] == 0.5
    assert table.loc["relu", "dead_frac"] == 0.0 and table.loc["relu", "act_std"] != table.loc["relu", "act_std"]
    with torch.no_grad():
        fc_out = net.fc(torch.relu(F.relu(net.conv(x)) + 1.0).flatten(1))
    assert table.loc["fc", "act_std"] == pytest.approx(fc_out.double().std().item(), rel=1e-12)  # before the ReLU
    assert table.loc["fc", "dead_frac"] == (fc_out <= 0).all(0).double().mean().item()


def test_lenet_and_lstm_rows(digits):
    torch.manual_seed(0)
    lenet = build_model({"name": "lenet"}, DataShape(1, 16, 16, 10))
    dead = activation_vitals(lenet, torch.randn(32, 1, 16, 16)).set_index("layer")["dead_frac"]
    assert list(dead.index) == ["conv1", "conv2", "fc1", "fc2", "fc3"]  # F.relu in forward(), by its input
    assert dead.iloc[:4].notna().all() and dead.isna().iloc[4]
    lstm = build_model({"name": "lstm", "hidden_size": 16}, DIGITS)
    table = activation_vitals(lstm, digits[0])
    assert list(table.layer) == ["rnn", "head"] and table.dead_frac.isna().all()
    assert jacobian_singular_values(lstm, digits[0]).shape == (8, 10)


def test_metric_names_are_mlflow_keys():
    assert metric_name("layers.0.0") == "layers.0.0"
    assert metric_name("(model)") == "_model_"


@pytest.mark.parametrize("init,dead", [("zeros", 1.0), ("kaiming", None)])
def test_fit_logs_act_std_and_dead_units_every_epoch(init, dead):
    cfg = compose_config(["model=mlp", f"init={init}", "dataset.train_size=256", "trainer.batch_size=64",
                          "trainer.epochs=2"])
    data = load_dataset(cfg.dataset, cfg.paths.data_dir, "cpu")
    model, _ = build_initialized_model(cfg, data)
    points = []
    fit(model, data, cfg.trainer, cfg.optimizer, cfg.seed, log=points.extend)
    steps: dict[str, list[int]] = {}
    values: dict[str, list[float]] = {}
    for key, value, step in points:
        steps.setdefault(key, []).append(step)
        values.setdefault(key, []).append(value)
    hidden = [f"layers.{i}.0" for i in range(3)]
    for layer in hidden:
        assert steps[f"vitals/act_std/{layer}"] == steps[f"vitals/dead_frac/{layer}"] == [0, 1, 2]
        if dead is not None:
            assert values[f"vitals/dead_frac/{layer}"] == [dead] * 3  # zero gradients: dead for good
        else:
            assert max(values[f"vitals/dead_frac/{layer}"]) < 0.3
    assert steps["vitals/act_std/head"] == [0, 1, 2] and "vitals/dead_frac/head" not in steps
    assert steps["vitals/backprop_std/head"] == [0]
    jacobian = {k: v for k, v in values.items() if k.startswith("vitals/jacobian/")}
    assert set(jacobian) == ({"vitals/jacobian/sv_mean", "vitals/jacobian/sv_max", "vitals/jacobian/sv_min"}
                             | ({"vitals/jacobian/sv_log_std"} if init == "kaiming" else set()))
    assert all(steps[k] == [0] for k in jacobian)
    # the end of the last epoch is measured on the trained model
    assert epoch_points(model, data.train_x[:64], 2) == [p for p in points if p[2] == 2 and
                                                        p[0].startswith(("vitals/act_std/", "vitals/dead_frac/"))]


def test_width_check_standard_parametrization_output_change_grows_with_width():
    """The coordinate check of SP (PyTorch's default init, a fixed lr): the input layer's activations
    are the same size at every width, but the logits' change after a few steps grows with the width."""
    cfg = compose_config(["model=mlp", "dataset.train_size=256", "trainer.batch_size=64"])
    data = load_dataset(cfg.dataset, cfg.paths.data_dir, "cpu")
    widths, steps = [32, 128, 512], 3
    table = width_check(cfg, widths, steps, data=data)
    assert set(table.step) == {0, steps} and set(table.width) == set(widths)
    assert list(table.layer.unique()) == ["layers.0.0", "layers.1.0", "layers.2.0", "head"]
    assert (table[table.step == 0].change == 0).all()
    at_init, _, change = width_tables(table, steps).values()
    assert abs(at_init.loc["layers.0.0", "slope"]) < 0.05  # flat
    head = [change.loc["head", w] for w in widths]
    assert head[0] < head[1] < head[2] and head[2] > 2 * head[0]
    assert change.loc["head", "slope"] > 0.25
    again = width_check(cfg, widths, steps, data=data)  # deterministic: the same seed, init and batches
    assert again.equals(table)


def test_probe_options_are_checked():
    assert probe_options(compose_config(["model=mlp"])) == {"widths": None, "steps": 10, "plot": None}
    cfg = compose_config(["model=mlp", "+probe.widths=[16,32]", "+probe.steps=2"])
    assert probe_options(cfg) == {"widths": [16, 32], "steps": 2, "plot": None}
    assert "probe" not in cfg  # taken out: check_config knows no probe key
    bad = [(["model=mlp", "+probe.widths=[0,32]"], "probe.widths"),
           (["model=mlp", "+probe.widths=32"], "probe.widths"),
           (["model=mlp", "+probe.widths=[16]", "+probe.steps=-1"], "probe.steps"),
           (["model=mlp", "+probe.steps=3"], "give \\+probe.widths"),
           (["model=mlp", "+probe.widths=[16]", "+probe.size=3"], "probe.size: unknown key"),
           (["model=lenet", "+probe.widths=[16]"], "does not have")]
    for overrides, message in bad:
        with pytest.raises(ConfigError, match=message):
            probe_options(compose_config(overrides))


def test_probe_command_prints_the_jacobian_and_the_width_check(tmp_path, capsys):
    plot = tmp_path / "coord.png"
    probe_main(compose_config(["model=mlp", "dataset.train_size=256", "trainer.batch_size=64",
                               "+probe.widths=[16,64]", "+probe.steps=2", f"+probe.plot={plot}"]))
    out = capsys.readouterr().out
    assert "dead_frac" in out and "input-output Jacobian at init" in out and "sv_log_std" in out
    assert "mean |change from init| after 2 steps" in out and "slope" in out
    assert plot.stat().st_size > 10_000
