"""The inits for residual networks and transformers: each one's defining property, on the real models."""

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from initbench.init import InitError, build_policy
from initbench.models import DataShape, build_model
from initbench.train import build_optimizer

CONF = Path(__file__).resolve().parents[1] / "conf" / "init"
DIGITS = DataShape(1, 8, 8, 10)
SCALARS = {"branch_gate": "scalar", "branch_bias": True}


def policy_file(name: str):
    return build_policy(OmegaConf.load(CONF / f"{name}.yaml"))


def model(name: str, seed: int = 0, **cfg) -> nn.Module:
    torch.manual_seed(seed)
    return build_model({"name": name, **cfg}, DIGITS)


def apply(policy: str, net: nn.Module, seed: int = 0):
    return policy_file(policy).apply(net, torch.Generator().manual_seed(seed))


def params(net: nn.Module, suffix: str) -> list[torch.Tensor]:
    return [p.detach() for n, p in net.named_parameters() if n.endswith(suffix)]


def pooled_std(tensors: list[torch.Tensor]) -> float:
    return torch.cat([t.flatten() for t in tensors]).std().item()


def snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


# --- fixup -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["resmlp", "resnet"])
def test_fixup_zeroes_the_classifier_and_branch_ends_and_sets_the_scalars(family):
    cfg = {"depth": 3, "width": 16} if family == "resmlp" else {"depth": 8, "width": 4, "norm": "none"}
    net = model(family, **cfg, **SCALARS)
    apply("fixup", net)
    assert net.head.weight.eq(0).all() and net.head.bias.eq(0).all()
    outs = params(net, "branch.out.weight")
    assert len(outs) == len(params(net, "gate.weight")) > 0 and all(w.eq(0).all() for w in outs)
    assert all(g.item() == 1.0 for g in params(net, "gate.weight"))
    biases = [p for n, p in net.named_parameters() if n.endswith("bias") and n != "head.bias"]
    assert biases and all(b.eq(0).all() for b in biases)  # ScalarBias and Linear biases
    assert all(w.abs().sum() > 0 for w in params(net, "branch.inp.weight"))


@pytest.mark.parametrize("family", ["resmlp", "resnet"])
def test_fixup_trains_every_bias_and_multiplier_at_a_tenth_of_the_lr(family):
    """As the official code's optimizer groups: every parameter named *bias* or a scale (the gates) at
    base_lr / 10, every weight at the full rate; the trainer's parameter groups take these factors."""
    cfg = {"depth": 3, "width": 16} if family == "resmlp" else {"depth": 8, "width": 4, "norm": "none"}
    net = model(family, **cfg, **SCALARS)
    scales = policy_file("fixup").optimizer_scales(net, {"_target_": "torch.optim.SGD", "lr": 0.1})
    slow = {n for n, _ in net.named_parameters() if n.endswith("bias") or n.endswith("gate.weight")}
    assert set(scales) == slow and "head.bias" in slow
    assert all(factors == {"lr": pytest.approx(0.1)} for factors in scales.values())
    sgd = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}
    groups = build_optimizer(sgd, list(net.named_parameters()), scales).param_groups
    by_lr = {round(g["lr"], 12): {id(p) for p in g["params"]} for g in groups}
    assert by_lr[0.01] == {id(p) for n, p in net.named_parameters() if n in slow}


def test_an_lr_factor_that_is_no_positive_number_is_refused_naming_the_rule():
    for bad in (0, -1, "fast", True):
        policy = {"name": "mine", "rules": [{"where": {"param": "bias"}, "scheme": "zeros", "lr_factor": bad}]}
        with pytest.raises(InitError, match=r"rule 0 .*lr_factor must be a positive number"):
            build_policy(OmegaConf.create(policy))


