"""Position information other than RoPE: absolute tables added to the embedding, and ALiBi's attention bias.

- sinusoidal (Vaswani et al. 2017, section 3.5): PE[p, 2i] = sin(p / 10000^(2i/D)), PE[p, 2i+1] = cos(p / 10000^(2i/D)).
  Computed on the fly from the positions, so there is no buffer to restore after a meta-device load.
- learned (GPT-2): an (max_seq_len, D) embedding table, a parameter like any other.
- learned_concat: a (max_seq_len, D/4) table concatenated with the token embedding's first 3D/4 dimensions instead of
  added to all D of them (the lab's add-vs-concatenate comparison).
- t5_relative (Raffel et al. 2020, T5): no embedding; each head adds a learned scalar per bucket of the key's offset
  from the query to its scores. Offsets below half the buckets get one bucket each, larger ones share logarithmically
  wider buckets up to `max_distance`; a bidirectional (encoder) bias gives keys before and after the query separate
  halves of the buckets, a causal one only looks back.
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


class PositionModule:
    """What a stack asks of its position module; each kind overrides the step it acts in, the others pass through.
    add: (B, T, D) embedding -> (B, T, D); bias_mask: bool visibility (B or 1, 1, T, S) -> the attention mask;
    rope: (T,) positions -> cos, sin (T, Dh) for q and k, or None."""

    absolute = False  # added to the embedding at each token's position (counted over real tokens only)

    def add(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x

    def bias_mask(self, query_pos, key_pos, visible, dtype):
        return visible

    def reset(self, device) -> None:
        """Recompute non-persistent buffers (after a meta-device load); most kinds have none."""

    def rope(self, positions: torch.Tensor, dtype: torch.dtype, local: bool = False):
        return None


class SinusoidalPositions(nn.Module, PositionModule):
    """The 2017 table, computed on the fly from the positions (no parameters, no buffer)."""

    absolute = True

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def add(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:  # (B, T, D), (T,) or (B, T)
        return x + sinusoidal_table(positions, self.dim, x.dtype)  # (B, T, D)


class AlibiPositions(nn.Module, PositionModule):
    """ALiBi's per-head linear bias on the scores, as an additive attention mask; the slopes are a non-persistent
    buffer (recomputed by `reset` after a meta-device load)."""

    def __init__(self, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.register_buffer("slopes", alibi_slopes(n_heads), persistent=False)  # (H,)

    def bias_mask(self, query_pos, key_pos, visible, dtype):  # -> (B or 1, H, T, S)
        return alibi_bias(self.slopes, query_pos, key_pos, visible, dtype)

    def reset(self, device) -> None:
        self.slopes = alibi_slopes(self.n_heads).to(device)


class LearnedPositions(nn.Embedding, PositionModule):
    """GPT-2's, BERT's and ViT's table of absolute position vectors, (max_seq_len, D)."""

    absolute = True

    def __init__(self, max_seq_len: int, dim: int) -> None:
        super().__init__(max_seq_len, dim)

    def add(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:  # (B, T, D), (T,) or (B, T)
        return x + self(positions)  # (B, T, D)


class ConcatPositions(nn.Embedding, PositionModule):
    """Positions concatenated instead of added: a learned (max_seq_len, D/4) table fills the last quarter of the
    embedding, [token (3D/4) ; position (D/4)], so position and token never share a dimension. The token table keeps
    its (V, D) shape (one embedding layout for every kind); its last D/4 columns go unused on the input side."""

    absolute = True

    def __init__(self, max_seq_len: int, dim: int) -> None:  # dim % 4 == 0: ModelConfig.validate checks it
        super().__init__(max_seq_len, dim // 4)

    def add(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:  # (B, T, D), (T,) or (B, T)
        pos = self(positions).expand(*x.shape[:-1], self.embedding_dim)  # (B, T, D/4)
        return torch.cat([x[..., : x.shape[-1] - self.embedding_dim], pos.to(x.dtype)], dim=-1)  # (B, T, D)


def relative_bucket(offset: torch.Tensor, bidirectional: bool, n_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's bucket of each (key position - query position) offset, as long integers in [0, n_buckets)."""
    bucket = torch.zeros_like(offset)
    if bidirectional:  # keys after the query take the upper half of the buckets
        n_buckets //= 2
        bucket = (offset > 0).long() * n_buckets
        distance = offset.abs()
    else:  # a causal query sees only keys at or before it
        distance = (-offset).clamp(min=0)
    exact = n_buckets // 2
    scaled = torch.log(distance.float() / exact) / math.log(max_distance / exact) * (n_buckets - exact)
    far = (exact + scaled.to(torch.long)).clamp(max=n_buckets - 1)  # only read where distance >= exact (finite)
    return bucket + torch.where(distance < exact, distance, far)


class RelativePositionBias(nn.Embedding, PositionModule):
    """T5's learned bias, a (buckets, H) table shared by every layer of a stack (its first layer owns it in HF)."""

    def __init__(self, n_buckets: int, max_distance: int, n_heads: int, bidirectional: bool) -> None:
        super().__init__(n_buckets, n_heads)
        self.max_distance, self.bidirectional = max_distance, bidirectional

    def bias_mask(
        self,
        query_pos: torch.Tensor,  # (T,)
        key_pos: torch.Tensor,  # (S,)
        visible: torch.Tensor | None,  # bool (B or 1, 1, T, S); None: causal over query_pos/key_pos
        dtype: torch.dtype,
    ) -> torch.Tensor:  # (B or 1, H, T, S) float mask: the bias where visible, -inf elsewhere
        offset = key_pos[None, :] - query_pos[:, None]  # (T, S)
        buckets = relative_bucket(offset, self.bidirectional, self.num_embeddings, self.max_distance)  # (T, S)
        bias = self(buckets).permute(2, 0, 1)[None]  # (T, S, H) -> (1, H, T, S)
        if visible is None:
            visible = (key_pos[None, :] <= query_pos[:, None])[None, None]  # (1, 1, T, S)
        return torch.where(visible, bias.float(), float("-inf")).to(dtype)


class NoPositions(nn.Module, PositionModule):
    """positions='none' in the encoder-family stacks: order comes from nothing (a bag of tokens), or the mask."""


class RotaryPositions(nn.Module, PositionModule):
    """RoPE for the encoder stacks (the decoder computes it inline, beside its cache). No parameters and no buffers:
    the frequencies are recomputed from the config per call, Dh/2 numbers. Local layers may use their own base."""

    def __init__(self, cfg) -> None:
        super().__init__()
        self.head_dim, self.scaling = cfg.head_dim, cfg.rope_scaling
        self.theta = {False: cfg.rope_theta, True: cfg.local_rope_theta or cfg.rope_theta}

    def rope(self, positions: torch.Tensor, dtype: torch.dtype, local: bool = False):  # (T,) -> (T, Dh) x2
        from .rope import inverse_frequencies, rope_cos_sin

        inv_freq, factor = inverse_frequencies(self.head_dim, self.theta[local], self.scaling)
        return rope_cos_sin(positions, inv_freq.to(positions.device), factor, dtype)


def make_positions(cfg, bidirectional: bool) -> nn.Module | None:
    """The module of a position kind that has parameters (a table or a bias), None for the others."""
    build = POSITION_MODULES.get(cfg.positions)
    return build(cfg, bidirectional) if build is not None else None


# The kinds built as modules, each a PositionModule (add / bias_mask / rope / reset); a new kind is one class and one
# entry here. Every stack builds its kind from here; the decoder applies RoPE itself (model.py), because its tables
# follow the KV cache (keys cached unrotated under a length-dependent scaling).
POSITION_MODULES = {
    "none": lambda cfg, bidirectional: NoPositions(),
    "sinusoidal": lambda cfg, bidirectional: SinusoidalPositions(cfg.d_model),
    "alibi": lambda cfg, bidirectional: AlibiPositions(cfg.n_heads),
    "rope": lambda cfg, bidirectional: RotaryPositions(cfg),
    "learned": lambda cfg, bidirectional: LearnedPositions(cfg.max_seq_len, cfg.d_model),
    "learned_concat": lambda cfg, bidirectional: ConcatPositions(cfg.max_seq_len, cfg.d_model),
    "t5_relative": lambda cfg, bidirectional: RelativePositionBias(
        cfg.relative_buckets, cfg.relative_max_distance, cfg.n_heads, bidirectional
    ),
}


# Where each kind of position acts (a test checks these names equal config.POSITIONS).
POSITION_KINDS: dict[str, str] = {
    "rope": "rotates q and k (layers/rope.py)",
    "alibi": "a per-head linear bias on the attention scores",
    "sinusoidal": "a fixed table added to the token embedding",
    "learned": "a trained table added to the token embedding",
    "none": "nothing: only the causal mask orders the tokens",
    "t5_relative": "a learned per-head bias on the scores for each bucket of key-query offsets (T5)",
    "learned_concat": "a trained table concatenated with the token embedding (its last quarter)",
}
