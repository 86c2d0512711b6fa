"""InitReport: one row per parameter, what the theory expects and what the init produced."""

import math
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn

from .schemes import fans

REPORT_COLUMNS = (
    "param", "shape", "scheme", "fan_in", "fan_out", "expected_std", "mean", "std", "min", "max",
)  # fmt: skip
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

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def default_moments(module: nn.Module, role: str) -> tuple[float, float]:
    """(mean, std) of PyTorch's default init of `module`'s parameter `role`; NaNs where not known.

    Linear/Conv: kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in)), bias the same bound, so std
    1/sqrt(3 fan_in); RNN/LSTM/GRU: U(+-1/sqrt(hidden)); norms: weight 1, bias 0; Embedding: N(0, 1).
    """
    if isinstance(module, nn.Linear | nn.modules.conv._ConvNd) and role in ("weight", "bias"):
        if isinstance(module.weight, nn.parameter.UninitializedParameter):
            return math.nan, math.nan
        return 0.0, 1 / math.sqrt(3 * fans(module.weight.shape)[0])
    if isinstance(module, nn.Bilinear):
        return 0.0, 1 / math.sqrt(3 * module.weight.size(1))
    if isinstance(module, nn.RNNBase | nn.RNNCellBase):
        return 0.0, 1 / math.sqrt(3 * module.hidden_size)
    if isinstance(module, _NORMS) and role in ("weight", "bias"):
        return (1.0 if role == "weight" else 0.0), 0.0
    if isinstance(module, nn.Embedding) and role == "weight":
        return 0.0, 1.0
    return math.nan, math.nan


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