@pytest.mark.parametrize("depth", [2, 32])
def test_fixup_scales_the_branch_layers_by_L_to_the_minus_half(depth):
    """He std sqrt(2/fan_in) times L^(-1/(2m-2)), m=2: measured over all the `inp` weights of L branches."""
    net = model("resmlp", depth=depth, width=64, **SCALARS)
    report = apply("fixup", net).frame.set_index("param")
    expected = math.sqrt(2 / 64) / math.sqrt(depth)
    assert pooled_std(params(net, "branch.inp.weight")) == pytest.approx(expected, rel=0.03)
    assert report.loc["blocks.0.branch.inp.weight", "expected_std"] == pytest.approx(expected)
    assert pooled_std(params(net, "stem.weight")) == pytest.approx(math.sqrt(2 / 64), rel=0.05)  # He, unscaled


def test_fixup_refuses_a_model_without_its_scalars_untouched():
    net = model("resmlp", depth=2, width=8)
    before = snapshot(net)
    with pytest.raises(InitError, match=r"(?s)ScalarBias.*matches no parameter.*ScalarGate.*matches no parameter"):
        apply("fixup", net)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


class OneLayerBranch(nn.Module):
    """Residual blocks whose branch is a single Linear: Fixup's L^(-1/(2m-2)) is undefined for m=1."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.ModuleDict({"branch": nn.Linear(4, 4)}) for _ in range(3))
        self.head = nn.Linear(4, 2)


def test_fixup_refuses_one_layer_branches_naming_m():
    fixup = build_policy({"name": "f", "rules": [{"where": {"name": "*.branch.weight"}, "scheme": "fixup_normal"}]})
    with pytest.raises(InitError, match=r"needs m >= 2 weight layers per branch; this model's branches have m=1"):
        fixup.apply(OneLayerBranch(), torch.Generator())


# --- skipinit and rezero ---------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["skipinit", "rezero"])
def test_gates_start_at_zero_blocks_are_identities_and_gates_move_after_one_step(policy):
    net = model("resmlp", depth=4, width=16, branch_gate="scalar")
    before = snapshot(net)
    apply(policy, net)
    gates = params(net, "gate.weight")
    assert len(gates) == 4 and all(g.item() == 0.0 for g in gates)
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    stream = net.stem(x.flatten(1))
    torch.testing.assert_close(net.blocks(stream), stream, rtol=0, atol=0)  # every block is the identity
    if policy == "rezero":  # everything but the gates as PyTorch built it
        assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items() if not k.endswith("gate.weight"))
    else:  # He normal elsewhere
        assert pooled_std(params(net, "branch.inp.weight")) == pytest.approx(math.sqrt(2 / 16), rel=0.1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    nn.functional.cross_entropy(net(x), torch.arange(32) % 10).backward()
    optimizer.step()
    assert all(g.item() != 0.0 for g in params(net, "gate.weight"))


def test_gate_policies_refuse_a_model_without_gates():
    for policy in ("skipinit", "rezero"):
        with pytest.raises(InitError, match=r"where: \{module: ScalarGate\}.*matches no parameter"):
            apply(policy, model("resmlp", depth=2, width=8))


# --- zero_residual ---------------------------------------------------------------------------------------


def test_zero_residual_zeroes_the_last_batchnorm_of_each_block():
    net = model("resnet", depth=8, width=4).eval()
    apply("zero_residual", net)
    out_norms, inp_norms = params(net, "branch.out_norm.weight"), params(net, "branch.inp_norm.weight")
    assert len(out_norms) == 3 and all(w.eq(0).all() for w in out_norms)
    assert all(w.eq(1).all() for w in inp_norms)
    last = [m.weight.detach() for n, m in net.named_modules() if n.endswith("branch.out")][-1]  # 16x16x3x3
    assert last.std().item() == pytest.approx(math.sqrt(2 / (16 * 9)), rel=0.1)  # torchvision's He, fan_out
    residual = net.blocks[0].residual  # its branch adds BN's bias (0): the block is the identity
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(residual(x), x, rtol=0, atol=0)


def test_zero_residual_refuses_a_resnet_without_batchnorm():
    with pytest.raises(InitError, match=r"out_norm\.weight.*matches no parameter"):
        apply("zero_residual", model("resnet", depth=8, width=4, norm="none"))


# --- gpt2_scaled -----------------------------------------------------------------------------------------


def test_gpt2_scaled_residual_projections_have_std_002_over_sqrt_2_depth():
    depth = 6
    net = model("transformer", depth=depth, width=64, heads=4)
    apply("gpt2_scaled", net)
    outs = params(net, "branch.out.weight")
    assert len(outs) == 2 * depth
    assert pooled_std(outs) == pytest.approx(0.02 / math.sqrt(2 * depth), rel=0.03)
    others = [p.detach() for n, p in net.named_parameters() if n.endswith("weight") and p.dim() == 2
              and not n.endswith("branch.out.weight")]
    assert pooled_std(others) == pytest.approx(0.02, rel=0.03)  # Linear and Embedding weights
    linear_biases = [m.bias for m in net.modules() if isinstance(m, nn.Linear)]
    assert all(b.eq(0).all() for b in linear_biases)
    norms = [m for m in net.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(m.weight.eq(1).all() and m.bias.eq(0).all() for m in norms)


def test_gpt2_scaled_std_is_a_policy_parameter():
    net = model("transformer", depth=2, width=32, heads=4)
    build_policy({**OmegaConf.to_container(OmegaConf.load(CONF / "gpt2_scaled.yaml")), "std": 0.1}).apply(
        net, torch.Generator())
    assert pooled_std(params(net, "qkv.weight")) == pytest.approx(0.1, rel=0.05)
    assert pooled_std(params(net, "branch.out.weight")) == pytest.approx(0.1 / 2, rel=0.05)


# --- mimetic ---------------------------------------------------------------------------------------------


def qk_products(net: nn.Module) -> list[torch.Tensor]:
    """W_q,h^T W_k,h (d x d) of every head of every attention: logits are x_i^T (W_q,h^T W_k,h) x_j."""
    products = []
    for module in net.modules():
        if hasattr(module, "heads") and hasattr(module, "qkv"):
            w, heads = module.qkv.weight.detach(), module.heads
            d = w.shape[1]
            k = d // heads
            products += [w[h * k:(h + 1) * k].T @ w[d + h * k:d + (h + 1) * k] for h in range(heads)]
    return products


def identity_cosine(m: torch.Tensor) -> float:
    return (torch.trace(m) / (m.norm() * math.sqrt(m.shape[0]))).item()


def test_mimetic_full_rank_head_is_alpha_z_plus_beta_identity():
    """One head (k = d): W_q^T W_k = 0.7 Z + 0.7 I exactly, Z with entries N(0, 1/d)."""
    net = model("transformer", depth=2, width=64, heads=1)
    apply("mimetic", net)
    for m in qk_products(net):
        off = m - torch.diag(m.diag())
        assert m.diag().mean().item() == pytest.approx(0.7, abs=0.05)
        assert off.std().item() == pytest.approx(0.7 / 8, rel=0.05)


def test_mimetic_heads_correlate_with_the_identity_and_value_out_is_minus_identity():
    """Per head, W_q,h^T W_k,h is the rank-k part of 0.7 Z_h + 0.7 I: its cosine with I is near the
    largest a rank-k matrix can have, sqrt(k/d); PyTorch's default gives about 0. W_out W_v = 0.4 Z - 0.4 I."""
    width, heads = 64, 4
    net = model("transformer", depth=2, width=width, heads=heads)
    default = [identity_cosine(m) for m in qk_products(net)]
    report = apply("mimetic", net).frame.set_index("param")
    mimetic = [identity_cosine(m) for m in qk_products(net)]
    assert len(mimetic) == 2 * heads
    assert min(mimetic) > 0.75 * math.sqrt(1 / heads) and max(abs(c) for c in default) < 0.15
    for block in net.blocks:
        attention = block.attn.branch
        product = attention.out.weight.detach() @ attention.qkv.weight.detach()[2 * width:]
        assert product.diag().mean().item() == pytest.approx(-0.4, abs=0.05)
        assert (product - torch.diag(product.diag())).std().item() == pytest.approx(0.4 / 8, rel=0.05)
    assert math.isnan(report.loc["blocks.0.attn.branch.qkv.weight", "expected_std"])
    out = report.loc["blocks.0.attn.branch.out.weight"]
    assert out["std"] == pytest.approx(out["expected_std"], rel=0.05)


