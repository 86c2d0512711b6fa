"""A small transformer encoder classifier (ViT-style, Dosovitskiy et al. 2021) on image patches or rows.

Attention is written in plain tensor ops (no nn.MultiheadAttention, no scaled_dot_product_attention) so
that torch.func.vmap batches it. Each block is Residual(attention) then Residual(MLP): 2 * depth branches.
"""

import math

import torch
from torch import nn

from .residual import Residual, ScalarBias, choice, with_biases

TOKENS = ("patches", "rows")
NORMS = ("layer", "none")
NORM_POSITIONS = ("pre", "post")
POOLS = ("cls", "mean")
ATTN_SCALES = {"inv_sqrt_d": 0.5, "inv_d": 1.0}  # logits q k^T / d_head**power: Vaswani's 1/sqrt(d), muP's 1/d


def layer_norm(width: int, present: bool) -> nn.Module:
    return nn.LayerNorm(width) if present else nn.Identity()


class SelfAttention(nn.Module):
    """Multi-head self-attention as a residual branch: (`norm`) -> (`pre_qkv`) -> Linear `qkv` ->
    softmax(q k^T / d_head^p) v per head -> (`pre_out`) -> Linear `out`, p = 1/2 (attn_scale inv_sqrt_d) or
    1 (inv_d: muP's, Yang et al. 2021, Sec. 6).

    `qkv` (width -> 3 width) is fused, its rows ordered q, k, v, each split into `heads` contiguous
    chunks of d_head = width / heads rows (nanoGPT's c_attn layout). Absent options are nn.Identity.
    `heads` and `attn_power` (p) are attributes, which init policies read (initbench.init.structure).
    """

    def __init__(self, width: int, heads: int, pre_norm: bool = True, branch_bias: bool = False,
                 attn_scale: str = "inv_sqrt_d"):
        super().__init__()
        if width % heads:
            raise ValueError(f"model.width={width} must be divisible by model.heads={heads}")
        self.heads = heads
        self.attn_power = ATTN_SCALES[choice("attn_scale", attn_scale, tuple(ATTN_SCALES))]
        self.norm = layer_norm(width, pre_norm)
        self.pre_qkv = ScalarBias() if branch_bias else nn.Identity()
        self.qkv = nn.Linear(width, 3 * width)
        self.pre_out = ScalarBias() if branch_bias else nn.Identity()
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, width = x.shape
        d_head = width // self.heads
        q, k, v = (z.reshape(n, t, self.heads, d_head).transpose(1, 2)  # (n, heads, t, d_head)
                   for z in self.qkv(self.pre_qkv(self.norm(x))).split(width, dim=2))
        weights = (q @ k.transpose(-2, -1) / d_head**self.attn_power).softmax(-1)
        y = (weights @ v).transpose(1, 2).reshape(n, t, width)
        return self.out(self.pre_out(y))


