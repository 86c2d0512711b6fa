"""InitReport: its columns and CSV, its table, and what it says PyTorch's `default` init is."""

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from initbench.init import REPORT_COLUMNS, build_policy

DEFAULT = build_policy({"name": "default", "rules": []})
INIT_CONF = Path(__file__).resolve().parents[1] / "conf" / "init"


def default_report(module: nn.Module):
    return DEFAULT.apply(module, torch.Generator())


@pytest.mark.parametrize(("module", "fan_in"), [
    (nn.Linear(300, 200), 300), (nn.Conv2d(16, 32, 3), 16 * 9), (nn.Conv1d(8, 24, 5), 40),
])
def test_default_reproduces_a_fresh_layers_bounds(module, fan_in):
    """Linear/Conv: kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in)); the bias has the same bound."""
    report = default_report(module)
    bound = 1 / math.sqrt(fan_in)
    for row in report.frame.itertuples():
        assert row.scheme == "default"
        assert row.expected_std == pytest.approx(bound / math.sqrt(3))
        assert -bound <= row.min and row.max <= bound
    weight = report.frame.iloc[0]
    assert weight["std"] == pytest.approx(weight["expected_std"], rel=0.05)
    assert (weight["fan_in"], weight["min"] < -0.9 * bound, weight["max"] > 0.9 * bound) == (fan_in, True, True)


def test_default_lstm_batchnorm_embedding():
    hidden = 64
    lstm = default_report(nn.LSTM(50, hidden, num_layers=2)).frame
    bound = 1 / math.sqrt(hidden)
    assert lstm["expected_std"].tolist() == pytest.approx([bound / math.sqrt(3)] * 8)
    assert (lstm["min"] >= -bound).all() and (lstm["max"] <= bound).all()
    big = lstm[lstm["param"].str.startswith("weight")]
    assert big["std"].tolist() == pytest.approx(big["expected_std"].tolist(), rel=0.05)
    norm = default_report(nn.BatchNorm2d(16)).frame
    assert norm["expected_std"].tolist() == [0.0, 0.0] and norm["mean"].tolist() == [1.0, 0.0]
    embedding = default_report(nn.Embedding(2000, 64)).frame.iloc[0]
    assert embedding["expected_std"] == 1.0 and embedding["std"] == pytest.approx(1.0, rel=0.03)


def test_default_leaves_the_model_as_built():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 30 * 30, 10))
    before = [p.clone() for p in model.parameters()]
    default_report(model)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))


def test_columns_csv_and_table(tmp_path):
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    policy = build_policy({"name": "kaiming", "rules": [
        {"where": {"param": "weight"}, "scheme": "kaiming_normal", "args": {"nonlinearity": "relu"}}]})
    report = policy.apply(model, torch.Generator().manual_seed(0))
    assert tuple(report.frame.columns) == REPORT_COLUMNS
    assert report.torch_version == torch.__version__ and report.lsuv is None
    first = report.frame.iloc[0]
    assert (first["param"], first["shape"], first["scheme"], first["fan_in"], first["fan_out"]) == (
        "0.weight", "30x20", "kaiming_normal", 20, 30)
    assert first["expected_std"] == pytest.approx(math.sqrt(2 / 20))
    assert pd.isna(report.frame.iloc[1]["fan_in"])  # a bias has no fans

    written = report.to_csv(tmp_path)
    assert written == tmp_path / "init_report.csv"
    back = pd.read_csv(written)
    assert tuple(back.columns) == REPORT_COLUMNS and len(back) == 4
    assert back["std"].tolist() == pytest.approx(report.frame["std"].tolist())
    assert report.to_csv(tmp_path / "other.csv").exists()

    text = str(report)
    lines = text.splitlines()
    assert lines[0].startswith("init policy 'kaiming' (torch ") and "4 parameters" in lines[0]
    assert lines[1].split() == list(REPORT_COLUMNS)
    assert len({len(line) for line in lines[1:]}) == 1  # fixed width
    assert "0.weight" in lines[2] and "kaiming_normal" in lines[2]


FORGET_ONE = {"name": "forget_one", "rules": [  # a constant per gate: 1 on f, 0 on i, g, o
    {"where": {"module": "LSTM", "param": ["bias_ih", "bias_hh"], "gate": "f"}, "scheme": "constant",
     "args": {"val": 1.0}},
    {"where": {"module": "LSTM", "param": ["bias_ih", "bias_hh"], "gate": ["i", "g", "o"]}, "scheme": "zeros"},
]}


