"""The inits today's transformers ship (conf/init/{vit_timm,vit_jax,small_init,wang_init,zero_proj,layerscale,
t_fixup,deepnet}.yaml): each against its defining rule, and timm's two ViT inits against timm's own code."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from initbench.init import build_policy
from initbench.init.transformer_inits import deepnet_alpha, deepnet_beta, layerscale_eps, t_fixup_gain
from initbench.models import DataShape, build_model
from initbench.models.residual import ChannelGate, Residual

from .conftest import CONF_DIR

SHAPE = DataShape(1, 8, 8, 10)
WIDTH = 64


def initialized(policy: str, seed: int = 0, **model) -> torch.nn.Module:
    """A transformer (width 64, 4 heads, 2 blocks, patches of 2: 16 tokens and a class token) under `policy`,
    its ${model.*} parameters resolved as Hydra would."""
    cfg = OmegaConf.create({"model": {"name": "transformer", "depth": 2, "width": WIDTH, "heads": 4, **model},
                            "init": OmegaConf.load(f"{CONF_DIR}/init/{policy}.yaml")})
    torch.manual_seed(seed)
    net = build_model(cfg.model, SHAPE)
    build_policy(cfg.init).apply(net, torch.Generator().manual_seed(seed))
    return net


def std_close(tensor: torch.Tensor, expected: float) -> bool:
    """The sample std within 5 standard errors of `expected` (the error of a std from n draws: std/sqrt(2n))."""
    return abs(tensor.std().item() - expected) <= 5 * expected / math.sqrt(2 * tensor.numel())


# initbench's transformer parameter -> timm VisionTransformer's, for the same architecture
TIMM_NAMES = {"embed.weight": "patch_embed.proj.weight", "embed.bias": "patch_embed.proj.bias",
              "cls.weight": "cls_token", "pos.weight": "pos_embed", "norm.weight": "norm.weight",
              "norm.bias": "norm.bias", "head.weight": "head.weight", "head.bias": "head.bias"}
for _i in range(2):
    for _ours, _theirs in {"attn.branch.norm": "norm1", "attn.branch.qkv": "attn.qkv",
                           "attn.branch.out": "attn.proj", "mlp.branch.norm": "norm2", "mlp.branch.inp": "mlp.fc1",
                           "mlp.branch.out": "mlp.fc2"}.items():
        for _p in ("weight", "bias"):
            TIMM_NAMES[f"blocks.{_i}.{_ours}.{_p}"] = f"blocks.{_i}.{_theirs}.{_p}"


@pytest.mark.parametrize("policy,mode", [("vit_timm", ""), ("vit_jax", "jax")])
def test_vit_inits_give_every_parameter_the_statistics_timms_own_init_gives_it(policy, mode):
    """timm's VisionTransformer of the same shapes, initialized by timm (init_weights_vit_timm / _jax and
    init_weights' pos and cls rules), 3 seeds each: per parameter the same mean and std (to sampling error),
    the same constants, and for the truncated LeCun patch embedding no value beyond its 2.27 stds."""
    vit = pytest.importorskip("timm.models.vision_transformer")
    for seed in range(3):
        ours = dict(initialized(policy, seed).named_parameters())
        torch.manual_seed(seed)
        theirs = dict(vit.VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=WIDTH,
                                            depth=2, num_heads=4, mlp_ratio=4, weight_init=mode).named_parameters())
        assert set(TIMM_NAMES) == set(ours) and set(TIMM_NAMES.values()) == set(theirs)
        for name, tensor in ours.items():
            a, b = tensor.detach().flatten(), theirs[TIMM_NAMES[name]].detach().flatten()
            if b.std() == 0:
                assert torch.equal(a, torch.full_like(a, b[0].item())), name  # zeros, LayerNorm's ones
                continue
            assert std_close(a, b.std().item()) and std_close(b, a.std().item()), (name, a.std(), b.std())
            assert abs(a.mean() - b.mean()) <= 5 * b.std() / math.sqrt(a.numel()), name
        if policy == "vit_jax":
            embed = ours["embed.weight"].detach()
            assert embed.abs().max() <= 2 / 0.87962566103423978 * (1 / math.sqrt(4)) + 1e-6  # fan_in 4, truncated


def test_small_init_draws_every_weight_with_variance_two_over_five_d():
    net = initialized("small_init")
    weights = {n: p for n, p in net.named_parameters() if n.endswith("weight") and "norm" not in n}
    assert len(weights) == 3 + 2 * 4 + 1  # embed, cls, pos; qkv, out, inp, out per block; head
    for name, weight in weights.items():
        assert std_close(weight, math.sqrt(2 / (5 * WIDTH))), name
    assert all(p.eq(0).all() for n, p in net.named_parameters() if n.endswith("bias") and "norm" not in n)


def test_wang_init_scales_the_residual_outputs_by_two_over_n_root_d_and_small_inits_the_rest():
    net = initialized("wang_init", depth=6)
    for name, weight in net.named_parameters():
        if name.endswith(".branch.out.weight"):
            assert std_close(weight, 2 / (6 * math.sqrt(WIDTH))), name
        elif name.endswith("weight") and "norm" not in name:
            assert std_close(weight, math.sqrt(2 / (5 * WIDTH))), name


def test_zero_proj_starts_every_block_as_the_identity_and_the_logits_at_zero():
    net = initialized("zero_proj", branch_gate="none")
    checked = []

    def identity(module, inputs, output):
        assert torch.equal(output, inputs[0])
        checked.append(module)

    for module in net.modules():
        if isinstance(module, Residual):
            module.register_forward_hook(identity)
    assert torch.equal(net(torch.randn(5, 1, 8, 8)), torch.zeros(5, 10))
    assert len(checked) == 4


@pytest.mark.parametrize("depth,eps", [(12, 0.1), (20, 1e-5), (30, 1e-6)])
def test_layerscale_sets_every_channel_gate_to_caits_epsilon_for_the_depth(depth, eps):
    assert layerscale_eps(depth) == eps
    net = initialized("layerscale", branch_gate="channel", depth=depth, width=16, heads=2)
    gates = [m.weight for m in net.modules() if isinstance(m, ChannelGate)]
    assert len(gates) == 2 * depth and all(torch.equal(g, torch.full((16,), eps)) for g in gates)


def test_layerscale_refuses_a_model_without_channel_gates():
    with pytest.raises(ValueError, match="ChannelGate"):
        initialized("layerscale", branch_gate="scalar")


def qkv_blocks(net, i: int) -> list[torch.Tensor]:
    return net.get_parameter(f"blocks.{i}.attn.branch.qkv.weight").detach().split(WIDTH)


def test_t_fixup_scales_value_output_and_mlp_weights_by_0_67_n_to_the_minus_quarter():
    net = initialized("t_fixup", norm="none", depth=8)
    gain = t_fixup_gain(8)
    assert gain == pytest.approx(0.67 * 8**-0.25)
    xavier = lambda fan_in, fan_out: math.sqrt(2 / (fan_in + fan_out))  # noqa: E731
    for i in range(8):
        q, k, v = qkv_blocks(net, i)
        assert std_close(q, xavier(WIDTH, WIDTH)) and std_close(k, xavier(WIDTH, WIDTH))
        assert std_close(v, gain * xavier(WIDTH, WIDTH))
        assert std_close(net.get_parameter(f"blocks.{i}.attn.branch.out.weight"), gain * xavier(WIDTH, WIDTH))
        for layer in ("inp", "out"):
            weight = net.get_parameter(f"blocks.{i}.mlp.branch.{layer}.weight")
            assert std_close(weight, gain * xavier(WIDTH, 4 * WIDTH))
    assert std_close(net.pos.weight, WIDTH**-0.5)


def test_deepnet_uses_beta_with_the_models_alpha_and_refuses_another_alpha():
    alpha = deepnet_alpha(6)
    assert alpha == pytest.approx(12**0.25) and deepnet_beta(6) == pytest.approx(48**-0.25)
    net = initialized("deepnet", norm_position="post", depth=6, residual_scale=alpha)
    xavier = math.sqrt(2 / (2 * WIDTH))
    for i in range(6):
        q, k, v = qkv_blocks(net, i)
        assert std_close(q, xavier) and std_close(k, xavier) and std_close(v, deepnet_beta(6) * xavier)
        assert std_close(net.get_parameter(f"blocks.{i}.attn.branch.out.weight"), deepnet_beta(6) * xavier)
    with pytest.raises(ValueError, match=r"set model.residual_scale=1.86"):
        initialized("deepnet", norm_position="post", depth=6, residual_scale=1.0)
