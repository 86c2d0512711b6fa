"""signal_probe: vanishing signals show up before training, and the probe leaves no trace."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from sklearn.datasets import load_digits
from torch import nn

from initbench.init import build_policy
from initbench.models import DataShape, build_model
from initbench.vitals.signal import signal_probe

CONF = Path(__file__).resolve().parents[1] / "conf" / "init"
DIGITS = DataShape(1, 8, 8, 10)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
    return x[:64].reshape(-1, 1, 8, 8), torch.tensor(data.target[:64])


def deep_mlp(init: str, activation: str, **extra) -> nn.Module:
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "depth": 30, "width": 128, "activation": activation, **extra}, DIGITS)
    build_policy(OmegaConf.load(CONF / f"{init}.yaml")).apply(model, torch.Generator().manual_seed(0))
    return model


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_tiny_normal_init_vanishes_where_kaiming_stays_healthy(digits, activation):
    """Glorot & Bengio 2010's diagnostic on a depth-30 MLP: N(0, 0.01^2) kills the signal both ways."""
    tiny = signal_probe(deep_mlp("normal", activation), *digits)
    assert list(tiny["layer"]) == [f"layers.{i}.0" for i in range(30)] + ["head"]
    hidden = tiny.iloc[:30]
    assert hidden["act_std"].iloc[-1] < 1e-6 * hidden["act_std"].iloc[0]  # forward signal gone
    assert hidden["backprop_std"].iloc[0] < 1e-6 * hidden["backprop_std"].iloc[-1]  # backward signal gone

    if activation == "relu":
        healthy = signal_probe(deep_mlp("kaiming", activation), *digits).iloc[:30]
        assert 0.2 < healthy["act_std"].iloc[-1] / healthy["act_std"].iloc[0] < 5
        assert 0.1 < healthy["backprop_std"].iloc[0] / healthy["backprop_std"].iloc[-1] < 10


def test_probe_leaves_no_trace(digits):
    model = deep_mlp("kaiming", "relu", batch_norm=True)
    model.eval()
    model.layers[3].train()  # a mixed state, restored as it was
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}  # parameters and BN buffers
    rng = torch.get_rng_state()
    table = signal_probe(model, *digits)
    assert list(table.columns) == ["layer", "act_std", "backprop_std"]
    assert table[["act_std", "backprop_std"]].notna().all().all()
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(rng, torch.get_rng_state())


def test_lstm_row_is_the_output_sequence(digits):
    torch.manual_seed(0)
    model = build_model({"name": "lstm", "hidden_size": 16}, DIGITS)
    table = signal_probe(model, *digits)
    assert list(table["layer"]) == ["rnn", "head"]
    with torch.no_grad():
        out, _ = model.rnn(digits[0].permute(0, 2, 1, 3).flatten(2))
    assert table["act_std"][0] == pytest.approx(out.std().item(), rel=1e-5)


def test_shared_module_root_parameters_and_inplace_activations():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))  # owned by the root
            self.shared = nn.Linear(6, 6)
            self.out = nn.Linear(6, 3)

        def forward(self, x):
            x = torch.relu_(self.shared(x * self.scale))  # in place on the probed output
            return self.out(self.shared(x))

    torch.manual_seed(0)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    net = Net()
    table = signal_probe(net, x, y)
    assert list(table["layer"]) == ["shared", "out", "(model)"]  # in the order their forward calls return
    assert table[["act_std", "backprop_std"]].notna().all().all()
    with torch.no_grad():
        assert table["act_std"][2] == pytest.approx(net(x).std().item(), rel=1e-5)  # the root's output: logits
