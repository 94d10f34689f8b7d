"""Parameter counts by part, from the config."""

from __future__ import annotations

from ..config import GATED_FFNS, ModelConfig


def parameter_counts(cfg: ModelConfig) -> dict[str, int]:
    """Parameters of each part of the model (embedding, attention, ffn, norms, head) and the total."""
    norm_size = cfg.d_model * (2 if cfg.norm == "layernorm" else 1)  # LayerNorm has a bias
    attention = cfg.d_model * (cfg.q_dim + 2 * cfg.kv_dim) + cfg.q_dim * cfg.d_model
    attention += (cfg.q_dim + 2 * cfg.kv_dim) * cfg.qkv_bias + cfg.d_model * cfg.out_bias
    n_in = 2 if cfg.ffn in GATED_FFNS else 1  # gate and up, or up alone
    ffn = (n_in + 1) * cfg.d_model * cfg.ffn_hidden + (n_in * cfg.ffn_hidden + cfg.d_model) * cfg.mlp_bias
    counts = {
        "embedding": cfg.vocab_size * cfg.d_model,
        "attention": cfg.n_layers * attention,
        "ffn": cfg.n_layers * ffn,
        "norms": (2 * cfg.n_layers + 1) * norm_size,
        "lm_head": 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model,
    }
    counts["total"] = sum(counts.values())
    return counts
