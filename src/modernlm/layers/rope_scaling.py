"""The RoPE scalings of long-context checkpoints: one function per kind, in a registry (transformers' spelling and
numbers: `ROPE_INIT_FUNCTIONS` in transformers.modeling_rope_utils).

Every kind maps (Dh, base, the scaling's keys, the current length) to the (Dh/2,) inverse frequencies and the factor
that multiplies cos and sin (the attention temperature: scores grow by its square). With theta_i = base^(-2i/Dh),
s the factor and L the original (training) length:
- default: theta_i
- linear (position interpolation, Chen et al. 2023): theta_i / s
- ntk (NTK-aware, bloc97): the base raised to base * s^(Dh/(Dh-2)): high frequencies barely move (extrapolated),
  the lowest one is divided by s (interpolated)
- dynamic (dynamic NTK, emozilla): ntk with s' = s * n/L - (s - 1) at the current length n (s' = 1 up to L), so a
  short input keeps the original frequencies; length-dependent
- ntk_by_parts (Peng et al. 2023, section 3.2): a ramp over the dimensions by how many turns their wavelength makes in
  L: more than beta_fast turns keeps theta_i, fewer than beta_slow divides it by s, a linear blend between
- yarn (Peng et al. 2023): ntk_by_parts, and cos/sin times 0.1 ln(s) + 1 (or mscale / mscale_all_dim's ratio)
- llama3 (Llama 3.1): wavelengths longer than L / low_freq_factor divided by s, shorter than L / high_freq_factor kept,
  a smooth blend between
- longrope (Ding et al. 2024, Phi-3): theta_i / short_factor_i up to L, theta_i / long_factor_i past it (searched
  per-dimension factors); cos/sin times sqrt(1 + ln(s) / ln(L)); length-dependent

Length-dependent kinds change every frequency when the length changes, so keys cached at an earlier length were
rotated with other frequencies: the model caches their keys unrotated and rotates the whole cache with the current
frequencies at each step (model.py), so a cached step equals a full recompute with the same rule.
Keys are checked in config.normalize_rope_scaling; here they are read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Frequencies = tuple[torch.Tensor, float]  # (Dh/2,) or (B, Dh/2) float64 inverse frequencies; cos/sin factor


def base_frequencies(head_dim: int, theta: float | torch.Tensor, device=None) -> torch.Tensor:
    """theta_i = base^(-2i/Dh), float64: (Dh/2,) for a number, (B, Dh/2) for a (B,) tensor of bases."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim  # (Dh/2,)
    if isinstance(theta, torch.Tensor):
        return 1.0 / theta.double()[..., None] ** exponents  # (..., Dh/2)
    return 1.0 / (theta**exponents)


def _default(head_dim: int, theta: float, s: dict[str, Any], length) -> Frequencies:
    return base_frequencies(head_dim, theta), 1.0


def _linear(head_dim: int, theta: float, s: dict[str, Any], length) -> Frequencies:
    return base_frequencies(head_dim, theta) / float(s["factor"]), 1.0


def _ntk(head_dim: int, theta: float, s: dict[str, Any], length) -> Frequencies:
    return base_frequencies(head_dim, theta * float(s["factor"]) ** (head_dim / (head_dim - 2))), 1.0


def _dynamic(head_dim: int, theta: float, s: dict[str, Any], length) -> Frequencies:
    """`length`: None (at most the original length) or a () / (B,) tensor of current lengths."""
    if length is None:
        return base_frequencies(head_dim, theta), 1.0
    factor, old = float(s["factor"]), float(s["original_max_position_embeddings"])
    n = length.double().clamp(min=old)  # () or (B,)
    base = theta * (factor * n / old - (factor - 1)) ** (head_dim / (head_dim - 2))  # () or (B,)
    return base_frequencies(head_dim, base, length.device), 1.0


