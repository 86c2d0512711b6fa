"""InitReport: one row per parameter, what the theory expects and what the init produced."""

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn

from .schemes import fans

REPORT_COLUMNS = (
    "param", "shape", "scheme", "fan_in", "fan_out", "expected_std", "mean", "std", "min", "max",
)
CSV_NAME = "init_report.csv"


def shape_text(shape: torch.Size) -> str:
    """'120x400' for a (120, 400) tensor; '()' for a scalar."""
    return "x".join(str(s) for s in shape) if len(shape) else "()"


def report_row(name: str, tensor: Tensor, scheme: str, expected_std: float) -> dict:
    """A report row: the theory given, the fans and the measured statistics of `tensor` (float64)."""
    fan_in, fan_out = fans(tensor.shape) if tensor.dim() >= 2 else (pd.NA, pd.NA)
    values = tensor.detach().double()
    empty = values.numel() == 0
    return {
        "param": name,
        "shape": shape_text(tensor.shape),
        "scheme": scheme,
        "fan_in": fan_in,
        "fan_out": fan_out,
        "expected_std": expected_std,
        "mean": math.nan if empty else values.mean().item(),
        "std": values.std().item() if values.numel() > 1 else math.nan,
        "min": math.nan if empty else values.min().item(),
        "max": math.nan if empty else values.max().item(),
    }


# --- PyTorch's own defaults (what reset_parameters does), for the report ------------------------------

# A tensor left at default is checked against the rule before its std is claimed: a model may re-init its
# layers in its constructor (nn.MultiheadAttention zeroes out_proj.bias, nn.Transformer applies xavier,
# torchvision's ResNet kaiming_normal), and then the rule says nothing. CHECK_Z standard errors: a tensor
# that truly follows the rule fails the mean or the std test with probability about 1e-5.
CHECK_Z = 4.5
_KURTOSIS = {"uniform": 1.8, "normal": 3.0}


@dataclass(frozen=True)
class DefaultRule:
    """PyTorch's init of one parameter: `kind` uniform (U(-scale, scale)), normal (N(0, scale^2)) or
    constant (= scale); then a `zeroed` fraction of it set to 0 (an nn.Embedding's padding row)."""

    kind: str
    scale: float
    zeroed: float = 0.0

    @property
    def drawn_std(self) -> float:
        """The std of the entries drawn (not zeroed)."""
        return {"uniform": self.scale / math.sqrt(3), "normal": self.scale, "constant": 0.0}[self.kind]

    def moments(self) -> tuple[float, float]:
        """(mean, std) of the whole tensor."""
        if self.kind == "constant":
            return self.scale, 0.0
        return 0.0, self.drawn_std * math.sqrt(1 - self.zeroed)

    def fits(self, tensor: Tensor) -> bool:
        """Whether `tensor` is consistent with this rule: equal to a constant; inside a uniform's bounds,
        mean and std (of the entries drawn) within CHECK_Z standard errors (std's: sqrt((kurtosis-1)/4n))."""
        values = tensor.detach().double().flatten()
        if self.kind == "constant":
            return bool((values == self.scale).all())
        if self.zeroed:
            values = values[values != 0]
        n = values.numel()
        if n == 0:
            return True
        if self.kind == "uniform" and values.abs().max().item() > self.scale * (1 + 1e-6):  # float32 rounding
            return False
        std = self.drawn_std
        if abs(values.mean().item()) > CHECK_Z * std / math.sqrt(n):
            return False
        return n < 2 or abs(values.std().item() / std - 1) <= CHECK_Z * math.sqrt((_KURTOSIS[self.kind] - 1) / (4 * n))


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def _reset_owner(module: nn.Module) -> type | None:
    """The class whose reset_parameters `module` runs: a subclass that overrides it has another default."""
    return next((cls for cls in type(module).__mro__ if "reset_parameters" in vars(cls)), None)


def _fan_in_bound(module: nn.Module) -> float:
    fan_in = fans(module.weight.shape)[0]
    return 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0


