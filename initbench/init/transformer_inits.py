"""Init schemes today's transformer codebases ship: GPT-NeoX's small_init and wang_init, CaiT's LayerScale
constants, and the scaled Xavier of T-Fixup and DeepNet (timm's ViT inits are policies of torch's schemes
plus `variance_scaling`, initbench.init.functional).

What they need of the model beyond a tensor's shape, the policies give as parameters interpolated from the
model config: `width: ${model.width}` (the residual stream's width d), `depth: ${model.depth}` (the blocks
N, each an attention and an MLP branch), `alpha: ${model.residual_scale}` (DeepNet's α). The rules:

- `small_init` (Nguyen & Salazar 2019; GPT-NeoX's `small_init_init_method`): every weight N(0, 2/(5d)).
- `wang_init` (GPT-J and GPT-NeoX's `wang_init_method`): the projections into the residual stream
  N(0, (2/(N√d))²).
- `layerscale` (Touvron et al. 2021, CaiT): the per-channel gates λ = 0.1 for N ≤ 18, 1e-5 for N ≤ 24,
  1e-6 above.
- `t_fixup_xavier`, `t_fixup_qkv`, `t_fixup_embedding` (Huang et al. 2020, the encoder rules): the value,
  output and MLP weights Xavier uniform × 0.67 N^(−1/4), q and k plain Xavier; the embeddings N(0, 1/d).
- `deepnet_xavier`, `deepnet_qkv` (Wang et al. 2022, the encoder rules): the value, output and MLP weights
  Xavier normal × β = (8N)^(−1/4), q and k gain 1, with the model's α = (2N)^(1/4).

Xavier on the fused q, k, v weight (3d, d) is taken per d x d block, as the papers' separate projections
have it (xavier on the fused shape would count a fan-out of 3d).
"""

import math

import torch
from torch import Tensor
from torch.nn import init

from .schemes import declare, fans


def small_init_(tensor: Tensor, width: int, generator: torch.Generator | None = None) -> Tensor:
    r"""Fill `tensor` from :math:`\mathcal{N}(0, 2/(5d))`, d = `width` (the model's hidden size).

    Nguyen & Salazar (2019), "Transformers without Tears", Sec. 2.2 (SmallInit), as GPT-NeoX's
    ``small_init_init_method``: std :math:`\sqrt{2/(5d)}`, Xavier's :math:`\sqrt{2/(d_{in} + d_{out})}`
    for a d x 4d layer, given to every weight (below Xavier's :math:`\sqrt{1/d}` for a square one).

    Examples:
        >>> w = torch.empty(192, 64)  # a 64-wide attention's fused qkv
        >>> small_init_(w, width=64)
    """
    with torch.no_grad():
        return tensor.normal_(0.0, math.sqrt(2.0 / (5 * width)), generator=generator)


def wang_init_(tensor: Tensor, depth: int, width: int, generator: torch.Generator | None = None) -> Tensor:
    r"""Fill `tensor` from :math:`\mathcal{N}(0, (2 / (N \sqrt{d}))^2)`, N = `depth` (blocks), d = `width`.

    Ben Wang's rule in GPT-J and GPT-NeoX (``wang_init_method(n_layers, dim)``) for the layers that write
    into the residual stream (attention's output projection, the MLP's second layer): their sum over the
    2N branches stays small as N grows.

    Examples:
        >>> w = torch.empty(64, 256)  # the MLP output of a 6-block, 64-wide transformer: std 2/(6*8)
        >>> wang_init_(w, depth=6, width=64)
    """
    with torch.no_grad():
        return tensor.normal_(0.0, 2.0 / (depth * math.sqrt(width)), generator=generator)


def layerscale_eps(depth: int) -> float:
    """CaiT's initial LayerScale value by depth (Touvron et al. 2021, Sec. 3): 0.1 up to 18 blocks, 1e-5 up
    to 24, 1e-6 beyond."""
    return 0.1 if depth <= 18 else 1e-5 if depth <= 24 else 1e-6


def layerscale_(tensor: Tensor, depth: int) -> Tensor:
    r"""Fill a per-channel branch gate with :func:`layerscale_eps` (`depth`): y = x + diag(λ) branch(x)
    starts near the identity, the more so the deeper the net (Touvron et al. 2021, "Going deeper with
    image transformers").

    Examples:
        >>> g = torch.empty(64)
        >>> layerscale_(g, depth=12)
    """
    with torch.no_grad():
        return tensor.fill_(layerscale_eps(depth))


def t_fixup_gain(depth: int) -> float:
    """T-Fixup's encoder scale 0.67 N^(-1/4) (Huang et al. 2020, Sec. 3.3)."""
    return 0.67 * depth**-0.25


def deepnet_alpha(depth: int) -> float:
    """DeepNet's residual multiplier for an N-block encoder, (2N)^(1/4) (Wang et al. 2022, Table 1)."""
    return (2 * depth) ** 0.25


def deepnet_beta(depth: int) -> float:
    """DeepNet's init gain for an N-block encoder, (8N)^(-1/4) (Wang et al. 2022, Table 1)."""
    return (8 * depth) ** -0.25


def _fused_qkv_xavier_(tensor: Tensor, value_gain: float, normal: bool, generator) -> Tensor:
    """Xavier (uniform, or normal) on each d x d block of a fused (3d, d) q, k, v weight, the value block's
    gain `value_gain`, the query's and key's 1."""
    fill = init.xavier_normal_ if normal else init.xavier_uniform_
    width = tensor.shape[1]
    with torch.no_grad():
        for block, gain in enumerate((1.0, 1.0, value_gain)):
            fill(tensor[block * width:(block + 1) * width], gain=gain, generator=generator)
    return tensor