def attention_on_own_token(net: nn.Module, x: torch.Tensor) -> list[float]:
    """Per block, the mean softmax weight a token puts on itself, recomputed from `qkv`'s output."""
    outputs = []
    hooks = [b.attn.branch.qkv.register_forward_hook(lambda m, i, o: outputs.append(o.detach())) for b in net.blocks]
    net(x)
    for hook in hooks:
        hook.remove()
    shares = []
    for out, block in zip(outputs, net.blocks, strict=True):
        n, t, width = out.shape[0], out.shape[1], out.shape[2] // 3
        q, k, _ = (z.reshape(n, t, block.attn.branch.heads, -1).transpose(1, 2) for z in out.split(width, 2))
        weights = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
        shares.append(weights.diagonal(dim1=-2, dim2=-1).mean().item())
    return shares


def test_mimetic_attention_starts_on_the_own_token():
    """The point of W_q W_k^T ~ I: each token attends mostly to itself (17 tokens: uniform is 0.059)."""
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    default = model("transformer", depth=2, width=64, heads=4)
    mimetic = model("transformer", depth=2, width=64, heads=4)
    apply("mimetic", mimetic)
    assert max(attention_on_own_token(default, x)) < 0.1 and min(attention_on_own_token(mimetic, x)) > 0.4