def default_rule(module: nn.Module, role: str) -> DefaultRule | None:
    """PyTorch's reset_parameters rule for `module`'s parameter `role`, None where not known.

    Linear/Conv: kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in)), bias the same bound; Bilinear:
    U(+-1/sqrt(in1)); RNN/LSTM/GRU and cells: U(+-1/sqrt(hidden)); norms: weight 1, bias 0; PReLU: its
    `init`; Embedding: N(0, 1), padding row 0. Only for modules whose class runs exactly that method.
    """
    owner = _reset_owner(module)
    if owner in (nn.Linear, nn.modules.conv._ConvNd) and role in ("weight", "bias"):
        return DefaultRule("uniform", _fan_in_bound(module))
    if owner is nn.Bilinear and role in ("weight", "bias"):
        return DefaultRule("uniform", 1 / math.sqrt(module.weight.size(1)))
    if owner in (nn.RNNBase, nn.RNNCellBase) and module.hidden_size > 0:
        return DefaultRule("uniform", 1 / math.sqrt(module.hidden_size))
    if owner in _NORMS and role in ("weight", "bias"):
        return DefaultRule("constant", 1.0 if role == "weight" else 0.0)
    if owner is nn.PReLU and role == "weight":
        return DefaultRule("constant", module.init)
    if owner is nn.Embedding and role == "weight":
        return DefaultRule("normal", 1.0, (module.padding_idx is not None) / module.num_embeddings)
    return None


def default_moments(module: nn.Module, role: str, tensor: Tensor | None = None) -> tuple[float, float]:
    """(mean, std) of PyTorch's default init of `module`'s parameter `role` (default_rule); NaNs where
    that rule is not known or where `tensor` (the parameter, or the slice of it, as it is) does not fit
    it: then its model re-initialized it, and the rule says nothing about it."""
    rule = default_rule(module, role)
    if rule is None or (tensor is not None and not rule.fits(tensor)):
        return math.nan, math.nan
    return rule.moments()


class InitReport:
    """What an init policy did to each parameter of a model.

    ``frame`` has exactly the columns param, shape, scheme, fan_in, fan_out, expected_std, mean,
    std, min, max (expected_std NaN where no theory applies; std is the sample std). ``scheme`` is a
    registry name, ``default`` (PyTorch's own init of this ``torch_version``, left as it was), a
    ``_target_`` path, ``name[f]+other[i,g,o]`` for per-gate rules, or ``...+lsuv`` after LSUV, whose
    per-layer trace is in ``lsuv`` (None for other policies).
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        policy: str = "",
        torch_version: str = torch.__version__,
        lsuv: pd.DataFrame | None = None,
    ):
        if tuple(frame.columns) != REPORT_COLUMNS:
            raise ValueError(f"InitReport columns must be {REPORT_COLUMNS}, got {tuple(frame.columns)}")
        self.frame = frame
        self.policy = policy
        self.torch_version = torch_version
        self.lsuv = lsuv

    @classmethod
    def from_rows(cls, rows: list[dict], **kwargs) -> "InitReport":
        frame = pd.DataFrame(rows, columns=list(REPORT_COLUMNS))
        frame = frame.astype({"fan_in": "Int64", "fan_out": "Int64", "expected_std": float})
        return cls(frame, **kwargs)

    def __len__(self) -> int:
        return len(self.frame)

    def to_csv(self, path: str | Path) -> Path:
        """Write the frame (no index) to `path`, or to `path`/init_report.csv if `path` is a folder."""
        path = Path(path)
        if path.is_dir():
            path = path / CSV_NAME
        self.frame.to_csv(path, index=False)
        return path

    def __str__(self) -> str:
        title = f"init policy {self.policy!r} (torch {self.torch_version}): {len(self)} parameters"
        table = self.frame.to_string(index=False, na_rep="-", float_format=lambda x: f"{x:.4g}")
        text = f"{title}\n{table}"
        if self.lsuv is not None:
            lsuv = self.lsuv.to_string(index=False, float_format=lambda x: f"{x:.4g}")
            text += f"\n\nLSUV, output variance per layer:\n{lsuv}"
        return text

    def __repr__(self) -> str:
        return f"<InitReport {self.policy!r}: {len(self)} parameters>"
