"""Rotary position embedding (RoPE): the tables and the rotation; the frequency scalings of long-context checkpoints
are a registry in rope_scaling.py.

Layout: the "rotate half" convention of Hugging Face checkpoints, where dimension i pairs with i + Dh/2.
Frequencies: theta_i = base^(-2i/Dh) (RoFormer); scalings change these frequencies (and, for YaRN and LongRoPE, the
magnitude of cos and sin).
"""

from __future__ import annotations

from typing import Any

import torch

from .rope_scaling import scaled_frequencies


def inverse_frequencies(
    head_dim: int, theta: float, scaling: dict[str, Any] | None, length: torch.Tensor | None = None
) -> tuple[torch.Tensor, float]:
    """The (Dh/2,) float32 angular frequencies ((B, Dh/2) for a (B,) `length` of a length-dependent scaling) and the
    factor that scales cos and sin."""
    inv_freq, attention_factor = scaled_frequencies(head_dim, theta, scaling, length)
    return inv_freq.float(), attention_factor


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, attention_factor: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (T, Dh) for integer positions (T,), or (B, T, Dh) for per-row positions (B, T), in `dtype`."""
    angles = positions.float()[..., None] * inv_freq  # (T, Dh/2) or (B, T, Dh/2)
    angles = torch.cat((angles, angles), dim=-1)  # (T, Dh) or (B, T, Dh)
    return (angles.cos() * attention_factor).to(dtype), (angles.sin() * attention_factor).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., Dh) by cos and sin tables broadcastable to it, e.g. (B, heads, T, Dh) by (T, Dh):
    x * cos + rotate_half(x) * sin, where rotate_half(x) is (-x2, x1) for the halves x1, x2 of the head dimension."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _RopeFunction.apply(x, cos, sin)
    return _rotate(x, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, written half by half (no rotate_half tensor is built):
    out1 = x1 c1 - x2 s1,  out2 = x2 c2 + x1 s2."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    (c1, c2), (s1, s2) = cos.split(half, -1), sin.split(half, -1)  # (T, Dh/2) each
    return torch.cat((torch.addcmul(x1 * c1, x2, s1, value=-1.0), torch.addcmul(x2 * c2, x1, s2)), -1)


class _RopeFunction(torch.autograd.Function):
    """RoPE with its backward written out: the gradient of a rotation is the inverse rotation of the gradient, so
    the backward pass keeps no activations and runs the five ops of the forward pass (autograd through the
    cat/neg/mul/add form runs about twice as many, and slices and pads the gradient). cos and sin get no gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        ctx.x_dtype = x.dtype
        return _rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cos, sin = ctx.saved_tensors
        # d/dx1 = g1 c1 + g2 s2, d/dx2 = g2 c2 - g1 s1: the same rotation with the sine table's halves swapped and
        # negated (the rotation by -angle when the halves' tables are equal); the tables are (T, Dh), cheap to flip
        flipped = -sin.roll(sin.shape[-1] // 2, dims=-1)  # (-s2, -s1)
        return _rotate(grad, cos, flipped).to(ctx.x_dtype), None, None
