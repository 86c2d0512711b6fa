r"""Inits that make a layer an isometry at init: delta-orthogonal (`delta_orthogonal`) and ZerO (`zero_init`).

Both fill a conv kernel (c_out, c_in, k...) with 0 but its centre tap, which gets a (c_out x c_in) matrix
M: the conv is then M applied at every position, as an (out x in) Linear with weight M would be.

- Xiao et al. (2018), "Dynamical Isometry and a Mean Field Theory of CNNs": M = gain * a random
  orthogonal matrix, c_out >= c_in, so M^T M = gain^2 I and a stack of such convs preserves norms.
- Zhao et al. (2021), "ZerO Initialization: Initializing Neural Networks with only Zeros and Ones"
  (Algorithm 1, as the authors' example_mnist.ipynb computes it): deterministic, M = the partial identity
  I[:out, :in] for out <= in, and M = H_p[:out, :in] / sqrt(p) for out > in, H_p the Sylvester
  Hadamard matrix of size p = 2^ceil(log2 out) (the paper's pseudocode prints c = 2^(-(m-1)/2); the code
  uses 2^(-m/2) = 1/sqrt(p), with which M^T M = I when out = p, and (out/p) I when out is a multiple of
  2^ceil(log2 in); other widths leave cross terms). Linear weights get M itself.

`delta_orthogonal` draws M with `torch.nn.init.orthogonal_` from the run's generator; a stack of such
convs with "same" padding and a linear activation preserves every input's norm exactly. `gain` is the
paper's σ_w (1 for tanh or linear nets at σ_b = 0, √2 for ReLU). The kernel must be odd (a centre
tap) and c_out ≥ c_in (orthonormal columns); a conv that is neither is refused before anything
changes, naming the parameter, its shape and `orthogonal` as the init for it. Grouped convs are not
handled separately (M spans c_out × c_in/groups). `zero_init` draws no random number: every seed gets
the same weights, and its policy also zeroes each residual branch's last layer (`*.branch.out.weight`),
so a ZerO residual net starts as its stem and head. Their report's expected std:
gain/√(c_out · k₁ · k₂ · ...) and that of the 0/1/Hadamard pattern.
"""

import math

import torch
from scipy.linalg import hadamard
from torch import Tensor
from torch.nn import init

from .schemes import declare


def _centre(shape: torch.Size) -> tuple:
    return (slice(None), slice(None), *(k // 2 for k in shape[2:]))


def _fill_centre(tensor: Tensor, matrix: Tensor) -> Tensor:
    """`tensor` (out, in) set to `matrix`, or (out, in, k...) set to 0 with `matrix` at the centre tap."""
    with torch.no_grad():
        if tensor.dim() == 2:
            return tensor.copy_(matrix)
        tensor.zero_()
        tensor[_centre(tensor.shape)] = matrix.to(tensor.dtype)
        return tensor


def _kernel_problem(scheme: str, shape: torch.Size, dims: tuple[int, ...] = (3, 4, 5)) -> str | None:
    """Why `scheme` cannot fill a weight of `shape`: not `dims`-D, or a kernel without a centre tap."""
    if len(shape) not in dims:
        what = "Linear (2-D) or Conv1d/2d/3d (3- to 5-D)" if 2 in dims else "Conv1d/2d/3d (3- to 5-D)"
        return f"{scheme} fills the weights of {what}, not a tensor of {len(shape)} dimensions"
    if any(k % 2 == 0 for k in shape[2:]):
        return f"{scheme} needs odd kernel sizes, which have a centre tap; the kernel is {tuple(shape[2:])}"
    return None


def _delta_check(shape: torch.Size, args: dict) -> str | None:
    problem = _kernel_problem("delta_orthogonal", shape)
    if problem is None and shape[0] < shape[1]:
        return (f"delta_orthogonal needs c_out >= c_in for orthonormal columns (c_out={shape[0]}, c_in={shape[1]}); "
                "use orthogonal for this layer")
    return problem


def _zero_check(shape: torch.Size, args: dict) -> str | None:
    return _kernel_problem("zero_init", shape, dims=(2, 3, 4, 5))


def delta_orthogonal_(tensor: Tensor, gain: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    r"""Fill a conv weight (c_out, c_in, k...) with 0, and its centre tap with `gain` times a random
    (c_out x c_in) matrix with orthonormal columns (c_out >= c_in, odd k): Xiao et al. (2018).

    Examples:
        >>> w = torch.empty(16, 8, 3, 3)
        >>> delta_orthogonal_(w, generator=torch.Generator().manual_seed(0))
    """
    problem = _delta_check(tensor.shape, {})
    if problem:
        raise ValueError(f"{problem}; got shape {tuple(tensor.shape)}")
    matrix = init.orthogonal_(torch.empty(tensor.shape[:2], dtype=tensor.dtype, device=tensor.device),
                              gain=gain, generator=generator)
    return _fill_centre(tensor, matrix)


def zero_matrix(rows: int, cols: int) -> Tensor:
    """ZerO's (rows x cols) matrix, float64: I[:rows, :cols] if rows <= cols, else H_p[:rows, :cols] / sqrt(p)."""
    if rows <= cols:
        return torch.eye(rows, cols, dtype=torch.float64)
    p = 2 ** math.ceil(math.log2(rows))
    return torch.from_numpy(hadamard(p)[:rows, :cols] / math.sqrt(p))


def zero_init_(tensor: Tensor) -> Tensor:
    r"""Fill a Linear weight (out, in) with ZerO's matrix (:func:`zero_matrix`), or a conv weight
    (c_out, c_in, k...) with 0 and that matrix at its centre tap (odd k): Zhao et al. (2021). No randomness.

    Examples:
        >>> w = torch.empty(256, 64)
        >>> zero_init_(w)  # H_256[:, :64] / 16: orthonormal columns
    """
    problem = _zero_check(tensor.shape, {})
    if problem:
        raise ValueError(f"{problem}; got shape {tuple(tensor.shape)}")
    return _fill_centre(tensor, zero_matrix(*tensor.shape[:2]).to(tensor.dtype))


# --- theory ------------------------------------------------------------------------------------------------


def _taps(shape) -> int:
    return math.prod(shape[2:])


def _zero_moments(shape) -> tuple[float, float]:
    """(mean, std) of the whole tensor: M's entries diluted by the kernel's zero taps."""
    matrix = zero_matrix(*shape[:2])
    mean = matrix.mean().item() / _taps(shape)
    square = matrix.square().mean().item() / _taps(shape)
    return mean, math.sqrt(max(square - mean * mean, 0.0))




# The centre tap's c_in orthonormal columns hold gain^2 c_in in squares, over c_out c_in K entries of the kernel.
DECLARED = (  # the schemes of this module; the registry (initbench.init.registry) collects them
    declare("delta_orthogonal", std_rule="gain/√(c_out·k₁·k₂·...)",
            std=lambda s, a: a["gain"] / math.sqrt(s[0] * _taps(s)),
            check=_delta_check)(delta_orthogonal_),
    declare("zero_init", std_rule="of the 0/1/Hadamard pattern",
            std=lambda s, a: _zero_moments(s)[1], mean=lambda s, a: _zero_moments(s)[0],
            check=_zero_check)(zero_init_),
)
