r"""μP, the maximal update parametrization (Yang et al. 2021, "Tensor Programs V: Tuning Large Neural
Networks via Zero-Shot Hyperparameter Transfer"): init scales and per-parameter optimizer factors that keep
each layer's activations, and their change in training, the same size as the width n grows, relative to a
base width n0 (the policy's `base_width`), so that a learning rate tuned at one width holds at the others.

With the width multiplier m = n / n0, for the Linear layers of a net whose width dimensions all equal n
(model=mlp), in the form of the paper's Table 3 (no output multiplier; U(+-b) is uniform on [-b, b]):

    scheme      layer        weight init        bias init         SGD lr (w, b)    Adam lr (w, b)
    mup_input   d -> n       U(+-1/sqrt(d))     U(+-1/sqrt(d))    m, m             1, 1
    mup_hidden  n -> n       U(+-1/sqrt(n))     U(+-1/sqrt(n0))   1, m             1/m, 1
    mup_output  n -> c       U(+-sqrt(n0)/n)    U(+-1/sqrt(n0))   1/m, 1           1/m, 1
    mup_vector  n (a norm's gain or shift): the constant `val`    m                1

Each bound is multiplied by the rule's `scale` (1: PyTorch's default init taken at the base width, so at
n = n0 the policy is `default`; 0: zeros, mup's readout_zero_init). m is read off the tensor: n is its
dimension that grows with the width (dim 0 of input weights and of biases and vectors, dim 1 of hidden and
output weights), unless the policy gives `width` (`${model.width}`): then m = width / n0 for every tensor,
as a transformer needs, whose layers are multiples of the width (qkv 3n x n, the MLP's n x 4n). Each lr
factor comes with a weight-decay factor that keeps lr * weight_decay as it was, as mup's MuSGD and MuAdam
scale it (one exception below).

For the transformer (`mup_transformer`, Sec. 6 and Appendix J.1 of the paper, and the mup package's
examples): attention logits q·k/d instead of q·k/√d (`model.attn_scale=inv_d`, which `mup_qkv` checks), the
query rows zero (`mup_qkv`), the readout zero (`mup_output` at scale 0), the position and class embeddings
N(0, 1) as nn.Embedding draws them with the vector-like lr factors (`mup_embedding`: SGD m, Adam 1).

The mup package (microsoft/mup) divides the readout's input by m in the forward pass (MuReadout) and keeps
its weight W at the base-width scale U(+-1/sqrt(n0)); initbench's models are plain nn.Linear, so this
policy stores the readout weight V = W / m itself. Same function, same training: MuSGD moves W by
-(m lr) grad_W, and grad_W = grad_V / m, so V moves by -(lr / m) grad_V. Under MuAdam (lr for W), V's
gradient is m times W's, so V also takes eps * m and a coupled weight decay wd * m^2 (AdamW's decoupled
one: wd * m) to move by exactly W's step / m. tests/test_mup.py checks several steps of MuSGD, MuAdam and
MuAdamW on a set_base_shapes model against this policy with the trainer's parameter groups.
"""

import math
from collections.abc import Mapping

import torch
from hydra.utils import get_class
from torch import Tensor

from .schemes import declare


def family(optimizer: Mapping) -> str:
    """How μP scales an optimizer (its config's `_target_`): 'sgd'; 'adam' (weight decay added to the
    gradient) or 'adamw' (decoupled: AdamW, or Adam with decoupled_weight_decay). ValueError for others."""
    target = optimizer.get("_target_")
    try:
        cls = get_class(str(target))
    except Exception as err:
        raise ValueError(f"cannot import the optimizer {target!r}: {err}") from None
    if issubclass(cls, torch.optim.SGD):
        return "sgd"
    if issubclass(cls, torch.optim.AdamW) or (issubclass(cls, torch.optim.Adam)
                                              and optimizer.get("decoupled_weight_decay", False)):
        return "adamw"
    if issubclass(cls, torch.optim.Adam):
        return "adam"
    raise ValueError(f"μP's learning-rate factors are defined here for torch.optim.SGD, Adam and AdamW, not {target}")


