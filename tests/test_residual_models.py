"""The residual families (resmlp, resnet, transformer): shapes, the structure init policies address by
name (branch, out, gate, ScalarBias), and the defining property of each structural option."""

import re

import pytest
import torch
from torch import nn

from initbench.config import ConfigError, check_config
from initbench.data import load_dataset
from initbench.models import DataShape, build_model
from initbench.models.residual import ChannelGate, Residual, ScalarBias, ScalarGate
from initbench.models.resnet import PadShortcut
from initbench.models.transformer import SelfAttention
from initbench.train import fit

from .conftest import compose_config

DIGITS = DataShape(1, 8, 8, 10)
TINY = {
    "resmlp": {"name": "resmlp", "depth": 3, "width": 16, "norm": "layer"},
    "resnet": {"name": "resnet", "depth": 8, "width": 4},
    "resnet-plain": {"name": "resnet", "depth": 8, "width": 4, "norm": "none"},
    "transformer": {"name": "transformer", "depth": 2, "width": 16, "heads": 2},
    "transformer-post-rows": {"name": "transformer", "depth": 2, "width": 16, "heads": 4, "norm_position": "post",
                              "tokens": "rows", "pool": "mean"},
}


def tiny(name: str, **options) -> nn.Module:
    torch.manual_seed(0)
    return build_model({**TINY[name], **options}, DIGITS)


def branches(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if name.rpartition(".")[2] == "branch"}


def digits_batch(n: int = 6) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("cfg,shape,count", [
    ({"name": "resnet", "depth": 20}, DIGITS, 9),
    ({"name": "resnet", "depth": 20, "width": 8}, DataShape(3, 32, 32, 100), 9),
    ({"name": "resnet", "depth": 56, "norm": "none"}, DIGITS, 27),
    ({"name": "resmlp", "depth": 7, "width": 8}, DIGITS, 7),
    ({"name": "transformer", "depth": 3, "width": 8, "heads": 2}, DIGITS, 6),
    ({"name": "transformer", "depth": 2, "width": 8, "heads": 2, "tokens": "rows"}, DataShape(1, 40, 1, 10), 4),
], ids=["resnet20-digits", "resnet20-cifar", "resnet56", "resmlp7", "transformer3", "transformer-mnist1d-rows"])
def test_shapes_and_branch_counts(cfg, shape, count):
    model = build_model(cfg, shape)
    found = branches(model)
    assert len(found) == count
    residuals = [m for m in model.modules() if isinstance(m, Residual)]
    assert [r.branch for r in residuals] == list(found.values())
    x = torch.randn(3, shape.channels, shape.height, shape.width)
    assert model(x).shape == (3, shape.num_classes)
    assert isinstance(model.head, nn.Linear)


def test_resnet_stages_widths_and_parameter_free_shortcuts():
    model = build_model({"name": "resnet", "depth": 20, "width": 16}, DataShape(3, 32, 32, 10))
    assert [b.residual.branch.out.out_channels for b in model.blocks] == [16] * 3 + [32] * 3 + [64] * 3
    strides = [b.residual.branch.inp.stride[0] for b in model.blocks]
    assert strides == [1, 1, 1, 2, 1, 1, 2, 1, 1]
    # every weight is in the stem, a branch or the head (He et al.'s option A has none)
    inside = re.compile(r"stem\..*|head\..*|blocks\.\d+\.residual\.branch\..*")
    assert all(inside.fullmatch(name) for name, _ in model.named_parameters())
    shortcut = model.blocks[3].residual.shortcut
    x = torch.randn(2, 16, 32, 32)
    y = shortcut(x)
    assert isinstance(shortcut, PadShortcut) and y.shape == (2, 32, 16, 16)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2]) and not y[:, 16:].any()
    assert len(list(model.parameters())) == 19 + 19 * 2 + 2  # 19 convs without bias, 19 BNs, the head