def _ramp_blend(head_dim: int, theta: float, s: dict[str, Any]) -> torch.Tensor:
    """NTK-by-parts: theta_i kept where the wavelength turns more than beta_fast times in the original length, divided
    by the factor where fewer than beta_slow, linear in the dimension index between (YaRN's correction range)."""
    factor, old = float(s["factor"]), float(s["original_max_position_embeddings"])
    beta_fast, beta_slow = float(s.get("beta_fast") or 32.0), float(s.get("beta_slow") or 1.0)

    def dim_for_turns(turns: float) -> float:  # the dimension whose wavelength fits `turns` times in old
        return head_dim * math.log(old / (turns * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_for_turns(beta_fast), dim_for_turns(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)  # (Dh/2,)
    keep = 1 - ramp  # 1: extrapolate (keep theta_i), 0: interpolate (theta_i / factor)
    inv_freq = base_frequencies(head_dim, theta)
    return inv_freq / factor * (1 - keep) + inv_freq * keep


def _ntk_by_parts(head_dim: int, theta: float, s: dict[str, Any], length) -> Frequencies:
    return _ramp_blend(head_dim, theta, s), 1.0


def yarn_attention_factor(s: dict[str, Any]) -> float:
    """YaRN's cos/sin factor: `attention_factor` if given, else 0.1 ln(s) + 1 (DeepSeek's mscale ratio if both
    mscale and mscale_all_dim are set), 1 for s <= 1."""
    if s.get("attention_factor") is not None:
        return float(s["attention_factor"])
    factor = float(s["factor"])

    def mscale(m: float = 1.0) -> float:
        return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0

    if s.get("mscale") and s.get("mscale_all_dim"):
        return mscale(float(s["mscale"])) / mscale(float(s["mscale_all_dim"]))
    return mscale()


def _yarn(head_dim: int, theta: float, s: dict[str, Any], length) -> Frequencies:
    return _ramp_blend(head_dim, theta, s), yarn_attention_factor(s)


def _llama3(head_dim: int, theta: float, s: dict[str, Any], length) -> Frequencies:
    factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old = float(s["original_max_position_embeddings"])
    inv_freq = base_frequencies(head_dim, theta)
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old / low, inv_freq / factor, inv_freq)
    smooth = (old / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old / high) & (wavelen <= old / low)
    return torch.where(is_medium, blended, scaled), 1.0


def _longrope(head_dim: int, theta: float, s: dict[str, Any], length) -> Frequencies:
    """`length`: None (the short factors) or a () / (B,) tensor: the long factors where it exceeds the original."""
    factor, old = float(s["factor"]), float(s["original_max_position_embeddings"])
    attention = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(old))
    inv_freq = base_frequencies(head_dim, theta)
    short = inv_freq / torch.tensor(s["short_factor"], dtype=torch.float64)  # (Dh/2,)
    if length is None:
        return short, attention
    long = inv_freq / torch.tensor(s["long_factor"], dtype=torch.float64)
    is_long = (length > old)[..., None]  # (1,) or (B, 1)
    return torch.where(is_long, long.to(length.device), short.to(length.device)), attention  # (Dh/2,) or (B, Dh/2)


@dataclass(frozen=True)
class RopeScaling:
    frequencies: Callable[..., Frequencies]  # (head_dim, theta, scaling dict, length or None)
    length_dependent: bool = False  # the frequencies change with the current length (keys cached unrotated)


# The kinds (a test checks the names equal config.ROPE_SCALINGS and the numbers equal transformers').
ROPE_SCALINGS: dict[str, RopeScaling] = {
    "default": RopeScaling(_default),
    "linear": RopeScaling(_linear),
    "ntk": RopeScaling(_ntk),
    "dynamic": RopeScaling(_dynamic, length_dependent=True),
    "ntk_by_parts": RopeScaling(_ntk_by_parts),
    "yarn": RopeScaling(_yarn),
    "llama3": RopeScaling(_llama3),
    "longrope": RopeScaling(_longrope, length_dependent=True),
}


def kind_of(scaling: dict[str, Any] | None) -> str:
    return (scaling or {}).get("rope_type", "default")


def is_length_dependent(scaling: dict[str, Any] | None) -> bool:
    return ROPE_SCALINGS[kind_of(scaling)].length_dependent


def scaled_frequencies(
    head_dim: int, theta: float, scaling: dict[str, Any] | None, length: torch.Tensor | None = None
) -> Frequencies:
    """float64 inverse frequencies, (Dh/2,) or (B, Dh/2) for a (B,) `length`, and the cos/sin factor."""
    return ROPE_SCALINGS[kind_of(scaling)].frequencies(head_dim, theta, scaling or {}, length)