# --- init: the bound b of U(-b, b) -----------------------------------------------------------------------


def input_bound(shape: torch.Size, a: dict) -> float:
    return a["scale"] / math.sqrt(a["fan_in"])


def hidden_bound(shape: torch.Size, a: dict) -> float:
    return a["scale"] / math.sqrt(shape[1] if len(shape) == 2 else a["base_width"])


def output_bound(shape: torch.Size, a: dict) -> float:
    n0 = a["base_width"]
    return a["scale"] * (math.sqrt(n0) / shape[1] if len(shape) == 2 else 1 / math.sqrt(n0))


def mult(shape: torch.Size, a: Mapping, dim: int) -> float:
    """The width multiplier m = n / n0: n the policy's `width` where it gives one, else the tensor's `dim`."""
    return (a.get("width") or shape[dim]) / a["base_width"]


def _uniform(tensor: Tensor, bound: float, generator: torch.Generator | None) -> Tensor:
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)


def mup_input_(tensor: Tensor, base_width: float, fan_in: int, scale: float = 1.0, width: int = 0,
               generator: torch.Generator | None = None) -> Tensor:
    """The input layer's weight or bias (features -> width): U(+-scale/sqrt(fan_in)), the same at every width.

    Examples:
        >>> w = torch.empty(256, 64)  # 64 features -> width 256
        >>> mup_input_(w, base_width=64, fan_in=64)
    """
    return _uniform(tensor, input_bound(tensor.shape, {"scale": scale, "fan_in": fan_in}), generator)


def mup_hidden_(tensor: Tensor, base_width: float, scale: float = 1.0, width: int = 0,
                generator: torch.Generator | None = None) -> Tensor:
    """A hidden layer's weight (width -> width): U(+-scale/sqrt(fan_in)); its bias: U(+-scale/sqrt(base_width))."""
    return _uniform(tensor, hidden_bound(tensor.shape, {"scale": scale, "base_width": base_width}), generator)


def mup_output_(tensor: Tensor, base_width: float, scale: float = 1.0, width: int = 0,
                generator: torch.Generator | None = None) -> Tensor:
    """The readout's weight (width -> classes): U(+-scale sqrt(base_width)/fan_in), the base-width init times
    1/m; its bias: U(+-scale/sqrt(base_width))."""
    return _uniform(tensor, output_bound(tensor.shape, {"scale": scale, "base_width": base_width}), generator)


def mup_vector_(tensor: Tensor, base_width: float, val: float = 0.0, width: int = 0,
                generator: torch.Generator | None = None) -> Tensor:
    """A vector of the width that is no bias (a norm's gain or shift): the constant `val`."""
    with torch.no_grad():
        return tensor.fill_(val)


def mup_qkv_(tensor: Tensor, base_width: float, attn_power: float, width: int = 0,
             generator: torch.Generator | None = None) -> Tensor:
    """A fused (3n, n) attention weight: the query rows 0 (so every attention starts uniform, the paper's
    App. J.1), the key and value rows mup_hidden's U(+-1/sqrt(n)). Needs attention logits q.k / d
    (`attn_power` 1: model.attn_scale=inv_d), checked before anything is filled."""
    n = tensor.shape[1]
    with torch.no_grad():
        tensor[:n].zero_()
        _uniform(tensor[n:], 1 / math.sqrt(n), generator)
    return tensor


def mup_embedding_(tensor: Tensor, base_width: float, std: float = 1.0, width: int = 0,
                   generator: torch.Generator | None = None) -> Tensor:
    """An nn.Embedding's (rows, n) weight (positions, a class token): N(0, std^2), nn.Embedding's own at
    std 1, the same at every width (input-like: its coordinates stay O(1))."""
    with torch.no_grad():
        return tensor.normal_(0.0, std, generator=generator)


# --- optimizer: {option: factor} ---------------------------------------------------------------------------