def call_order(model: nn.Module, x: torch.Tensor, parent: nn.Module) -> list[str]:
    """The names of `parent`'s children in the order the forward pass calls them (first call each)."""
    order = []
    handles = [child.register_forward_pre_hook(lambda m, a, name=name: order.append(name))
               for name, child in parent.named_children()]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return list(dict.fromkeys(order))


BIASED = ["pre_inp", "inp", "pre_act", "act", "pre_out", "out"]


@pytest.mark.parametrize("name,expected", [
    ("resmlp", {"blocks.0.branch": ["norm", *BIASED], "": ["stem", "blocks", "norm", "pre_head", "head"]}),
    ("resnet", {"blocks.0.residual.branch": ["pre_inp", "inp", "inp_norm", "pre_act", "act", "pre_out", "out",
                                             "out_norm"],
                "blocks.0": ["residual", "pre_act", "act"], "stem": ["conv", "norm", "pre_act", "act"]}),
    ("resnet-plain", {"blocks.2.residual.branch": BIASED}),
    ("transformer", {"blocks.1.attn.branch": ["norm", "pre_qkv", "qkv", "pre_out", "out"],
                     "blocks.1.mlp.branch": ["norm", *BIASED]}),
    ("transformer-post-rows", {"blocks.0.attn.branch": ["norm", "pre_qkv", "qkv", "pre_out", "out"],
                               "blocks.0": ["attn", "attn_norm", "mlp", "mlp_norm"]}),
])
def test_branch_bias_puts_a_zero_scalar_bias_before_each_weight_layer_and_activation(name, expected):
    model = tiny(name, branch_bias=True)
    for parent, order in expected.items():
        assert call_order(model, digits_batch(), model.get_submodule(parent)) == order, parent
    biases = [m for m in model.modules() if isinstance(m, ScalarBias)]
    # per block: 3 in the branch (resmlp), + 1 before the ReLU after the sum (resnet), 2 + 3 (transformer);
    # then pre_head, and the resnet stem's pre_act
    count = {"resmlp": 3 * 3 + 1, "resnet": 3 * 4 + 2, "transformer": 2 * 5 + 1}[name.split("-")[0]]
    assert len(biases) == count
    assert all(b.bias.shape == () and b.bias.item() == 0.0 for b in biases)
    assert not any(isinstance(m, ScalarBias) for m in tiny(name).modules())  # branch_bias: false (default)
    for branch in branches(model).values():  # the last weight layer is `out` (then only its norm)
        names = [n for n, m in branch.named_children() if getattr(m, "weight", None) is not None]
        assert names[-1] in ("out", "out_norm") and names[-2:] != ["out_norm", "out"]
        assert [n for n in names if branch.get_submodule(n).weight.dim() >= 2][-1] == "out"


@pytest.mark.parametrize("name", sorted(TINY))
def test_a_zero_gate_makes_every_residual_its_shortcut(name):
    """SkipInit's and ReZero's premise: with alpha = 0 each residual sub-layer passes its input through
    (its shortcut) whatever its branch holds; with alpha = 1 (as built) the branch counts."""
    model = tiny(name, branch_gate="scalar", branch_bias=True)
    gates = [m for m in model.modules() if isinstance(m, ScalarGate)]
    assert len(gates) == len(branches(model)) and all(g.weight.shape == () and g.weight.item() == 1 for g in gates)
    assert all(isinstance(r.gate, ScalarGate) for r in model.modules() if isinstance(r, Residual))
    assert all(r.gate is None for r in tiny(name).modules() if isinstance(r, Residual))  # branch_gate: none

    def perturbed_branches_change_the_output() -> bool:
        x = digits_batch()
        before = model(x)
        with torch.no_grad():
            for branch in branches(model).values():
                for p in branch.parameters():
                    p.add_(torch.randn_like(p))
        return not torch.equal(model(x), before)

    assert perturbed_branches_change_the_output()
    with torch.no_grad():
        for gate in gates:
            gate.weight.zero_()
    checked = []

    def is_shortcut(module, inputs, output):
        x = inputs[0]
        assert torch.equal(output, x if module.shortcut is None else module.shortcut(x))
        checked.append(module)

    for module in model.modules():
        if isinstance(module, Residual):
            module.register_forward_hook(is_shortcut)
    assert not perturbed_branches_change_the_output()
    assert len(checked) == 2 * len(branches(model))