@pytest.mark.parametrize(("policy", "std"), [
    (OmegaConf.load(INIT_CONF / "lstm_forget_bias.yaml"), math.sqrt(3) / 8),  # 0.5 on a quarter
    (FORGET_ONE, math.sqrt(3) / 4),  # 1 on a quarter
], ids=["lstm_forget_bias", "per-gate-constants"])
def test_expected_std_of_a_bias_with_one_constant_gate_is_its_std(policy, std):
    """Slices of different constant means: the mixture's std comes from the spread of the means alone."""
    lstm = nn.LSTM(8, 16)
    report = build_policy(policy).apply(lstm, torch.Generator().manual_seed(0)).frame.set_index("param")
    for name in ("bias_ih_l0", "bias_hh_l0"):
        measured = getattr(lstm, name).std(unbiased=False).item()  # the population std of the tensor
        assert report.loc[name, "expected_std"] == pytest.approx(measured)
        assert measured == pytest.approx(std)


class UsersEncoder(nn.Module):
    """A user's model around torch's own transformer layer, which builds an nn.MultiheadAttention."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(12, 64)
        self.layer = nn.TransformerEncoderLayer(64, 4, dim_feedforward=128, batch_first=True)
        self.head = nn.Linear(64, 10)


def claimed(model: nn.Module) -> pd.DataFrame:
    """The default report's rows that claim a std, with each tensor's size."""
    frame = default_report(model).frame
    frame["numel"] = [p.numel() for _, p in model.named_parameters()]
    return frame.set_index("param")


@pytest.mark.parametrize("build", [
    lambda: nn.MultiheadAttention(64, 4),
    UsersEncoder,
    lambda: nn.Transformer(64, 4, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=128),
    lambda: __import__("torchvision").models.resnet18(num_classes=10),
    lambda: __import__("torchvision").models.resnet18(num_classes=10, zero_init_residual=True),
], ids=["MultiheadAttention", "users-TransformerEncoderLayer", "Transformer-xavier", "resnet18", "resnet18-zero-res"])
def test_default_report_never_claims_a_std_the_model_changed(build):
    """Models that re-init their layers in their constructor: expected_std is right (within 20% of the
    measured std on more than 100 entries, exact for constants) or empty."""
    torch.manual_seed(0)
    frame = claimed(build())
    known = frame[frame["expected_std"].notna()]
    drawn = known[(known["expected_std"] > 0) & (known["numel"] > 100)]
    assert len(drawn) > 0 and (drawn["std"] / drawn["expected_std"] - 1).abs().max() <= 0.2
    constants = known[known["expected_std"] == 0]
    assert (constants["min"] == constants["max"]).all()


def test_default_report_leaves_empty_what_was_re_initialized_and_keeps_what_was_not():
    torch.manual_seed(0)
    mha = claimed(nn.MultiheadAttention(64, 4))
    # in_proj_weight (MHA's xavier_uniform_), in_proj_bias and out_proj.bias (zeroed); out_proj.weight is torch's
    assert mha["expected_std"].isna().tolist() == [True, True, False, True]
    assert mha.loc["out_proj.weight", "expected_std"] == pytest.approx(1 / math.sqrt(3 * 64))
    encoder = claimed(UsersEncoder())
    assert encoder.loc[["embed.weight", "layer.linear1.weight", "layer.linear2.bias", "layer.norm1.weight"],
                       "expected_std"].notna().all()
    assert pd.isna(encoder.loc["layer.self_attn.out_proj.bias", "expected_std"])  # zeroed by MHA
    resnet = claimed(__import__("torchvision").models.resnet18(num_classes=10))
    convs = resnet[resnet.index.str.contains("conv|downsample.0")]
    assert convs["expected_std"].isna().all()  # kaiming_normal(fan_out): outside U(+-1/sqrt(fan_in))
    assert resnet.loc[["bn1.weight", "layer1.0.bn2.bias", "fc.weight", "fc.bias"], "expected_std"].notna().all()
    xavier = claimed(nn.Transformer(64, 4, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=128))
    weights = xavier[xavier.index.str.contains(r"linear\d\.weight")]
    assert len(weights) == 4 and weights["expected_std"].isna().all()


class Rescaled(nn.Linear):
    """A Linear whose own reset_parameters is not torch's."""

    def reset_parameters(self):
        nn.init.uniform_(self.weight, -0.5, 0.5)
        nn.init.zeros_(self.bias)


def test_default_claims_survive_many_fresh_layers_and_skip_an_overridden_reset():
    """A layer as torch builds it passes the check (its false alarm rate is about 1e-5 per tensor)."""
    torch.manual_seed(0)
    layers = nn.Sequential(*[nn.Linear(20, 30) for _ in range(100)], nn.Embedding(50, 8, padding_idx=0),
                           nn.LSTM(6, 12), nn.LayerNorm(5), nn.Conv2d(3, 4, 1))
    frame = default_report(layers).frame
    assert frame["expected_std"].notna().all()
    embedding = frame[frame["param"] == "100.weight"].iloc[0]
    assert embedding["expected_std"] == pytest.approx(math.sqrt(49 / 50))  # the padding row is 0
    assert default_report(Rescaled(400, 300)).frame["expected_std"].isna().all()