def _vector_factors(shape: torch.Size, a: dict, optimizer: Mapping) -> dict[str, float]:
    """A vector of the width (input weights' rows, biases, norms): SGD lr m."""
    m = mult(shape, a, 0)
    return {"lr": m, "weight_decay": 1 / m} if family(optimizer) == "sgd" else {}


def _hidden_factors(shape: torch.Size, a: dict, optimizer: Mapping) -> dict[str, float]:
    if len(shape) == 1:
        return _vector_factors(shape, a, optimizer)
    m = mult(shape, a, 1)
    return {} if family(optimizer) == "sgd" else {"lr": 1 / m, "weight_decay": m}


def _embedding_factors(shape: torch.Size, a: dict, optimizer: Mapping) -> dict[str, float]:
    """An embedding table (rows, n): vector-like, its width dimension the second."""
    m = mult(shape, a, 1)
    return {"lr": m, "weight_decay": 1 / m} if family(optimizer) == "sgd" else {}


def _output_factors(shape: torch.Size, a: dict, optimizer: Mapping) -> dict[str, float]:
    kind = family(optimizer)
    if len(shape) == 1:
        return {}
    m = mult(shape, a, 1)
    if kind == "sgd":
        return {"lr": 1 / m, "weight_decay": m}
    return {"lr": 1 / m, "weight_decay": m * m if kind == "adam" else m, "eps": m}


def _check(shape: torch.Size, a: dict) -> str | None:
    if len(shape) not in (1, 2):
        return f"μP's schemes fill Linear weights (2-D) and biases (1-D); this tensor has {len(shape)} dimensions"
    if not a["base_width"] > 0:
        return f"needs base_width > 0, got {a['base_width']}"
    return None if a.get("scale", 1.0) >= 0 else f"needs scale >= 0, got {a['scale']}"


def _vector_check(shape: torch.Size, a: dict) -> str | None:
    return _check(shape, a) or (None if len(shape) == 1 else "mup_vector fills 1-D tensors (a norm's gain or shift)")


def _qkv_check(shape: torch.Size, a: dict) -> str | None:
    if len(shape) != 2 or shape[0] != 3 * shape[1]:
        return f"mup_qkv fills a fused q, k, v weight of shape (3n, n) (this one is {tuple(shape)})"
    if a["attn_power"] != 1:
        return ("μP's attention divides the logits by d, not √d: build the model with model.attn_scale=inv_d "
                f"(its logits are divided by d_head^{a['attn_power']})")
    return _check(shape, a)


def _qkv_std(shape, a):  # a third of the entries 0, the rest U(+-1/sqrt(n))
    return math.sqrt(2 / 3) / math.sqrt(3 * shape[1])


def _uniform_std(bound):
    return lambda shape, a: bound(shape, a) / math.sqrt(3)


DECLARED = (  # the schemes of this module; the registry (initbench.init.registry) collects them
    declare("mup_input", std_rule="scale/√(3·fan_in)",
            std=_uniform_std(input_bound), check=_check, optimizer_factors=_vector_factors)(mup_input_),
    declare("mup_hidden", std_rule="scale/√(3·n) (a weight); scale/√(3·n0) (a bias)",
            std=_uniform_std(hidden_bound), check=_check, optimizer_factors=_hidden_factors)(mup_hidden_),
    declare("mup_output", std_rule="scale·√n0/(√3·n) (a weight); scale/√(3·n0) (a bias)",
            std=_uniform_std(output_bound), check=_check, optimizer_factors=_output_factors)(mup_output_),
    declare("mup_qkv", std_rule="√(2/3)/√(3n): q rows 0, k and v rows U(±1/√n)", std=_qkv_std, check=_qkv_check,
            optimizer_factors=_hidden_factors)(mup_qkv_),
    declare("mup_embedding", std_rule="std", std=lambda s, a: a["std"], optimizer_factors=_embedding_factors)(
        mup_embedding_),
    declare("mup_vector", std_rule="0", std=lambda s, a: 0.0, mean=lambda s, a: a["val"], check=_vector_check,
            optimizer_factors=_vector_factors)(mup_vector_),
)
