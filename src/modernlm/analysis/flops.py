"""Forward FLOPs of a sequence, by part (a multiply-add counts 2). Attention scores are counted over the full T x T
matrix, as dense kernels compute them (the causal half is not skipped)."""

from __future__ import annotations

from ..config import GATED_FFNS, ModelConfig


def forward_flops(cfg: ModelConfig, seq_len: int, batch_size: int = 1) -> dict[str, int]:
    """FLOPs of one forward pass over `batch_size` sequences of `seq_len` tokens, by part, and `per_token`."""
    tokens = batch_size * seq_len
    D, L = cfg.d_model, cfg.n_layers
    n_ffn_mats = 3 if cfg.ffn in GATED_FFNS else 2
    parts = {
        "qkv_projection": 2 * tokens * D * (cfg.q_dim + 2 * cfg.kv_dim) * L,
        "attention_scores": 2 * tokens * seq_len * cfg.q_dim * L,  # Q K^T
        "attention_values": 2 * tokens * seq_len * cfg.q_dim * L,  # weights x V
        "output_projection": 2 * tokens * cfg.q_dim * D * L,
        "ffn": 2 * tokens * n_ffn_mats * D * cfg.ffn_hidden * L,
        "lm_head": 2 * tokens * D * cfg.vocab_size,
    }
    parts["total"] = sum(parts.values())
    parts["per_token"] = parts["total"] // tokens
    return parts
