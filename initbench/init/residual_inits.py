"""Init schemes for residual networks and transformers: Fixup, GPT-2's scaled projections, mimetic attention.

They read what they need of the model as structure facts (initbench.init.structure): `num_branches` (L,
the residual branches), `branch_layers` (m, the weight layers of one branch) and `heads` (of the attention
module above the parameter). Declared under the names in `declare(...)` below; the policies that use
them are conf/init/{fixup,gpt2_scaled,mimetic}.yaml.

The residual policies (`fixup`, `skipinit`, `rezero`, `zero_residual`, `gpt2_scaled`, `mimetic`)
address a structure, not a model class: the convention that resmlp, resnet and the transformer share
(modules named `branch`, `out`, `out_norm`, `head`, `qkv`; `ScalarGate`s with `model.branch_gate=scalar`,
Fixup's `ScalarBias`es with `model.branch_bias=true`), so they apply to any model that follows it. An
init applied to a model without its structure is refused before anything changes, naming the rule
and what it looked for. Fixup's scalar rules are not optional: without the multipliers and biases it
is not Fixup (the paper's ablation loses accuracy without them). Where each applies:

| init | resmlp | resnet (`norm=batch`) | resnet (`norm=none`) | transformer |
|---|---|---|---|---|
| `fixup` | with gate + bias | with gate + bias | with gate + bias | with gate + bias (the ResNet recipe) |
| `skipinit`, `rezero` | with gate | with gate | with gate | with gate |
| `zero_residual` | refused (no `out_norm`) | yes | refused | refused |
| `gpt2_scaled` | yes | refused (convolutions) | refused | yes |
| `mimetic` | refused (no `qkv`) | refused | refused | yes |

Departures from the papers' code, on purpose:

- `fixup_normal` scales He by fan_in (He et al.'s forward rule); the official code takes the conv's
  fan_out. They differ only where a branch's first conv changes the width (the first block of
  resnet's stages 2 and 3); its `mode` arg picks either. The stem is He normal (the official code
  leaves it at PyTorch's default).
- mimetic: the paper factors W_v W_out by SVD. A policy fills parameters one at a time, and the value
  rows (in `qkv`) and `out` are two parameters that would have to share one random Z; so W_v = c·I
  and W_out = (α₂Z − β₂I)/c, with c⁴ = β₂² + α₂²/d (the mean squared singular value of α₂Z − β₂I),
  which gives exactly the paper's product with factors of about the same size as the SVD's. Z is
  Gaussian, as the paper writes it. q and k are the paper's rule exactly, one Z_h per head.
- `zero_residual` follows torchvision (conv fan_out, head default); Goyal et al. only state γ = 0.

The report's expected std is the theory for every tensor these fill (Fixup's √(2/fan)·L^(−1/(2m−2)),
GPT-2's 0.02/√L, the moments of (α₂Z − β₂I)/c for mimetic's `out`), and empty for mimetic's `qkv`
(the SVD factors' spread has no closed form).
"""

import math

import torch
from torch import Tensor

from .schemes import declare, fans


def fixup_std(shape: torch.Size, num_branches: int, branch_layers: int, mode: str = "fan_in") -> float:
    """He's std sqrt(2 / fan_mode) times Fixup's L^(-1/(2m-2))."""
    fan = fans(shape)[0 if mode == "fan_in" else 1]
    return math.sqrt(2.0 / fan) * num_branches ** (-1.0 / (2 * branch_layers - 2))


def fixup_normal_(tensor: Tensor, num_branches: int, branch_layers: int, mode: str = "fan_in",
                  generator: torch.Generator | None = None) -> Tensor:
    r"""Fill a branch's weight from :math:`\mathcal{N}(0, \text{std}^2)`,
    :math:`\text{std} = \sqrt{2 / \text{fan\_mode}} \cdot L^{-1/(2m-2)}`.

    Zhang, Dauphin & Ma (2019), "Fixup Initialization: Residual Learning Without Normalization", rule 2:
    He init scaled so that L branches of m layers each change the output by O(1) per SGD step. The
    official code (hongyi-zhang/Fixup) takes fan_out of the conv; ``mode`` picks either.

    Examples:
        >>> w = torch.empty(64, 64)  # the first layer of one of L=50 two-layer branches: std sqrt(2/64)/sqrt(50)
        >>> fixup_normal_(w, num_branches=50, branch_layers=2)
    """
    if branch_layers < 2:
        raise ValueError(f"Fixup's scale L^(-1/(2m-2)) needs m >= 2 layers per branch, got m={branch_layers}")
    std = fixup_std(tensor.shape, num_branches, branch_layers, mode)
    with torch.no_grad():
        return tensor.normal_(0.0, std, generator=generator)


