"""Inits set by an activation's signal propagation: the edge of chaos (`critical`) and Kumar's (`kumar`).

**`critical`** (Schoenholz et al. 2017, "Deep Information Propagation"; Poole et al. 2016): every
Conv/Linear weight W ~ N(0, σ_w²/fan_in), every bias b ~ N(0, σ_b²) (the one scheme `critical` fills a
weight by σ_w and a 1-D bias by σ_b). In the mean-field limit a unit's pre-activation variance q
follows, with z ~ N(0, 1),

    q^{l+1} = σ_w² E[φ(√q^l z)²] + σ_b²        → a fixed point q*
    χ₁      = σ_w² E[φ'(√q* z)²]

χ₁ < 1 is the ordered phase (nearby inputs' correlations go to 1, gradients vanish with depth),
χ₁ > 1 the chaotic one (they decorrelate, gradients explode); at χ₁ = 1 the depth scales diverge and
the deepest trainable nets sit there. `mean_field(activation, sigma_w, sigma_b)` returns (`q*`, χ₁),
`critical_sigma_w(activation, sigma_b)` the σ_w where χ₁ = 1. `q*` is the fixed point the recursion
reaches from q⁰ = 1 (inputs are normalized to unit variance): the map is increasing in q, so it is
the nearest root of map(q) − q in the direction the recursion moves, found by bracketing and Brent's
method (0 or ∞ where the variance dies out or grows without bound; χ₁ is then its limit there). The
Gaussian expectations are Gauss–Legendre quadrature on each half-line, z < 0 and z > 0: every
activation here is smooth except at 0, so each half is smooth and the rule is good to about 1e-13,
where Gauss–Hermite over the whole line straddles the kink (200 nodes: SELU's χ₁ 1.6% off).
The critical σ_w (`critical_sigma_w`):

| activation | σ_b = 0 | σ_b² = 0.05 | σ_b = 0.5 | σ_b = 1 |
|---|---|---|---|---|
| linear | 1.0000 | 1.0000 | 1.0000 | 1.0000 |
| tanh | 1.0000 | 1.3270 | 1.5497 | 1.8556 |
| sigmoid | 10.1493 | 10.1552 | 10.1789 | 10.2650 |
| relu | 1.4142 | 1.4142 | 1.4142 | 1.4142 |
| leaky_relu | 1.4141 | 1.4141 | 1.4141 | 1.4141 |
| selu | 0.6905 | 0.9496 | 1.0496 | 1.1479 |
| gelu | none | none | 1.3999 | 1.4059 |

ReLU's χ₁ = σ_w²/2 whatever `q*`, so √2 at any σ_b (with σ_b > 0 the variance then grows without
bound: for ReLU only (√2, 0) is a true edge). GELU at small σ_b has none: from q⁰ = 1 the variance
falls to 0 (χ₁ = σ_w²/4) below σ_w ≈ 1.53 and grows without bound (χ₁ → σ_w²/2) above, so χ₁ leaps
over 1, and `critical_sigma_w` says so. tanh at σ_b² = 0.05 (the bias variance of Schoenholz et al.'s
experiments) gives σ_w² = 1.761.

**`kumar`** (Kumar 2017, "On weight initialization in deep neural networks"): for an activation g
differentiable at 0, a first-order expansion of g around 0 keeps the pre-activation variance through
depth when Var(w) = 1 / (N g'(0)² (1 + g(0)²)), N = fan_in: tanh 1/N (LeCun's), sigmoid
1/(N · 0.0625 · 1.25) = 12.8/N, gelu 4/N, linear 1/N. ReLU is not differentiable at 0; Kumar's result
for it is He's 2/N (leaky_relu, slope 0.01 as nn.LeakyReLU: 2/((1 + 0.01²) N)). SELU is kinked at 0
(slopes 1.05 and 1.76) and is refused, naming the activations the rule covers. Biases 0. Kumar's scale
keeps the forward variance but is not critical: `mean_field("sigmoid", 12.8 ** 0.5, 0)` has
χ₁ = 0.354, and sigmoid's edge is σ_w ≈ 10.15, a weight variance of 103/N.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from numpy.polynomial.legendre import leggauss
from scipy.optimize import brentq
from scipy.special import expit, ndtr
from torch import Tensor
from torch.nn.init import _calculate_fan_in_and_fan_out

from .schemes import declare, fans

# torch's SELU constants, and nn.LeakyReLU's default slope (the one initbench's models use).
SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
LEAKY_SLOPE = 0.01


@dataclass(frozen=True)
class Activation:
    """phi and phi' on numpy arrays; slope0 = phi'(0), None where phi is not differentiable at 0."""

    phi: Callable[[np.ndarray], np.ndarray]
    dphi: Callable[[np.ndarray], np.ndarray]
    slope0: float | None

    @property
    def value0(self) -> float:
        return float(self.phi(np.zeros(1))[0])


def _leaky(slope: float) -> Activation:
    return Activation(lambda x: np.where(x > 0, x, slope * x), lambda x: np.where(x > 0, 1.0, slope), None)


ACTIVATIONS = {
    "linear": Activation(lambda x: x, np.ones_like, 1.0),
    "tanh": Activation(np.tanh, lambda x: 1 - np.tanh(x) ** 2, 1.0),
    "sigmoid": Activation(expit, lambda x: expit(x) * (1 - expit(x)), 0.25),
    "relu": _leaky(0.0),
    "leaky_relu": _leaky(LEAKY_SLOPE),
    "selu": Activation(lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0))),
                       lambda x: SELU_SCALE * np.where(x > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(x, 0))), None),
    # nn.GELU's exact form x Phi(x): phi'(x) = Phi(x) + x N(x; 0, 1)
    "gelu": Activation(lambda x: x * ndtr(x), lambda x: ndtr(x) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi),
                       0.5),
}


def activation(name: str) -> Activation:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


# --- the mean-field recursion ----------------------------------------------------------------------------

# E[f(z)] as the sum over both half-lines of Gauss-Legendre rules on [0, 10] (the Gaussian tail beyond 10
# is below 1e-22). Every activation here is smooth but at 0, so each half's integrand is smooth and the rule
# is good to ~1e-13; Gauss-Hermite over the whole line straddles the kink (200 nodes: SELU's chi_1 1.6% off).
_X, _W = leggauss(128)
_NODES = 5.0 * (_X + 1)
_WEIGHTS = 5.0 * _W * np.exp(-_NODES**2 / 2) / math.sqrt(2 * math.pi)
Q_START = 1.0  # q^0: a unit-variance input (initbench normalizes every dataset to mean 0, std 1)
_HALVINGS = 200  # q* below Q_START * 2^-200 counts as 0; above Q_START * 2^200 as infinite


def gaussian_mean(f: Callable[[np.ndarray], np.ndarray], q: float) -> float:
    """E[f(sqrt(q) z)] for z ~ N(0, 1), by Gauss-Legendre quadrature on z < 0 and z > 0."""
    x = math.sqrt(q) * _NODES
    return float(_WEIGHTS @ (f(x) + f(-x)))


class MeanField(NamedTuple):
    q_star: float  # the variance the recursion settles at (inf: grows without bound)
    chi_1: float  # sigma_w^2 E[phi'(sqrt(q*) z)^2]: < 1 ordered, > 1 chaotic


def _fixed_point(act: Activation, sigma_w: float, sigma_b: float) -> float:
    """The q* that q^{l+1} = sigma_w^2 E[phi^2] + sigma_b^2 reaches from Q_START. The map is increasing
    in q, so the recursion moves monotonically to the nearest root of g(q) = map(q) - q that way."""

    def g(q: float) -> float:
        return sigma_w**2 * gaussian_mean(lambda x: act.phi(x) ** 2, q) + sigma_b**2 - q

    start = g(Q_START)
    if abs(start) <= 1e-12 * Q_START:
        return Q_START
    step = 0.5 if start < 0 else 2.0
    near = Q_START
    for _ in range(_HALVINGS):
        far = near * step
        if (g(far) >= 0) == (start < 0):  # the sign changed between near and far
            lo, hi = sorted((near, far))
            return brentq(g, lo, hi, xtol=lo * 1e-15, rtol=4 * np.finfo(float).eps)
        near = far
    return 0.0 if start < 0 else math.inf


def mean_field(activation_name: str, sigma_w: float, sigma_b: float) -> MeanField:
    """(q*, chi_1) of a deep net of `activation_name` at (sigma_w, sigma_b); see the module doc.
    Where q* is 0 or infinite (tanh with sigma_w < 1 = sigma_b; ReLU with sigma_w > sqrt 2) chi_1 is its
    limit there, taken at q = 2^-200 or 2^200 (at 0 a kink such as ReLU's counts both sides)."""
    act = activation(activation_name)
    q_star = _fixed_point(act, sigma_w, sigma_b)
    q = {0.0: Q_START * 2.0**-_HALVINGS, math.inf: Q_START * 2.0**_HALVINGS}.get(q_star, q_star)
    return MeanField(q_star, sigma_w**2 * gaussian_mean(lambda x: act.dphi(x) ** 2, q))


SIGMA_W_RANGE = (0.01, 100.0)


def critical_sigma_w(activation_name: str, sigma_b: float = 0.0) -> float:
    """The sigma_w where chi_1 = 1 at this sigma_b (tanh, sigma_b = 0: 1; ReLU: sqrt 2 for any sigma_b);
    ValueError if chi_1 does not cross 1 for sigma_w in SIGMA_W_RANGE, or leaps over 1 without reaching it."""

    def excess(sigma_w: float) -> float:
        return mean_field(activation_name, sigma_w, sigma_b).chi_1 - 1

    grid = np.geomspace(*SIGMA_W_RANGE, 81)
    lo, below = grid[0], excess(grid[0])
    for hi in grid[1:] if below < 0 else ():
        above = excess(hi)
        if above >= 0:  # the first crossing going up (far beyond it q* is large and the quadrature blurs)
            edge = brentq(excess, lo, hi, xtol=1e-12, rtol=4 * np.finfo(float).eps)
            if abs(excess(edge)) > 1e-6:  # e.g. GELU at small sigma_b: q* leaps from 0 to infinity here
                below, above = (excess(edge * (1 + d)) + 1 for d in (-1e-6, 1e-6))
                raise ValueError(f"{activation_name} at sigma_b={sigma_b}: chi_1 jumps from {below:.3f} to "
                                 f"{above:.3f} at sigma_w={edge:.4f}, where q* leaps from one fixed point to "
                                 "another, so it has no critical sigma_w")
            return edge
        lo = hi
    raise ValueError(f"{activation_name} at sigma_b={sigma_b}: chi_1 does not cross 1 for sigma_w in "
                     f"[{SIGMA_W_RANGE[0]}, {SIGMA_W_RANGE[1]}], so it has no critical sigma_w there")


def phase(chi_1: float, tol: float = 1e-3) -> str:
    """ordered, chaotic, or critical: chi_1 within `tol` of 1 (depth scales 1/|ln chi_1| over ~1/tol layers)."""
    return "critical" if abs(chi_1 - 1) <= tol else ("ordered" if chi_1 < 1 else "chaotic")


def criticality_note(policy, activation_name: str | None) -> str | None:
    """A line per (sigma_w, sigma_b) a `critical` rule of `policy` (an InitPolicy) uses: where it stands
    against the edge of chaos of the model's activation (None: unknown). None if no rule uses `critical`."""
    settings = dict.fromkeys((r.args["sigma_w"], r.args["sigma_b"]) for r in policy.rules if r.label == "critical")
    lines = []
    for sigma_w, sigma_b in settings:
        head = f"critical: sigma_w={sigma_w}, sigma_b={sigma_b}"
        if activation_name not in ACTIVATIONS:
            why = ("model.activation is not set" if activation_name is None
                   else f"{activation_name!r} is not one of {', '.join(ACTIVATIONS)}")
            lines.append(f"{head}; the model's activation is unknown ({why}), so no edge of chaos is computed")
            continue
        q_star, chi_1 = mean_field(activation_name, sigma_w, sigma_b)
        try:
            found = critical_sigma_w(activation_name, sigma_b)
            edge = f"{activation_name}'s critical sigma_w at sigma_b={sigma_b} is {found:.4f}"
        except ValueError as err:
            edge = str(err)
        lines.append(f"{head}, {activation_name}: q*={q_star:.4g}, chi_1={chi_1:.4f} ({phase(chi_1)}); {edge}")
    return "\n".join(lines) or None


# --- the schemes ------------------------------------------------------------------------------------------


def critical_(tensor: Tensor, sigma_w: float = 1.0, sigma_b: float = 0.0,
              generator: torch.Generator | None = None) -> Tensor:
    r"""Fill a layer's weight (2-D or more) from :math:`\mathcal{N}(0, \sigma_w^2/\text{fan\_in})`, its
    1-D bias from :math:`\mathcal{N}(0, \sigma_b^2)`: the mean-field net of Schoenholz et al. (2017).

    Examples:
        >>> w = torch.empty(64, 32)
        >>> critical_(w, sigma_w=1.5, generator=torch.Generator().manual_seed(0))
    """
    std = sigma_w / math.sqrt(_calculate_fan_in_and_fan_out(tensor)[0]) if tensor.dim() >= 2 else sigma_b
    with torch.no_grad():
        return tensor.normal_(0.0, std, generator=generator)


def kumar_variance(activation_name: str) -> float:
    """N Var(w): 1 / (g'(0)^2 (1 + g(0)^2)); ReLU 2 and leaky ReLU 2 / (1 + slope^2) (He et al. 2015)."""
    if activation_name in ("relu", "leaky_relu"):
        return 2.0 / (1 + (LEAKY_SLOPE if activation_name == "leaky_relu" else 0.0) ** 2)
    act = activation(activation_name)
    if act.slope0 is None:
        smooth = [n for n, a in ACTIVATIONS.items() if a.slope0 is not None]
        raise ValueError(f"kumar needs an activation differentiable at 0 (or ReLU), and {activation_name} is not; "
                         f"valid: {', '.join(smooth)}, relu, leaky_relu")
    return 1.0 / (act.slope0**2 * (1 + act.value0**2))


def kumar_normal_(tensor: Tensor, activation: str, generator: torch.Generator | None = None) -> Tensor:
    r"""Fill `tensor` from :math:`\mathcal{N}(0, v / \text{fan\_in})`, v = :func:`kumar_variance` of
    `activation`: tanh 1, sigmoid 12.8, gelu 4, relu 2 (Kumar 2017).

    Examples:
        >>> w = torch.empty(64, 32)
        >>> kumar_normal_(w, "sigmoid", generator=torch.Generator().manual_seed(0))
    """
    std = math.sqrt(kumar_variance(activation) / _calculate_fan_in_and_fan_out(tensor)[0])
    with torch.no_grad():
        return tensor.normal_(0.0, std, generator=generator)


def _critical_std(shape, a):
    return a["sigma_w"] / math.sqrt(fans(shape)[0]) if len(shape) >= 2 else a["sigma_b"]


def _critical_check(shape, a):
    if len(shape) == 0:
        return "critical fills weights (2-D or more) and 1-D biases, not a scalar"
    negative = [k for k in ("sigma_w", "sigma_b") if a[k] < 0]
    return f"needs {negative[0]} >= 0, got {a[negative[0]]}" if negative else None


def _kumar_check(shape, a):
    try:
        kumar_variance(a["activation"])
    except ValueError as err:
        return str(err)
    return None


DECLARED = (  # the schemes of this module; the registry (initbench.init.registry) collects them
    declare("critical", std_rule="σ_w/√fan_in (a weight); σ_b (a bias)",
            std=_critical_std, check=_critical_check)(critical_),
    declare("kumar", std_rule="√(v/fan_in), v = 1/(g'(0)² (1 + g(0)²))",
            std=lambda s, a: math.sqrt(kumar_variance(a["activation"]) / fans(s)[0]), fan_based=True,
            check=_kumar_check)(kumar_normal_),
)