@pytest.mark.parametrize("name", ["resmlp", "transformer", "transformer-post-rows"])
def test_a_channel_gate_scales_each_channel_of_its_branch(name):
    """LayerScale (Touvron et al. 2021): y = x + diag(lambda) branch(x), one lambda per channel, 1 as built."""
    model = tiny(name, branch_gate="channel")
    residuals = [m for m in model.modules() if isinstance(m, Residual)]
    assert len(residuals) == len(branches(model)) and all(isinstance(r.gate, ChannelGate) for r in residuals)
    assert all(torch.equal(r.gate.weight, torch.ones(16)) for r in residuals)
    lam = torch.linspace(-1, 1, 16)
    checked = []

    def scales_its_branch(module, inputs, output):
        x = inputs[0]
        torch.testing.assert_close(output, x + lam * module.branch(x))
        checked.append(module)

    with torch.no_grad():
        for r in residuals:
            r.gate.weight.copy_(lam)
            r.register_forward_hook(scales_its_branch)
        model(digits_batch())
    assert len(checked) == len(residuals)


def test_residual_scale_multiplies_every_shortcut():
    """DeepNet (Wang et al. 2022): x_{l+1} = LN(alpha x_l + G(x_l)), post-LN."""
    model = tiny("transformer-post-rows", residual_scale=2.5)
    residuals = [m for m in model.modules() if isinstance(m, Residual)]
    assert len(residuals) == 4
    for r in residuals:
        r.register_forward_hook(lambda m, inputs, out: torch.testing.assert_close(
            out, 2.5 * inputs[0] + m.branch(inputs[0])))
    model(digits_batch())


@pytest.mark.parametrize("position", ["pre", "post"])
def test_norm_none_leaves_no_layer_norm(position):
    assert not [m for m in tiny("transformer", norm="none", norm_position=position).modules()
                if isinstance(m, nn.LayerNorm)]
    assert [m for m in tiny("transformer", norm_position=position).modules() if isinstance(m, nn.LayerNorm)]


def test_attn_scale_inv_d_divides_the_logits_by_d_head():
    """muP's attention (Yang et al. 2021, Sec. 6): q k^T / d_head, the same as 1/sqrt(d_head) with q / sqrt(d_head)."""
    torch.manual_seed(0)
    mup, standard = SelfAttention(16, 2, attn_scale="inv_d").double(), SelfAttention(16, 2).double()
    standard.load_state_dict(mup.state_dict())
    with torch.no_grad():
        standard.qkv.weight[:16] /= 8**0.5  # d_head = 8; the q rows come first
        standard.qkv.bias[:16] /= 8**0.5
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(mup(x), standard(x), rtol=0, atol=1e-13)
    same_weights = SelfAttention(16, 2).double()
    same_weights.load_state_dict(mup.state_dict())
    assert not torch.allclose(mup(x), same_weights(x))  # the option changes what is computed