def branch_scaled_normal_(tensor: Tensor, num_branches: int, std: float = 0.02,
                          generator: torch.Generator | None = None) -> Tensor:
    r"""Fill `tensor` from :math:`\mathcal{N}(0, (\text{std} / \sqrt{L})^2)`, L = num_branches.

    Radford et al. (2019), "Language Models are Unsupervised Multitask Learners" (GPT-2), Sec. 2.3: the
    weights of the layers that write into the residual stream scaled by 1/sqrt(N), N residual layers;
    nanoGPT's ``c_proj`` rule, std 0.02 / sqrt(2 n_layer) (two branches per block).

    Examples:
        >>> w = torch.empty(64, 256)  # an MLP's output projection in a 6-block transformer (L = 12)
        >>> branch_scaled_normal_(w, num_branches=12)
    """
    with torch.no_grad():
        return tensor.normal_(0.0, std / math.sqrt(num_branches), generator=generator)


def _noisy_identity(size: int, alpha: float, beta: float, generator, like: Tensor) -> Tensor:
    """alpha Z + beta I, Z (size, size) with entries N(0, 1/size)."""
    z = torch.randn(size, size, generator=generator, dtype=like.dtype, device=like.device) / math.sqrt(size)
    return alpha * z + beta * torch.eye(size, dtype=like.dtype, device=like.device)


def value_scale(width: int, vo_alpha: float, vo_beta: float) -> float:
    """c with c^4 = beta^2 + alpha^2/width, the mean squared singular value of alpha Z - beta I: W_v = c I
    and W_out = (alpha Z - beta I) / c then have singular values of about the same size."""
    return (vo_beta**2 + vo_alpha**2 / width) ** 0.25


def mimetic_qkv_(tensor: Tensor, heads: int, qk_alpha: float = 0.7, qk_beta: float = 0.7, vo_alpha: float = 0.4,
                 vo_beta: float = 0.4, generator: torch.Generator | None = None) -> Tensor:
    r"""Fill a fused attention weight (3d, d), rows q, k, v with `heads` chunks of k = d/heads rows each.

    Trockman & Kolter (2023), "Mimetic Initialization of Self-Attention Layers": for each head h,
    :math:`W_{q,h}^\top W_{k,h}` (d x d, so that the logits are :math:`x_i^\top W_{q,h}^\top W_{k,h} x_j`) is
    the best rank-k approximation of :math:`\alpha_1 Z_h + \beta_1 I`, :math:`Z_h` with entries
    :math:`\mathcal{N}(0, 1/d)`: with :math:`U S V^\top` its SVD, :math:`W_{q,h} = (U_{:k} S_{:k}^{1/2})^\top`,
    :math:`W_{k,h} = S_{:k}^{1/2} V_{:k}^\top`. The value rows are :math:`c I` (:func:`value_scale`) and
    :func:`mimetic_out_` fills the output projection with :math:`(\alpha_2 Z - \beta_2 I) / c`, so that
    :math:`W_{out} W_v = \alpha_2 Z - \beta_2 I` exactly (the paper splits that product by SVD instead;
    two parameters filled one at a time cannot share Z).

    Examples:
        >>> w = torch.empty(3 * 64, 64)  # a 64-wide, 4-head attention's qkv weight
        >>> mimetic_qkv_(w, heads=4)
    """
    if tensor.dim() != 2 or tensor.shape[0] != 3 * tensor.shape[1] or tensor.shape[1] % heads:
        raise ValueError(f"mimetic_qkv_ needs a fused (3d, d) weight with d divisible by heads={heads}, "
                         f"got shape {tuple(tensor.shape)}")
    width = tensor.shape[1]
    k = width // heads
    with torch.no_grad():
        for h in range(heads):
            u, s, vh = torch.linalg.svd(_noisy_identity(width, qk_alpha, qk_beta, generator, tensor))
            root = s[:k].sqrt()
            tensor[h * k:(h + 1) * k] = (u[:, :k] * root).T
            tensor[width + h * k:width + (h + 1) * k] = root[:, None] * vh[:k]
        tensor[2 * width:] = torch.eye(width, dtype=tensor.dtype, device=tensor.device)
        tensor[2 * width:] *= value_scale(width, vo_alpha, vo_beta)
    return tensor


