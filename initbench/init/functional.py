"""Init functions torch.nn.init lacks, written in its house style.

Each fills one tensor in place under ``torch.no_grad()``, returns it, takes a ``generator=`` for all
its randomness and computes fans with torch's own ``_calculate_fan_in_and_fan_out``.
"""

import math

import torch
from torch import Tensor
from torch.nn.init import _calculate_fan_in_and_fan_out

from .schemes import bernoulli_std, declare, fans, ordered


def lecun_normal_(tensor: Tensor, gain: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    r"""Fill `tensor` from :math:`\mathcal{N}(0, \text{std}^2)`, std = gain / sqrt(fan_in).

    LeCun et al. (1998), "Efficient BackProp"; the init SELU networks need (Klambauer et al. 2017).
    A plain normal, as in torch's kaiming_normal_ (Keras and JAX use a truncated one).

    Examples:
        >>> w = torch.empty(3, 5)
        >>> lecun_normal_(w, generator=torch.Generator().manual_seed(0))
    """
    fan_in, _ = _calculate_fan_in_and_fan_out(tensor)
    with torch.no_grad():
        return tensor.normal_(0.0, gain / math.sqrt(fan_in), generator=generator)


def lecun_uniform_(tensor: Tensor, gain: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    r"""Fill `tensor` from :math:`\mathcal{U}(-b, b)`, :math:`b = \text{gain} \sqrt{3 / \text{fan\_in}}`.

    The uniform twin of :func:`lecun_normal_`: the same std, :math:`\text{gain} / \sqrt{\text{fan\_in}}`.

    Examples:
        >>> w = torch.empty(3, 5)
        >>> lecun_uniform_(w)
    """
    fan_in, _ = _calculate_fan_in_and_fan_out(tensor)
    bound = gain * math.sqrt(3.0 / fan_in)
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)


VARIANCE_MODES = ("fan_in", "fan_out", "fan_avg")
DISTRIBUTIONS = ("truncated_normal", "normal", "uniform")
TRUNCATED_STD = 0.87962566103423978  # the std of N(0, 1) truncated to [-2, 2]


def variance_scaling_(tensor: Tensor, scale: float = 1.0, mode: str = "fan_in",
                      distribution: str = "truncated_normal", generator: torch.Generator | None = None) -> Tensor:
    r"""Fill `tensor` with variance `scale` / n, n the fan of `mode` (fan_avg: their mean), drawn from
    `distribution`: a normal truncated at two of its stds and rescaled to that variance, a normal, or a
    uniform.

    JAX's ``jax.nn.initializers.variance_scaling`` and timm's ``variance_scaling_``: scale 1, fan_in,
    truncated_normal is their ``lecun_normal`` (ViT's patch embedding, ``vit_jax``).

    Examples:
        >>> w = torch.empty(64, 48)
        >>> variance_scaling_(w)
    """
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    variance = scale / {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
    with torch.no_grad():
        if distribution == "truncated_normal":
            torch.nn.init.trunc_normal_(tensor, 0.0, 1.0, -2.0, 2.0, generator=generator)
            return tensor.mul_(math.sqrt(variance) / TRUNCATED_STD)
        if distribution == "normal":
            return tensor.normal_(0.0, math.sqrt(variance), generator=generator)
        bound = math.sqrt(3 * variance)
        return tensor.uniform_(-bound, bound, generator=generator)


def identity_(tensor: Tensor, gain: float = 1.0) -> Tensor:
    r"""Fill a 2-D `tensor` of shape :math:`(kH, H)` with :math:`k` stacked identities times `gain`.

    Le, Jaitly & Hinton (2015), "A Simple Way to Initialize Recurrent Networks of Rectified Linear
    Units" (IRNN): recurrent weights :math:`W_{hh} = \text{gain} \cdot I`. For stacked gate weights
    (an LSTM's ``weight_hh`` is :math:`4H \times H`, a GRU's :math:`3H \times H`) each gate block gets
    its own identity. Unlike :func:`torch.nn.init.eye_`, a shape that is not a stack of squares is an
    error rather than a partial identity.

    Examples:
        >>> w = torch.empty(4 * 8, 8)  # an LSTM's weight_hh, hidden size 8
        >>> identity_(w)
    """
    if tensor.dim() != 2 or tensor.size(0) % tensor.size(1) != 0:
        raise ValueError(f"identity_ needs a 2-D (k*H, H) tensor, got shape {tuple(tensor.shape)}")
    rows, cols = tensor.shape
    with torch.no_grad():
        eye = torch.eye(cols, dtype=tensor.dtype, device=tensor.device)
        return tensor.copy_(eye.repeat(rows // cols, 1)).mul_(gain)


def lstm_forget_bias_(tensor: Tensor, value: float = 1.0) -> Tensor:
    r"""Fill an LSTM bias (:math:`4H`; gates i, f, g, o) with 0, and :math:`\text{value}/2` on gate f.

    Jozefowicz, Zaremba & Sutskever (2015), "An Empirical Exploration of Recurrent Network
    Architectures": a forget-gate bias of 1 helps LSTMs remember. PyTorch adds two biases,
    :math:`b_{ih} + b_{hh}`, so filling *both* with this function makes their sum `value` on the
    forget slice :math:`[H, 2H)` and 0 elsewhere; an init policy checks that both get it.

    Examples:
        >>> lstm = torch.nn.LSTM(10, 8)
        >>> lstm_forget_bias_(lstm.bias_ih_l0); lstm_forget_bias_(lstm.bias_hh_l0)
    """
    if tensor.dim() != 1 or tensor.numel() % 4 != 0:
        raise ValueError(f"lstm_forget_bias_ needs a 1-D tensor of 4*H, got shape {tuple(tensor.shape)}")
    hidden = tensor.numel() // 4
    with torch.no_grad():
        tensor.zero_()
        tensor[hidden : 2 * hidden].fill_(value / 2)
    return tensor


def d2l_bimodal_(
    tensor: Tensor, low: float = 5.0, high: float = 10.0, generator: torch.Generator | None = None
) -> Tensor:
    r"""Fill `tensor` with 0 where a draw from :math:`\mathcal{U}(-\text{high}, \text{high})` falls inside
    :math:`(-\text{low}, \text{low})`, else with that draw.

    The custom init of Dive into Deep Learning (PyTorch edition), section 4.2.3 (seed 002): with the
    defaults, zero with probability 1/2, else uniform on :math:`[-10, -5] \cup [5, 10]`;
    :math:`\text{std} = \sqrt{(\text{high}^3 - \text{low}^3) / (3\,\text{high})}`.

    Examples:
        >>> w = torch.empty(3, 4)
        >>> d2l_bimodal_(w)
    """
    with torch.no_grad():
        tensor.uniform_(-high, high, generator=generator)
        return tensor.mul_((tensor.abs() >= low).to(tensor.dtype))


def sparse_(tensor: Tensor, sparsity: float, std: float = 0.01, generator: torch.Generator | None = None) -> Tensor:
    r"""Fill a 2-D `tensor` from :math:`\mathcal{N}(0, \text{std}^2)`, then zero
    :math:`\lceil \text{sparsity} \cdot \text{rows} \rceil` entries of each column.

    Martens (2010), "Deep learning via Hessian-free optimization". The same as
    :func:`torch.nn.init.sparse_` except that the zeroed rows are drawn from `generator` too
    (torch's draws them with the global RNG, so a seeded generator alone would not fix them).

    Examples:
        >>> w = torch.empty(3, 5)
        >>> sparse_(w, sparsity=0.1)
    """
    if tensor.dim() != 2:
        raise ValueError("Only tensors with 2 dimensions are supported")
    rows, cols = tensor.shape
    num_zeros = math.ceil(sparsity * rows)
    with torch.no_grad():
        tensor.normal_(0.0, std, generator=generator)
        for col in range(cols):
            zero_rows = torch.randperm(rows, generator=generator)[:num_zeros]
            tensor[zero_rows.to(tensor.device), col] = 0
    return tensor


# --- their declarations: theory (mean, std) and the shapes they fill ---------------------------------------


def _lecun_std(shape, a):
    return a["gain"] / math.sqrt(fans(shape)[0])


def _variance_std(shape, a):
    fan_in, fan_out = fans(shape)
    return math.sqrt(a["scale"] / {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[a["mode"]])


def _variance_check(shape, a):
    if a["mode"] not in VARIANCE_MODES or a["distribution"] not in DISTRIBUTIONS:
        return (f"variance_scaling: mode {a['mode']!r} (valid: {', '.join(VARIANCE_MODES)}), distribution "
                f"{a['distribution']!r} (valid: {', '.join(DISTRIBUTIONS)})")
    return None if a["scale"] > 0 else f"variance_scaling: scale must be > 0, got {a['scale']}"


def _identity_check(shape, a):
    if len(shape) != 2 or shape[0] % shape[1] != 0:
        return "identity needs a square 2-D tensor or a stack of squares (k*H, H) such as an LSTM's weight_hh"
    return None


def _sparse_check(shape, a):
    if len(shape) != 2:
        return f"sparse fills 2-D tensors only (this one has {len(shape)} dimensions)"
    return None if 0 <= a["sparsity"] <= 1 else f"sparse: sparsity must be in [0, 1], got {a['sparsity']}"


def _forget_check(shape, a):
    if len(shape) != 1 or shape[0] % 4 != 0:
        return "lstm_forget_bias fills an LSTM's 1-D bias_ih/bias_hh of 4*hidden_size (gates i, f, g, o)"
    return None


DECLARED = (  # the schemes of this module; the registry (initbench.init.registry) collects them
    # torch's sparse_ draws its zero positions from the global RNG: ours takes them from the generator.
    declare("sparse", std_rule="std·√(1 − zeros per column / rows)",
            std=lambda s, a: a["std"] * math.sqrt(1 - math.ceil(a["sparsity"] * s[0]) / s[0]),
            check=_sparse_check)(sparse_),
    declare("lecun_normal", std_rule="gain/√fan_in", std=_lecun_std, fan_based=True)(lecun_normal_),
    declare("lecun_uniform", std_rule="gain/√fan_in", std=_lecun_std, fan_based=True)(lecun_uniform_),
    declare("variance_scaling", std_rule="√(scale/fan_mode)", std=_variance_std, fan_based=True,
            check=_variance_check)(variance_scaling_),
    declare("identity", std_rule="of the gain/0 pattern",
            std=lambda s, a: bernoulli_std(1 / s[1], a["gain"]), mean=lambda s, a: a["gain"] / s[1],
            check=_identity_check)(identity_),
    declare("lstm_forget_bias", std_rule="of the 0/(value/2) pattern",
            std=lambda s, a: bernoulli_std(0.25, a["value"] / 2),
            mean=lambda s, a: a["value"] / 8, check=_forget_check)(lstm_forget_bias_),
    declare("d2l_bimodal", std_rule="√((high³ − low³)/(3·high))",
            std=lambda s, a: math.sqrt((a["high"] ** 3 - a["low"] ** 3) / (3 * a["high"])),
            check=ordered("low", "high"))(d2l_bimodal_),
)
