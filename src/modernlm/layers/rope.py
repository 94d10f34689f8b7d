"""Rotary position embedding (RoPE) and the frequency scalings of long-context checkpoints.

Layout: the "rotate half" convention of Hugging Face checkpoints, where dimension i pairs with i + Dh/2.
Frequencies: theta_i = base^(-2i/Dh) (RoFormer); scalings change these frequencies (and, for YaRN, the magnitude):
- linear (position interpolation): theta_i / factor
- llama3 (Llama 3.1): long wavelengths divided by factor, short ones kept, a smooth ramp between
- yarn (YaRN, Peng et al. 2023): NTK-by-parts ramp between interpolation and extrapolation, cos/sin scaled by
  0.1 * ln(factor) + 1
"""

from __future__ import annotations

import math
from typing import Any

import torch


def inverse_frequencies(head_dim: int, theta: float, scaling: dict[str, Any] | None) -> tuple[torch.Tensor, float]:
    """The (Dh/2,) float32 angular frequencies and the factor that scales cos and sin."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    inv_freq = 1.0 / (theta**exponents)  # (Dh/2,)
    kind = (scaling or {}).get("rope_type", "default")
    attention_factor = 1.0
    if kind == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    elif kind == "llama3":
        inv_freq = _llama3_frequencies(inv_freq, scaling)
    elif kind == "yarn":
        inv_freq, attention_factor = _yarn_frequencies(inv_freq, head_dim, theta, scaling)
    return inv_freq.float(), attention_factor


def _llama3_frequencies(inv_freq: torch.Tensor, s: dict[str, Any]) -> torch.Tensor:
    factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old_len = float(s["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(is_medium, blended, scaled)


def _yarn_frequencies(
    inv_freq: torch.Tensor, head_dim: int, theta: float, s: dict[str, Any]
) -> tuple[torch.Tensor, float]:
    factor = float(s["factor"])
    old_len = float(s["original_max_position_embeddings"])
    beta_fast, beta_slow = float(s.get("beta_fast", 32.0)), float(s.get("beta_slow", 1.0))
    attention_factor = s.get("attention_factor")
    if attention_factor is None:
        attention_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0

    def dim_for_rotations(
        rotations: float,
    ) -> float:  # the dimension whose wavelength fits `rotations` times in old_len
        return head_dim * math.log(old_len / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_for_rotations(beta_fast), dim_for_rotations(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: extrapolate (keep the frequency), 0: interpolate (divide by factor)
    return inv_freq / factor * (1 - keep) + inv_freq * keep, float(attention_factor)


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
