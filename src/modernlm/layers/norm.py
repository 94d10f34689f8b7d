"""Normalisation layers: RMSNorm (the modern block) and LayerNorm (the 2017 block), chosen by `ModelConfig.norm`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """x / rms(x) * g, computed in float32 and cast back (as Llama's reference does)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., D)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class LayerNorm(nn.LayerNorm):
    """(x - mean) / std * g + b: torch's LayerNorm with the (dim, eps) signature of RMSNorm."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


NORM_CLASSES: dict[str, type[nn.Module]] = {"rmsnorm": RMSNorm, "layernorm": LayerNorm}


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    return NORM_CLASSES[kind](dim, eps)