class Attention(nn.Module):
    def __init__(self, width: int, qkv_rows: int, heads: int | None):
        super().__init__()
        if heads is not None:
            self.heads = heads
        self.qkv = nn.Linear(width, qkv_rows)


@pytest.mark.parametrize(("attention", "says"), [
    (Attention(8, 24, None), r"mimetic_qkv needs an attention module with a `heads` attribute above"),
    (Attention(6, 18, 4), r"shape \(3d, d\) with d divisible by heads=4 \(this one is \(18, 6\)\)"),
    (Attention(8, 16, 2), r"shape \(3d, d\) with d divisible by heads=2 \(this one is \(16, 8\)\)"),
])
def test_mimetic_refuses_what_is_not_a_fused_qkv_with_heads(attention, says):
    with pytest.raises(InitError, match=says):
        apply("mimetic", nn.ModuleDict({"attn": attention}))


# --- the report's theory ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("policy", "family", "cfg"), [
    ("fixup", "resmlp", {"depth": 4, "width": 64, **SCALARS}),
    ("fixup", "resnet", {"depth": 8, "width": 8, "norm": "none", **SCALARS}),
    ("skipinit", "resnet", {"depth": 8, "width": 8, "branch_gate": "scalar"}),
    ("rezero", "transformer", {"depth": 2, "width": 32, "heads": 4, "branch_gate": "scalar"}),
    ("zero_residual", "resnet", {"depth": 8, "width": 8}),
    ("gpt2_scaled", "transformer", {"depth": 2, "width": 32, "heads": 4}),
    ("mimetic", "transformer", {"depth": 2, "width": 32, "heads": 4}),
])
def test_report_expected_std_is_right_or_nan(policy, family, cfg):
    frame = apply(policy, model(family, **cfg)).frame
    known = frame[frame["expected_std"].notna() & frame["std"].notna()]
    sizes = known["shape"].map(lambda s: math.prod(int(n) for n in s.split("x")))
    exact = known["expected_std"] == 0
    assert (known.loc[exact, "std"] == 0).all()
    big = known[~exact & (sizes >= 1000)]
    assert len(big) > 0
    assert ((big["std"] - big["expected_std"]).abs() <= 0.1 * big["expected_std"]).all(), big