def mimetic_out_(tensor: Tensor, vo_alpha: float = 0.4, vo_beta: float = 0.4,
                 generator: torch.Generator | None = None) -> Tensor:
    r"""Fill an attention's square output projection with :math:`(\alpha_2 Z - \beta_2 I) / c`, Z with
    entries :math:`\mathcal{N}(0, 1/d)`; with :func:`mimetic_qkv_`'s value rows :math:`c I`, the product
    :math:`W_{out} W_v = \alpha_2 Z - \beta_2 I` (Trockman & Kolter 2023).

    Examples:
        >>> w = torch.empty(64, 64)
        >>> mimetic_out_(w)
    """
    if tensor.dim() != 2 or tensor.shape[0] != tensor.shape[1]:
        raise ValueError(f"mimetic_out_ needs a square 2-D weight, got shape {tuple(tensor.shape)}")
    width = tensor.shape[0]
    with torch.no_grad():
        target = _noisy_identity(width, vo_alpha, -vo_beta, generator, tensor)
        return tensor.copy_(target / value_scale(width, vo_alpha, vo_beta))


# --- registration, with the theory for the report -------------------------------------------------------


def _fixup_check(shape, a):
    return None if a["branch_layers"] >= 2 else (
        f"Fixup's scale L^(-1/(2m-2)) needs m >= 2 weight layers per branch; this model's branches have "
        f"m={a['branch_layers']}")


def _qkv_check(shape, a):
    if len(shape) != 2 or shape[0] != 3 * shape[1] or shape[1] % a["heads"]:
        return (f"mimetic_qkv fills a fused q, k, v weight of shape (3d, d) with d divisible by heads="
                f"{a['heads']} (this one is {tuple(shape)})")
    return _value_check(shape, a)


def _value_check(shape, a):
    if a["vo_alpha"] == 0 and a["vo_beta"] == 0:
        return "needs vo_alpha or vo_beta nonzero (W_out W_v = vo_alpha Z - vo_beta I would be 0)"
    return None


def _out_check(shape, a):
    if len(shape) != 2 or shape[0] != shape[1]:
        return f"mimetic_out fills a square attention output projection (this one is {tuple(shape)})"
    return _value_check(shape, a)


def _out_moments(shape, a):
    """(mean, std) of (alpha Z - beta I)/c: off-diagonal alpha z, diagonal alpha z - beta, z ~ N(0, 1/d)."""
    d, c = shape[0], value_scale(shape[0], a["vo_alpha"], a["vo_beta"])
    mean = -a["vo_beta"] / d
    square = (a["vo_alpha"] ** 2 + a["vo_beta"] ** 2) / d
    return mean / c, math.sqrt(max(square - mean**2, 0.0)) / c


DECLARED = (  # the schemes of this module; the registry (initbench.init.registry) collects them
    declare("fixup_normal", std_rule="√(2/fan_mode)·L^(−1/(2m−2))",
            std=lambda s, a: fixup_std(s, a["num_branches"], a["branch_layers"], a["mode"]),
            fan_based=True, check=_fixup_check)(fixup_normal_),
    declare("branch_scaled_normal", std_rule="std/√L",
            std=lambda s, a: a["std"] / math.sqrt(a["num_branches"]))(branch_scaled_normal_),
    declare("mimetic_qkv", check=_qkv_check)(mimetic_qkv_),  # the SVD factors' spread has no closed form: NaN
    declare("mimetic_out", std_rule="of (α₂Z − β₂I)/c",
            std=lambda s, a: _out_moments(s, a)[1], mean=lambda s, a: _out_moments(s, a)[0],
            check=_out_check)(mimetic_out_),
)