class Block(nn.Module):
    """x -> `attn` (Residual) -> (`attn_norm`) -> `mlp` (Residual) -> (`mlp_norm`): LayerNorm after each
    residual sum for post-norm (Vaswani et al. 2017), inside the branches at their start for pre-norm, none
    for norm none. Each Residual is alpha x + gate(branch(x)), alpha = residual_scale (DeepNet's)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, norm: str, pre_norm: bool, branch_gate: str,
                 branch_bias: bool, residual_scale: float, attn_scale: str):
        super().__init__()
        pre, post = norm == "layer" and pre_norm, norm == "layer" and not pre_norm
        residual = {"branch_gate": branch_gate, "channels": width, "shortcut_scale": residual_scale}
        self.attn = Residual(SelfAttention(width, heads, pre, branch_bias, attn_scale), **residual)
        self.attn_norm = layer_norm(width, post)
        layers = [("norm", nn.LayerNorm(width))] if pre else []
        layers += [("inp", nn.Linear(width, mlp_ratio * width)), ("act", nn.GELU()),
                   ("out", nn.Linear(mlp_ratio * width, width))]
        self.mlp = Residual(with_biases(layers, branch_bias, ("inp", "act", "out")), **residual)
        self.mlp_norm = layer_norm(width, post)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp_norm(self.mlp(self.attn_norm(self.attn(x))))


class Transformer(nn.Module):
    """Inputs of `in_shape` (C, H, W) -> tokens -> Linear `embed` -> (+ class token `cls`) + positions `pos`
    -> `blocks` -> (`norm`) -> pool -> (`pre_head`) -> Linear `head`.

    tokens: `patches` (non-overlapping patch_size x patch_size patches, C p^2 features each) or `rows`
    (H steps of C W features: a sequence stored as (N, C, L, 1) gives L steps of C features). `cls` and
    `pos` are nn.Embeddings (one token; one row per position). `norm` (the final
    LayerNorm) is there for pre-norm; pool: the class token's output or the mean over tokens.
    norm: layer (LayerNorms where norm_position puts them) | none (no LayerNorm at all: ReZero, T-Fixup);
    residual_scale: DeepNet's alpha on every shortcut; attn_scale: see SelfAttention.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        depth: int = 4,
        width: int = 64,
        heads: int = 4,
        mlp_ratio: int = 4,
        tokens: str = "patches",
        patch_size: int = 2,
        norm_position: str = "pre",
        pool: str = "cls",
        branch_gate: str = "none",
        branch_bias: bool = False,
        norm: str = "layer",
        residual_scale: float = 1.0,
        attn_scale: str = "inv_sqrt_d",
    ):
        super().__init__()
        self.tokens, self.pool = choice("tokens", tokens, TOKENS), choice("pool", pool, POOLS)
        self.patch_size = patch_size
        in_channels, height, width_px = in_shape
        pre_norm = choice("norm_position", norm_position, NORM_POSITIONS) == "pre"
        choice("norm", norm, NORMS)
        if not math.isfinite(residual_scale) or residual_scale <= 0:
            raise ValueError(f"model.residual_scale={residual_scale} must be a finite number > 0")
        if min(depth, width, heads, mlp_ratio, patch_size) < 1:
            raise ValueError(f"model.depth, width, heads, mlp_ratio and patch_size must be >= 1, got {depth}, "
                             f"{width}, {heads}, {mlp_ratio}, {patch_size}")
        if tokens == "patches":
            if height % patch_size or width_px % patch_size:
                valid = [p for p in range(1, min(height, width_px) + 1) if not height % p and not width_px % p]
                raise ValueError(f"model.patch_size={patch_size} does not tile {height}x{width_px} images; "
                                 f"valid: {', '.join(map(str, valid))}")
            count, features = (height // patch_size) * (width_px // patch_size), in_channels * patch_size**2
        else:
            count, features = height, in_channels * width_px
        self.embed = nn.Linear(features, width)
        self.cls = nn.Embedding(1, width) if pool == "cls" else None
        self.pos = nn.Embedding(count + (pool == "cls"), width)
        self.blocks = nn.Sequential(*[Block(width, heads, mlp_ratio, norm, pre_norm, branch_gate, branch_bias,
                                            residual_scale, attn_scale) for _ in range(depth)])
        self.norm = layer_norm(width, norm == "layer" and pre_norm)
        self.pre_head = ScalarBias() if branch_bias else nn.Identity()
        self.head = nn.Linear(width, num_classes)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, T, features)."""
        if self.tokens == "rows":
            return x.permute(0, 2, 1, 3).flatten(2)
        n, c, h, w = x.shape
        p = self.patch_size
        patches = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)  # (N, H/p, W/p, C, p, p)
        return patches.reshape(n, (h // p) * (w // p), c * p * p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(self._tokens(x))
        if self.cls is not None:
            x = torch.cat([self.cls(x.new_zeros(x.shape[0], 1, dtype=torch.long)), x], dim=1)
        x = x + self.pos(torch.arange(x.shape[1], device=x.device))
        x = self.norm(self.blocks(x))
        x = x[:, 0] if self.pool == "cls" else x.mean(1)
        return self.head(self.pre_head(x))