@pytest.mark.parametrize("cfg,message", [
    ({"name": "resnet", "depth": 21}, r"model.depth=21: .* 6n\+2 .*8, 14, 20, 26, 32, 44, 56, 110"),
    ({"name": "resnet", "norm": "layer"}, "unknown model.norm 'layer'; valid: batch, none"),
    ({"name": "resmlp", "norm": "group"}, "unknown model.norm 'group'; valid: none, layer, batch"),
    ({"name": "resmlp", "activation": "swish"}, "unknown model.activation 'swish'; valid: relu, "),
    ({"name": "resmlp", "branch_gate": "vector"}, "unknown model.branch_gate 'vector'; valid: none, scalar"),
    ({"name": "transformer", "width": 30, "heads": 4}, "model.width=30 must be divisible by model.heads=4"),
    ({"name": "transformer", "patch_size": 3}, "model.patch_size=3 does not tile 8x8 images; valid: 1, 2, 4, 8"),
    ({"name": "transformer", "tokens": "pixels"}, "unknown model.tokens 'pixels'; valid: patches, rows"),
    ({"name": "transformer", "pool": "max"}, "unknown model.pool 'max'; valid: cls, mean"),
    ({"name": "transformer", "norm_position": "sandwich"}, "valid: pre, post"),
    ({"name": "transformer", "norm": "rms"}, "unknown model.norm 'rms'; valid: layer, none"),
    ({"name": "transformer", "attn_scale": "inv_d2"}, "unknown model.attn_scale 'inv_d2'; valid: inv_sqrt_d, inv_d"),
    ({"name": "transformer", "residual_scale": 0.0}, "model.residual_scale=0.0 must be a finite number > 0"),
    ({"name": "resnet", "branch_gate": "channel"}, "unknown model.branch_gate 'channel'; valid: none, scalar$"),
])
def test_bad_options_name_the_value_and_the_valid_ones(cfg, message):
    with pytest.raises(ValueError, match=message):
        build_model(cfg, DIGITS)


@pytest.mark.parametrize("overrides,message", [
    (["model=resnet", "model.depth=21"], "model.depth=21: a CIFAR ResNet has depth 6n+2"),
    (["model=transformer", "model.width=30"], "model.width=30: must be divisible by model.heads=4"),
    (["model=transformer", "model.heads=0"], "model.heads=0: must be an integer >= 1"),
    (["model=resmlp", "model.norm=group"], "model.norm='group': must be one of none, layer, batch"),
    (["model=resnet", "model.branch_gate=vector"], "model.branch_gate='vector': must be one of none, scalar"),
    (["model=transformer", "model.norm=rms"], "model.norm='rms': must be one of layer, none"),
    (["model=transformer", "model.residual_scale=-1"], "model.residual_scale=-1.0: must be a finite number > 0"),
])
def test_check_config_reports_bad_options_before_anything_is_built(overrides, message):
    with pytest.raises(ConfigError) as err:
        check_config(compose_config(overrides))
    assert message in str(err.value)


@pytest.mark.parametrize("name", sorted(TINY))
def test_each_family_learns_digits(name):
    """Four epochs of SGD (lr 0.1, momentum 0.9) on 480 digits bring the training loss well below its start."""
    cfg = compose_config(["dataset.train_size=480", "trainer.batch_size=32", "trainer.epochs=4", "optimizer.lr=0.1"])
    data = load_dataset(cfg.dataset, cfg.paths.data_dir, "cpu")
    torch.manual_seed(0)
    model = build_model(TINY[name], data.shape)
    points = []
    result = fit(model, data, cfg.trainer, cfg.optimizer, 0, log=points.extend)
    losses = [v for key, v, _ in points if key == "train/loss"]
    assert result.status == "finished"
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_attention_is_torchs_multi_head_attention_in_plain_ops():
    """qkv rows ordered q, k, v and split into heads as nn.MultiheadAttention's in_proj (nanoGPT's c_attn)."""
    torch.manual_seed(0)
    attention = SelfAttention(16, 4, pre_norm=False).double()
    reference = nn.MultiheadAttention(16, 4, batch_first=True).double()
    with torch.no_grad():
        reference.in_proj_weight.copy_(attention.qkv.weight)
        reference.in_proj_bias.copy_(attention.qkv.bias)
        reference.out_proj.weight.copy_(attention.out.weight)
        reference.out_proj.bias.copy_(attention.out.bias)
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    torch.testing.assert_close(attention(x), reference(x, x, x, need_weights=False)[0], rtol=0, atol=1e-13)
    assert attention.heads == 4
