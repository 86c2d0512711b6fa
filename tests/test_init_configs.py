"""Every conf/init/*.yaml builds, composes through Hydra, and applies to every model it is meant for."""

import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationKeyError

from initbench.init import REPORT_COLUMNS, InitError, build_policy
from initbench.models import DataShape, build_model

from .conftest import DEEPNET_ALPHA, POLICY_NEEDS

CONF = Path(__file__).resolve().parents[1] / "conf"
POLICIES = sorted(p.stem for p in (CONF / "init").glob("*.yaml"))
MODELS = {
    "lenet": ({"name": "lenet"}, DataShape(3, 32, 32, 10)),
    "mlp": ({"name": "mlp", "depth": 3, "width": 64}, DataShape(1, 28, 28, 10)),
    "mlp_bn": ({"name": "mlp", "depth": 3, "width": 64, "batch_norm": True}, DataShape(1, 28, 28, 10)),
    "lstm": ({"name": "lstm", "hidden_size": 32, "num_layers": 2}, DataShape(1, 28, 28, 10)),
    # residual models with the structure the residual inits address (initbench/models/residual.py)
    "resmlp_scalars": ({"name": "resmlp", "depth": 3, "width": 16, "branch_gate": "scalar", "branch_bias": True},
                       DataShape(1, 8, 8, 10)),
    "resnet": ({"name": "resnet", "depth": 8, "width": 4}, DataShape(1, 8, 8, 10)),
    "transformer": ({"name": "transformer", "depth": 2, "width": 16, "heads": 2}, DataShape(1, 8, 8, 10)),
    "transformer_channel": ({"name": "transformer", "depth": 2, "width": 16, "heads": 2, "branch_gate": "channel"},
                            DataShape(1, 8, 8, 10)),
    "transformer_deepnet": ({"name": "transformer", "depth": 4, "width": 16, "heads": 2, "norm_position": "post",
                             "residual_scale": DEEPNET_ALPHA}, DataShape(1, 8, 8, 10)),
    "transformer_mup": ({"name": "transformer", "depth": 2, "width": 16, "heads": 2, "attn_scale": "inv_d"},
                        DataShape(1, 8, 8, 10)),
}
TRANSFORMERS = {"transformer", "transformer_channel", "transformer_deepnet", "transformer_mup"}
# Policies written for one architecture; every other policy is meant for any model.
ONLY_FOR = {"docs_mixed": {"lenet"}, "lstm_forget_bias": {"lstm"}, "fixup": {"resmlp_scalars"},
            "skipinit": {"resmlp_scalars"}, "rezero": {"resmlp_scalars"}, "zero_residual": {"resnet"},
            "gpt2_scaled": {"resmlp_scalars", *TRANSFORMERS}, "mimetic": TRANSFORMERS,
            "delta_orthogonal": {"lenet", "resnet"}, "mup": {"mlp", "mlp_bn"},
            **{p: TRANSFORMERS for p in ("vit_timm", "vit_jax", "t_fixup")},
            "wang_init": {"resmlp_scalars", *TRANSFORMERS},
            "small_init": {"mlp", "mlp_bn", "resmlp_scalars", "resnet", *TRANSFORMERS},
            "zero_proj": {"resmlp_scalars", *TRANSFORMERS}, "layerscale": {"transformer_channel"},
            "deepnet": {"transformer_deepnet"}, "mup_transformer": {"transformer_mup"}}
# What a policy's refusal says where it is not for a model: a rule that matches nothing, or its own check.
REFUSAL = {"mup_transformer": "matches no parameter|model.attn_scale=inv_d"}
# Policies that draw no random numbers: the seed cannot change them.
DETERMINISTIC = {"default", "zeros", "ones", "rezero", "zero_init", "zero_proj", "layerscale"}
SHIPPED = {"default", "kaiming", "kaiming_uniform", "xavier", "xavier_normal", "lecun", "orthogonal", "normal",
           "uniform", "zeros", "ones", "docs_mixed", "d2l_custom", "lstm_forget_bias", "lsuv", "fixup", "skipinit",
           "rezero", "zero_residual", "gpt2_scaled", "mimetic", "critical", "kumar", "delta_orthogonal",
           "zero_init", "mup"}


def build(model_name: str, seed: int = 0):
    cfg, shape = MODELS[model_name]
    torch.manual_seed(seed)
    model = build_model(cfg, shape)
    batch = torch.randn(32, shape.channels, shape.height, shape.width, generator=torch.Generator().manual_seed(1))
    return model, batch


def load_policy(name: str, model_name: str):
    """The policy file beside MODELS[model_name]'s config, as Hydra composes them: its ${model.*} resolve."""
    return build_policy(OmegaConf.create({"model": MODELS[model_name][0],
                                          "init": OmegaConf.load(CONF / "init" / f"{name}.yaml")}).init)


def apply(policy, model_name: str, seed: int):
    model, batch = build(model_name)
    report = policy.apply(model, torch.Generator().manual_seed(seed), batch=batch if policy.needs_data else None)
    return model, report


def test_every_required_policy_ships():
    assert SHIPPED <= set(POLICIES)


@pytest.mark.parametrize("name", POLICIES)
def test_policy_file_names_itself_and_composes_with_hydra(name):
    raw = OmegaConf.load(CONF / "init" / f"{name}.yaml")
    assert raw.name == name and "rules" in raw
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"init={name}", *POLICY_NEEDS.get(name, [])])
    assert build_policy(cfg.init).name == name


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("name", POLICIES)
def test_policy_applies_to_the_models_it_is_meant_for(name, model_name):
    try:
        policy = load_policy(name, model_name)
    except InterpolationKeyError:  # it reads a model key this model lacks: check_config names it (test_config)
        assert model_name not in ONLY_FOR.get(name, MODELS)
        return
    if model_name not in ONLY_FOR.get(name, MODELS):
        model, _ = build(model_name)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(InitError, match=REFUSAL.get(name, "matches no parameter")):
            policy.apply(model, torch.Generator())
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        return
    model, report = apply(policy, model_name, seed=0)
    frame = report.frame
    assert tuple(frame.columns) == REPORT_COLUMNS
    assert frame["param"].tolist() == [n for n, _ in model.named_parameters()]
    assert frame[["mean", "min", "max"]].notna().all().all()
    assert frame.loc[frame["shape"] != "()", "std"].notna().all()  # a scalar (ScalarGate, ScalarBias) has no std
    for param, tensor in model.named_parameters():  # BatchNorm keeps 1/0 under every policy
        if re.fullmatch(r"layers\.\d+\.1\.(weight|bias)", param):
            assert tensor.eq(1.0 if param.endswith("weight") else 0.0).all()
    same, _ = apply(policy, model_name, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), same.parameters(), strict=True))
    if name not in DETERMINISTIC:
        other, _ = apply(policy, model_name, seed=1)
        assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters(), strict=True))


@pytest.mark.parametrize("path", sorted((CONF / "init").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_policy_opens_with_where_its_rule_comes_from(path):
    """The header comment is the policy's entry in the docs' generated policy reference: its source
    (a paper's year, PyTorch's code, a seed document) and its rule, before anything else in the file."""
    lines = path.read_text().splitlines()
    end = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    header = " ".join(line[1:].strip() for line in lines[:end])
    assert len(header) > 40, f"{path.name} has no header comment"
    assert re.search(r"\b(19|20)\d\d\b|PyTorch|[Ss]eeds? 00\d|Keras", header), f"{path.name}: no source in {header!r}"
