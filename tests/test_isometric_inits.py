"""delta_orthogonal and zero_init: their defining properties (centre taps, orthogonality, isometry, determinism)."""

import math

import pytest
import torch
from scipy.linalg import hadamard
from torch import nn

from initbench.data import load_dataset
from initbench.init import SCHEMES, InitError, build_policy
from initbench.init.isometric import delta_orthogonal_, zero_init_, zero_matrix
from initbench.models import DataShape, build_model
from initbench.run import build_initialized_model
from initbench.train import fit

from .conftest import compose_config


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def centre(weight: torch.Tensor) -> torch.Tensor:
    return weight[(slice(None), slice(None), *(k // 2 for k in weight.shape[2:]))]


def off_centre(weight: torch.Tensor) -> torch.Tensor:
    mask = torch.ones_like(weight, dtype=torch.bool)
    mask[(slice(None), slice(None), *(k // 2 for k in weight.shape[2:]))] = False
    return weight[mask]


# --- delta_orthogonal --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 8, 3), (16, 8, 3, 5), (6, 3, 3, 3, 3), (5, 5, 1, 1)])
def test_delta_orthogonal_centre_tap_is_orthogonal_and_the_rest_zero(shape):
    weight = delta_orthogonal_(torch.empty(shape, dtype=torch.float64), gain=1.5, generator=gen())
    tap = centre(weight)
    assert torch.allclose(tap.T @ tap, 1.5**2 * torch.eye(shape[1], dtype=torch.float64), atol=1e-12)
    assert torch.all(off_centre(weight) == 0)
    assert torch.equal(weight, delta_orthogonal_(torch.empty(shape, dtype=torch.float64), gain=1.5, generator=gen()))
    assert not torch.equal(weight, delta_orthogonal_(torch.empty(shape, dtype=torch.float64), 1.5, generator=gen(1)))


def test_a_delta_orthogonal_linear_conv_net_preserves_norms():
    """Convs with odd kernels, 'same' padding and no activation: each is its centre tap at every position."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 5, padding=2), nn.Conv2d(8, 16, 3, padding=1),
                        nn.Conv2d(16, 16, 3, padding=1)).double()
    for conv in net:
        delta_orthogonal_(conv.weight, generator=gen())
        nn.init.zeros_(conv.bias)
    x = torch.randn(4, 3, 10, 10, dtype=torch.float64, generator=gen(5))
    with torch.no_grad():
        y = net(x)
    assert torch.allclose(y.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-12)
    assert torch.allclose(y.norm(dim=1), x.norm(dim=1), rtol=1e-12)  # at every pixel, too


def test_delta_orthogonal_policy_on_lenet_and_its_report():
    model = build_model({"name": "lenet"}, DataShape(3, 32, 32, 10))
    frame = build_policy(compose_config(["init=delta_orthogonal", "init.gain=2.0"]).init).apply(model, gen()).frame
    rows = frame.set_index("param")
    for conv in (model.conv1, model.conv2):
        tap = centre(conv.weight.detach().double())
        assert torch.allclose(tap.T @ tap, 4.0 * torch.eye(tap.shape[1], dtype=torch.float64), atol=1e-5)
        assert torch.all(off_centre(conv.weight) == 0) and torch.all(conv.bias == 0)
    for name in ("conv1.weight", "conv2.weight"):
        c_out, _, k1, k2 = model.get_parameter(name).shape
        assert rows.loc[name].expected_std == pytest.approx(2.0 / math.sqrt(c_out * k1 * k2))
        assert rows.loc[name]["std"] == pytest.approx(rows.loc[name].expected_std, rel=0.05)
    fc = model.fc2.weight.detach().double()  # Linear layers: orthogonal times gain
    assert torch.allclose(fc @ fc.T, 4.0 * torch.eye(fc.shape[0], dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize(("conv", "says"), [
    (nn.Conv2d(3, 8, 2), r"0.weight \(shape 8x3x2x2\).*delta_orthogonal needs odd kernel sizes.*kernel is \(2, 2\)"),
    (nn.Conv1d(8, 4, 3), r"0.weight \(shape 4x8x3\).*delta_orthogonal needs c_out >= c_in .*c_out=4, c_in=8"),
])
def test_delta_orthogonal_refuses_what_it_cannot_fill(conv, says):
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(1, 1))
    before = conv.weight.clone()
    policy = build_policy({"name": "d", "rules": [{"where": {"module": ["Conv1d", "Conv2d"], "param": "weight"},
                                                   "scheme": "delta_orthogonal"}]})
    with pytest.raises(InitError, match=says):
        policy.apply(model, gen())
    assert torch.equal(conv.weight, before)
    with pytest.raises(ValueError, match="needs odd kernel sizes"):
        delta_orthogonal_(torch.empty(8, 3, 2, 2))


# --- zero_init ---------------------------------------------------------------------------------------------


def test_zero_matrix_is_the_papers():
    assert torch.equal(zero_matrix(5, 5), torch.eye(5, dtype=torch.float64))
    assert torch.equal(zero_matrix(3, 7), torch.eye(7, dtype=torch.float64)[:3])  # partial identity
    wide = zero_matrix(6, 3)  # out > in: H_8[:6, :3] / sqrt(8)
    assert torch.equal(wide * math.sqrt(8), torch.from_numpy(hadamard(8)[:6, :3]).double())
    assert torch.allclose(wide.abs(), torch.full((6, 3), 1 / math.sqrt(8), dtype=torch.float64), rtol=0, atol=1e-16)


@pytest.mark.parametrize(("rows", "cols"), [(16, 16), (8, 32), (32, 8), (64, 5), (256, 64)])
def test_zero_init_is_isometric_where_the_shapes_allow(rows, cols):
    """Square: orthogonal; out < in: orthonormal rows; out = 2^m > in: orthonormal columns (W^T W = I)."""
    w = zero_matrix(rows, cols)
    if rows <= cols:
        assert torch.equal(w @ w.T, torch.eye(rows, dtype=torch.float64))
    else:
        assert torch.allclose(w.T @ w, torch.eye(cols, dtype=torch.float64), atol=1e-14)


@pytest.mark.parametrize(("rows", "cols", "scaled"), [(24, 8, True), (192, 64, True), (20, 8, False), (6, 3, False)])
def test_zero_init_expanding_to_other_widths(rows, cols, scaled):
    """out between in and p = 2^ceil(log2 out): W^T W has out/p on its diagonal; Sylvester's columns stay
    orthogonal over every aligned block of 2^ceil(log2 in) rows, so W^T W = (out/p) I when out is a multiple
    of that block, and has cross terms otherwise."""
    gram = zero_matrix(rows, cols).T @ zero_matrix(rows, cols)
    p = 2 ** math.ceil(math.log2(rows))
    assert torch.allclose(gram.diagonal(), torch.full((cols,), rows / p, dtype=torch.float64), atol=1e-15)
    assert (gram.fill_diagonal_(0).abs().max().item() < 1e-15) == scaled


def test_zero_init_conv_centre_tap_and_linear_net_isometry():
    weight = zero_init_(torch.empty(16, 4, 3, 3))
    assert torch.equal(centre(weight), zero_matrix(16, 4).float()) and torch.all(off_centre(weight) == 0)
    net = nn.Sequential(nn.Linear(16, 64, bias=False), nn.Linear(64, 64, bias=False), nn.Linear(64, 128, bias=False))
    for layer in net:
        zero_init_(layer.weight)
    x = torch.randn(8, 16, generator=gen())
    with torch.no_grad():
        assert torch.allclose(net(x).norm(dim=1), x.norm(dim=1), rtol=1e-6)
    with pytest.raises(ValueError, match="zero_init needs odd kernel sizes"):
        zero_init_(torch.empty(4, 4, 2))


def test_zero_init_policy_ignores_the_seed_and_zeroes_branch_ends():
    shape = DataShape(1, 8, 8, 10)
    policy = build_policy(compose_config(["init=zero_init"]).init)
    models = [build_model({"name": "resmlp", "depth": 2, "width": 32}, shape) for _ in range(2)]
    frames = [policy.apply(model, gen(seed)).frame for model, seed in zip(models, (0, 7), strict=True)]
    assert all(torch.equal(a, b) for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True))
    model = models[0]
    assert torch.equal(model.stem.weight, zero_matrix(32, 64).float())  # 64 pixels -> 32: partial identity
    for block in model.blocks:
        assert torch.equal(block.branch.inp.weight, torch.eye(32)) and torch.all(block.branch.out.weight == 0)
    assert torch.equal(model.head.weight, zero_matrix(10, 32).float())
    assert all(torch.all(p == 0) for n, p in model.named_parameters() if n.endswith("bias"))
    frame = frames[0].set_index("param")  # deterministic: the report's expected std is the tensor's own
    for name in ("stem.weight", "blocks.0.branch.inp.weight", "head.weight"):
        assert frame.loc[name].expected_std == pytest.approx(frame.loc[name]["std"], rel=0.01)
    assert SCHEMES["zero_init"].takes_generator is False


def fit_digits(init: str) -> float:
    cfg = compose_config(["model=mlp", "model.width=128", f"init={init}", "trainer.epochs=3", "dataset.train_size=600"])
    data = load_dataset(cfg.dataset, cfg.paths.data_dir, "cpu")
    model, _ = build_initialized_model(cfg, data)
    return fit(model, data, cfg.trainer, cfg.optimizer, cfg.seed, log=lambda points: None).final["test/acc"]


def test_a_zero_init_mlp_trains_where_all_zeros_cannot():
    """Deterministic but not symmetric: ZerO's 64 -> 128 Hadamard layer gives each unit its own input
    (He's init reaches 0.86 here)."""
    assert fit_digits("zero_init") > 0.75
    assert fit_digits("zeros") < 0.2
