"""Accounting for the other members: parameters by part (counted on the model), forward FLOPs (matmuls, as
analysis/flops.py counts the decoder's) and the bytes generation keeps.

An encoder-decoder's forward over S source and T target tokens costs the encoder's S tokens once, each decoder
block's cross-attention keys and values once per source token (the encoder output is projected once and kept), and
per target token the decoder's self-attention, its cross-attention queries, scores over S keys and output, the FFN
and the head. ViT adds its patch projection (C * P * P inputs per patch) and attends over N + 1 tokens.
"""

from __future__ import annotations

from ..config import GATED_FFNS, ModelConfig


def parameters_by_part(model) -> dict[str, int]:
    """Parameters grouped by the model's top-level modules (embed, positions, blocks, heads...), and the total."""
    counts: dict[str, int] = {}
    for name, p in model.named_parameters():
        part = name.split(".")[0]
        counts[part] = counts.get(part, 0) + p.numel()
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def _block(cfg: ModelConfig, tokens: int, keys: int) -> int:
    """Matmul FLOPs of one self-attention block: projections, Q K^T and weights x V over `keys`, the FFN."""
    proj = 2 * tokens * cfg.d_model * (cfg.q_dim + 2 * cfg.kv_dim) + 2 * tokens * cfg.q_dim * cfg.d_model
    attend = 2 * 2 * tokens * keys * cfg.q_dim
    ffn = 2 * tokens * (3 if cfg.ffn in GATED_FFNS else 2) * cfg.d_model * cfg.ffn_hidden
    return proj + attend + ffn


def member_forward_flops(cfg: ModelConfig, seq_len: int, target_len: int = 1, batch_size: int = 1) -> dict[str, int]:
    """Forward FLOPs (matmuls) of one batch: `seq_len` encoder tokens (or image tokens for ViT: N + 1), and for an
    encoder-decoder `target_len` decoder tokens."""
    D, B = cfg.d_model, batch_size
    if cfg.family == "vit":
        S = cfg.n_patches + 1
        parts = {
            "patch_embedding": 2 * B * cfg.n_patches * cfg.n_channels * cfg.patch_size**2 * D,
            "encoder": cfg.n_layers * B * _block(cfg, S, S),
            "head": 2 * B * D * cfg.n_classes if cfg.head == "classify" else 0,
        }
    elif cfg.family == "encoder":
        # local layers too: a dense mask still computes every score (SDPA does not skip masked keys)
        parts = {"encoder": cfg.n_layers * B * _block(cfg, seq_len, seq_len)}
        head = {"mlm": 2 * seq_len * (D * D + D * cfg.vocab_size), "classify": 2 * D * cfg.n_classes, "none": 0}
        parts["head"] = B * head[cfg.head] + (2 * B * D * D if cfg.pooler and cfg.head == "classify" else 0)
    elif cfg.family == "seq2seq":
        S, T = seq_len, target_len
        parts = {
            "encoder": cfg.n_layers * B * _block(cfg, S, S),
            "cross_kv_once": cfg.n_decoder_layers * B * 2 * 2 * S * D * cfg.kv_dim,
            "decoder_self": cfg.n_decoder_layers * B * _block(cfg, T, T),
            "decoder_cross": cfg.n_decoder_layers * B * (2 * 2 * T * D * cfg.q_dim + 2 * 2 * T * S * cfg.q_dim),
            "lm_head": 2 * B * T * D * cfg.vocab_size,
        }
    else:
        raise ValueError(f"member_forward_flops covers encoder, seq2seq and vit; use forward_flops for {cfg.family!r}")
    parts["total"] = sum(parts.values())
    return parts


def generation_cache_bytes(cfg: ModelConfig, source_len: int, target_len: int, bytes_per_value: int = 4) -> dict:
    """What encoder-decoder generation keeps per sequence: the cross-attention K/V of the source (once, all decoder
    blocks) and the decoder's self-attention cache."""
    per = 2 * cfg.n_decoder_layers * cfg.kv_dim * bytes_per_value  # k and v, every decoder block
    return {"cross_kv": per * source_len, "self_kv": per * target_len}