def t_fixup_xavier_(tensor: Tensor, depth: int, generator: torch.Generator | None = None) -> Tensor:
    r"""Xavier uniform times 0.67 N^(−1/4): an encoder's attention output and MLP weights under T-Fixup.

    Huang, Perez, Ba & Volkovs (2020), "Improving Transformer Optimization Through Better Initialization",
    Sec. 3.3: with these scales (and the value projection's, :func:`t_fixup_qkv_`) a transformer trains
    without LayerNorm and without warmup; as the official code, Xavier uniform, then scaled.

    Examples:
        >>> w = torch.empty(64, 256)
        >>> t_fixup_xavier_(w, depth=6)
    """
    return init.xavier_uniform_(tensor, gain=t_fixup_gain(depth), generator=generator)


def t_fixup_embedding_(tensor: Tensor, width: int, generator: torch.Generator | None = None) -> Tensor:
    """N(0, 1/d): T-Fixup's embeddings, std d^(-1/2) as its official code draws the token embeddings
    (Huang et al. 2020, Sec. 3.3)."""
    with torch.no_grad():
        return tensor.normal_(0.0, width**-0.5, generator=generator)


def t_fixup_qkv_(tensor: Tensor, depth: int, generator: torch.Generator | None = None) -> Tensor:
    """T-Fixup on a fused (3d, d) attention weight: q and k Xavier uniform, v Xavier uniform times
    0.67 N^(-1/4), each d x d block on its own."""
    return _fused_qkv_xavier_(tensor, t_fixup_gain(depth), normal=False, generator=generator)


def deepnet_xavier_(tensor: Tensor, depth: int, alpha: float, generator: torch.Generator | None = None) -> Tensor:
    r"""Xavier normal with gain β = (8N)^(−1/4): an encoder's attention output and MLP weights under DeepNet.

    Wang et al. (2022), "DeepNet: Scaling Transformers to 1,000 Layers", Fig. 2 and Table 1: post-LN
    blocks LN(α x + G(x)) with α = (2N)^(1/4) (the model's `residual_scale`, which `alpha` must equal:
    checked before anything is filled), the value, output and FFN weights Xavier normal with gain β.

    Examples:
        >>> w = torch.empty(64, 256)
        >>> deepnet_xavier_(w, depth=6, alpha=deepnet_alpha(6))
    """
    return init.xavier_normal_(tensor, gain=deepnet_beta(depth), generator=generator)


def deepnet_qkv_(tensor: Tensor, depth: int, alpha: float, generator: torch.Generator | None = None) -> Tensor:
    """DeepNet on a fused (3d, d) attention weight: q and k Xavier normal with gain 1, v with gain β."""
    return _fused_qkv_xavier_(tensor, deepnet_beta(depth), normal=True, generator=generator)


# --- registration, with the theory for the report -------------------------------------------------------


def _xavier_std(shape, gain: float) -> float:
    return gain * math.sqrt(2.0 / sum(fans(shape)))


def _fused_qkv_check(shape, a):
    if len(shape) != 2 or shape[0] != 3 * shape[1]:
        return f"fills a fused q, k, v weight of shape (3d, d) (this one is {tuple(shape)})"
    return None


def _fused_std(shape, value_gain: float) -> float:
    """The std over the whole fused weight: blocks of std sqrt(2/(2d)) = 1/sqrt(d), the value's times its gain."""
    return math.sqrt((2 + value_gain**2) / 3 / shape[1])


def _alpha_check(shape, a):
    want = deepnet_alpha(a["depth"])
    if not math.isclose(a["alpha"], want, rel_tol=1e-6):
        return (f"DeepNet's beta holds with alpha = (2N)^(1/4) = {want:.6g} for depth {a['depth']}, and the model's "
                f"residual_scale is {a['alpha']}; set model.residual_scale={want:.10g}")
    return None


def _deepnet_qkv_check(shape, a):
    return _fused_qkv_check(shape, a) or _alpha_check(shape, a)


DECLARED = (  # the schemes of this module; the registry (initbench.init.registry) collects them
    declare("small_init", std_rule="√(2/(5·width))", std=lambda s, a: math.sqrt(2.0 / (5 * a["width"])))(small_init_),
    declare("wang_init", std_rule="2/(depth·√width)",
            std=lambda s, a: 2.0 / (a["depth"] * math.sqrt(a["width"])))(wang_init_),
    declare("layerscale", std_rule="0", std=lambda s, a: 0.0,
            mean=lambda s, a: layerscale_eps(a["depth"]))(layerscale_),
    declare("t_fixup_xavier", std_rule="0.67·depth^(−1/4)·√(2/(fan_in + fan_out))",
            std=lambda s, a: _xavier_std(s, t_fixup_gain(a["depth"])), fan_based=True)(t_fixup_xavier_),
    declare("t_fixup_qkv", std_rule="per block √(2/(2d)), the value's × 0.67·depth^(−1/4)",
            std=lambda s, a: _fused_std(s, t_fixup_gain(a["depth"])), check=_fused_qkv_check)(t_fixup_qkv_),
    declare("t_fixup_embedding", std_rule="width^(−1/2)", std=lambda s, a: a["width"] ** -0.5)(t_fixup_embedding_),
    declare("deepnet_xavier", std_rule="(8·depth)^(−1/4)·√(2/(fan_in + fan_out))",
            std=lambda s, a: _xavier_std(s, deepnet_beta(a["depth"])), fan_based=True,
            check=_alpha_check)(deepnet_xavier_),
    declare("deepnet_qkv", std_rule="per block √(2/(2d)), the value's × (8·depth)^(−1/4)",
            std=lambda s, a: _fused_std(s, deepnet_beta(a["depth"])), check=_deepnet_qkv_check)(deepnet_qkv_),
)
