"""Parameter counts by part, from the config alone (a test checks them against every variant of the model)."""

from __future__ import annotations

from ..config import GATED_FFNS, ModelConfig


def norm_parameters(cfg: ModelConfig, dim: int | None = None) -> int:
    """One norm's parameters over `dim` (default d_model): a gain, and a bias for LayerNorm and BatchNorm (whose
    running statistics are buffers)."""
    return (dim or cfg.d_model) * (2 if cfg.norm in ("layernorm", "batchnorm") else 1)


def block_norms(cfg: ModelConfig) -> int:
    """Norms of width D in one block: two (before attention and FFN), one for a parallel block (both read it), four
    for a sandwich block (one more after each sub-layer)."""
    return 1 if cfg.parallel_block else 4 if cfg.sandwich_norm else 2


def attention_parameters(cfg: ModelConfig) -> int:
    """One attention layer: q (and k unless shared with q), v, o projections and their biases; with qk_norm, the norms
    of width head_dim over queries and keys."""
    kv_projections = 1 if cfg.shared_qk else 2  # shared_qk: no key projection (n_kv_heads == n_heads)
    in_width = cfg.q_dim + kv_projections * cfg.kv_dim
    qk_norms = 2 * norm_parameters(cfg, cfg.head_dim) if cfg.qk_norm else 0
    out = cfg.q_dim * cfg.d_model + cfg.d_model * cfg.out_bias
    return cfg.d_model * in_width + in_width * cfg.qkv_bias + out + qk_norms


def ffn_parameters(cfg: ModelConfig) -> int:
    """One feed-forward layer: gate and up (or up alone) and down, with biases if `mlp_bias`."""
    n_in = 2 if cfg.ffn in GATED_FFNS else 1
    return (n_in + 1) * cfg.d_model * cfg.ffn_hidden + (n_in * cfg.ffn_hidden + cfg.d_model) * cfg.mlp_bias


def position_parameters(cfg: ModelConfig) -> int:
    """A learned table (max_seq_len, D), or (max_seq_len, D/4) concatenated, or T5's relative bias (buckets, H); the
    other kinds have none."""
    return {
        "learned": cfg.max_seq_len * cfg.d_model,
        "learned_concat": cfg.max_seq_len * (cfg.d_model // 4),
        "t5_relative": cfg.relative_buckets * cfg.n_heads,
    }.get(cfg.positions, 0)


def parameter_counts(cfg: ModelConfig) -> dict[str, int]:
    """Parameters of each part of the model and the total. Norms: those of each block (block_norms), plus the final
    norm of a pre-norm stack (a post-norm stack ends in its last block's norm)."""
    n_norms = block_norms(cfg) * cfg.n_layers + (1 if cfg.norm_placement == "pre" else 0)
    counts = {
        "embedding": cfg.vocab_size * cfg.d_model,
        "positions": position_parameters(cfg),
        "attention": cfg.n_layers * attention_parameters(cfg),
        "ffn": cfg.n_layers * ffn_parameters(cfg),
        "norms": n_norms * norm_parameters(cfg),
        "lm_head": 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model,
    }
    if cfg.family == "vlm":  # the vision tower and the projector beside the decoder
        vision = ModelConfig.from_dict(cfg.vision, "vision")
        counts["vision"] = vision_parameters(vision)
        counts["projector"] = vision.d_model * cfg.pixel_shuffle**2 * cfg.d_model
    counts["total"] = sum(counts.values())
    counts["non_embedding"] = counts["total"] - counts["embedding"] - counts["positions"] - counts["lm_head"]
    return counts


def vision_parameters(cfg: ModelConfig) -> int:
    """A ViT tower: the patch projection (a strided convolution with bias), the class token if any, one learned
    position per token, its pre-norm blocks and final norm (no head)."""
    patch = cfg.n_channels * cfg.patch_size**2 * cfg.d_model + cfg.d_model
    tokens = cfg.n_patches + cfg.class_token
    blocks = cfg.n_layers * (attention_parameters(cfg) + ffn_parameters(cfg) + 2 * norm_parameters(cfg))
    return patch + cfg.class_token * cfg.d_model + tokens * cfg.d_model + blocks + norm_parameters(cfg)


def projection_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in, out) features of each projection of a block, by module name (those this config has)."""
    shapes = {"q_proj": (cfg.d_model, cfg.q_dim), "v_proj": (cfg.d_model, cfg.kv_dim)}
    shapes["o_proj"] = (cfg.q_dim, cfg.d_model)
    if not cfg.shared_qk:
        shapes["k_proj"] = (cfg.d_model, cfg.kv_dim)
    if cfg.ffn in GATED_FFNS:
        shapes["gate_proj"] = (cfg.d_model, cfg.ffn_hidden)
    shapes.update(up_proj=(cfg.d_model, cfg.ffn_hidden), down_proj=(cfg.ffn_hidden, cfg.d_model))
    return shapes


def adapter_parameters(cfg: ModelConfig, adapters: dict[str, int]) -> int:
    """LoRA's trainable parameters: r * (in + out) for each adapted projection ({name: r}) of every block."""
    shapes = projection_shapes(cfg)
    unknown = sorted(set(adapters) - set(shapes))
    if unknown:
        raise ValueError(f"no projection named {unknown} in this config; choose among {', '.join(shapes)}")
    return cfg.n_layers * sum(r * sum(shapes[name]) for name, r in adapters.items())
