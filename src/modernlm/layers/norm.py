"""Normalisation layers: RMSNorm (the modern block) and LayerNorm (the 2017 block), chosen by `ModelConfig.norm`; and
BatchNorm over tokens, for the lab's comparison (its statistics mix the batch's sequences and padding)."""

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
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return _RMSNormFunction.apply(x, self.weight, self.eps)
        return self.weight * _normalize(x, self.eps)[0]


def _normalize(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x / rms(x) in x's dtype, 1 / rms(x) (..., 1)), computed in float32 at least (float64 stays float64)."""
    x32 = x.to(torch.promote_types(x.dtype, torch.float32))
    r = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)  # (..., 1)
    return (x32 * r).to(x.dtype), r


class _RMSNormFunction(torch.autograd.Function):
    """RMSNorm with its backward written out: autograd through the five elementwise ops of the forward costs about
    four times LayerNorm's fused kernel on CPU. With x̂ = x·r, r = 1/rms(x) and y = w·x̂:
    dL/dx = r·(gw - x̂·mean(gw·x̂)) where gw = dL/dy·w, and dL/dw = sum over tokens of dL/dy·x̂.
    Keeps x̂ and r (D + 1 values per token) for the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xhat, r = _normalize(x, eps)
        ctx.save_for_backward(xhat, r, weight)
        return weight * xhat

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xhat, r, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            wide = torch.promote_types(xhat.dtype, torch.float32)
            gw, xh = (grad * weight).to(wide), xhat.to(wide)
            grad_x = (r * (gw - xh * (gw * xh).mean(-1, keepdim=True))).to(xhat.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = (grad * xhat).reshape(-1, xhat.shape[-1]).sum(0).to(weight.dtype)
        return grad_x, grad_w, None


class LayerNorm(nn.LayerNorm):
    """(x - mean) / std * g + b: torch's LayerNorm with the (dim, eps) signature of RMSNorm."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class LayerNormNoBias(LayerNorm):
    """(x - mean) / std * g: LayerNorm with a gain and no bias (ModernBERT)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        nn.LayerNorm.__init__(self, dim, eps=eps, bias=False)


class BatchNorm(nn.BatchNorm1d):
    """(x - mean) / std * g + b with the mean and variance of each feature over every token of the batch (B·T rows,
    padding included) in training, and over running averages (`momentum`) in evaluation (Ioffe & Szegedy 2015)."""

    def __init__(self, dim: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(dim, eps=eps, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., D)
        return super().forward(x.reshape(-1, x.shape[-1])).view(x.shape)  # (B·T, D) rows


NORM_CLASSES: dict[str, type[nn.Module]] = {
    "rmsnorm": RMSNorm,
    "layernorm": LayerNorm,
    "layernorm_nobias": LayerNormNoBias,
    "batchnorm": BatchNorm,
}


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    return NORM_CLASSES[kind](dim, eps)
