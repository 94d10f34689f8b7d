"""Position information other than RoPE: absolute tables added to the embedding, and ALiBi's attention bias.

- sinusoidal (Vaswani et al. 2017, section 3.5): PE[p, 2i] = sin(p / 10000^(2i/D)), PE[p, 2i+1] = cos(p / 10000^(2i/D)).
  Computed on the fly from the positions, so there is no buffer to restore after a meta-device load.
- learned (GPT-2): an (max_seq_len, D) embedding table, a parameter like any other.
- ALiBi (Press et al. 2022): no embedding; head h adds -m_h * (query position - key position) to its scores, with
  slopes m_h = 2^(-8(h+1)/n) for n heads, n a power of two; otherwise the slopes of the nearest smaller power of two
  followed by every other slope of the next power of two (the rule of the paper's code, as HF BLOOM uses it).

Absolute positions count real tokens only: with an attention mask (left padding), a row's first real token is
position 0, as Hugging Face's GPT-2 generation does, so a padded row equals the same prompt alone.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SINUSOID_BASE = 10000.0


def sinusoidal_table(positions: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """(..., D) table of sines (even dims) and cosines (odd dims) for integer positions (...)."""
    exponents = torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim
    inv_freq = torch.exp(-math.log(SINUSOID_BASE) * exponents)  # (D/2,)
    angles = positions.float()[..., None] * inv_freq  # (..., D/2)
    table = torch.stack((angles.sin(), angles.cos()), dim=-1)  # (..., D/2, 2): sin, cos interleaved
    return table.flatten(-2).to(dtype)  # (..., D)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """(H,) float32 slopes, the geometric sequence of the ALiBi paper (interpolated for non-powers of two)."""

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    closest = 2 ** math.floor(math.log2(n_heads))
    slopes = power_of_two(closest)
    if closest < n_heads:
        slopes += power_of_two(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(
    slopes: torch.Tensor,  # (H,)
    query_pos: torch.Tensor,  # (T,), or (B, T) per row
    key_pos: torch.Tensor,  # (S,), or (B or 1, S)
    visible: torch.Tensor | None,  # bool (B or 1, 1, T, S); None: causal over query_pos/key_pos
    dtype: torch.dtype,
) -> torch.Tensor:  # (B or 1, H, T, S) float mask: the bias where visible, -inf elsewhere
    """ALiBi as an additive attention mask: -m_h * |pos(t) - pos(j)| for the keys each query may see (a causal
    query sees no later key, so this is the paper's -m_h * (pos(t) - pos(j)); a bidirectional one is symmetric)."""
    distance = (query_pos[..., :, None] - key_pos[..., None, :]).abs().float()  # (T, S) or (B, T, S)
    bias = -slopes.float()[:, None, None] * distance[..., None, :, :]  # (H, T, S) or (B, H, T, S)
    bias = bias if bias.dim() == 4 else bias[None]  # (B or 1, H, T, S)
    if visible is None:
        visible = (key_pos[..., None, :] <= query_pos[..., :, None])[..., None, :, :]  # (B or 1, 1, T, S)
        visible = visible if visible.dim() == 4 else visible[None]
    return torch.where(visible, bias, float("-inf")).to(dtype)


def absolute_positions(input_pos: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Positions to look up: (T,) as given, or (B, T) counting only the real tokens of each row before each slot."""
    if attention_mask is None:
        return input_pos
    counted = attention_mask.long().cumsum(-1) - 1  # (B, S): index of each slot among the row's real tokens
    if input_pos.dim() == 2:  # per-row positions
        return counted.gather(1, input_pos).clamp(min=0)  # (B, T)
    return counted[:, input_pos].clamp(min=0)  # (B, T)


class LearnedPositions(nn.Embedding):
    """GPT-2's table of absolute position vectors, (max_seq_len, D)."""

    def __init__(self, max_seq_len: int, dim: int) -> None:
        super().__init__(max_seq_len, dim)


# Where each kind of position acts (a test checks these names equal config.POSITIONS).
POSITION_KINDS: dict[str, str] = {
    "rope": "rotates q and k (layers/rope.py)",
    "alibi": "a per-head linear bias on the attention scores",
    "sinusoidal": "a fixed table added to the token embedding",
    "learned": "a trained table added to the token embedding",
    "none": "nothing: only the causal mask orders the tokens",
}
