"""FLOPs by part, forward and training (a multiply-add counts 2), and model FLOPs utilisation.

Conventions, the ones `torch.utils.flop_counter.FlopCounterMode` follows (a test checks the matmul parts against it):
- Attention scores are counted over the full T x T matrix, as dense kernels compute them (the causal half is not
  skipped).
- Only matrix products are in `total`. Norms, activations, the gate product, residual adds, RoPE and the ALiBi bias are
  elementwise and left out (a few FLOPs per element of D or F; well under 1% of a block of useful width).
- `softmax` is reported on its own, 3 FLOPs per score (max-subtract, exp, divide; Hoffmann et al. 2022, appendix F),
  and is NOT in `total`: FlopCounterMode does not count it, so the comparison would be meaningless with it.
- Training = forward + backward, and the backward of a matmul is two matmuls of the same size (the gradient for the
  input and for the weight), so a step is 3x the forward. Activation checkpointing adds one more forward of the blocks
  (the LM head is not recomputed), less what torch's non-reentrant checkpoint skips: it stops recomputing once the
  last tensor the backward needs is back, so in a pre-norm block the FFN's down projection (whose output only joins
  the residual sum) is never recomputed. A post-norm block ends in a norm that needs that sum, so it is.
"""

from __future__ import annotations

from ..config import GATED_FFNS, ModelConfig

MATMUL_PARTS = (
    "qkv_projection",
    "attention_scores",
    "attention_values",
    "output_projection",
    "ffn",
    "lm_head",
)
SOFTMAX_FLOPS_PER_SCORE = 3


def forward_flops(cfg: ModelConfig, seq_len: int, batch_size: int = 1) -> dict[str, int]:
    """FLOPs of one forward pass over `batch_size` sequences of `seq_len` tokens, by part; `total` (matmuls only),
    `softmax` (apart), `total_with_softmax` and `per_token` (of `total`)."""
    tokens = batch_size * seq_len
    D, L = cfg.d_model, cfg.n_layers
    n_ffn_mats = 3 if cfg.ffn in GATED_FFNS else 2
    kv_projections = 1 if cfg.shared_qk else 2
    parts = {
        "qkv_projection": 2 * tokens * D * (cfg.q_dim + kv_projections * cfg.kv_dim) * L,
        "attention_scores": 2 * tokens * seq_len * cfg.q_dim * L,  # Q K^T
        "attention_values": 2 * tokens * seq_len * cfg.q_dim * L,  # weights x V
        "output_projection": 2 * tokens * cfg.q_dim * D * L,
        "ffn": 2 * tokens * n_ffn_mats * D * cfg.ffn_hidden * L,
        "lm_head": 2 * tokens * D * cfg.vocab_size,
    }
    parts["total"] = sum(parts.values())
    parts["softmax"] = SOFTMAX_FLOPS_PER_SCORE * batch_size * cfg.n_heads * seq_len * seq_len * L
    parts["total_with_softmax"] = parts["total"] + parts["softmax"]
    parts["per_token"] = parts["total"] // tokens
    return parts


def training_flops(
    cfg: ModelConfig, seq_len: int, batch_size: int = 1, activation_checkpointing: bool | None = None
) -> dict[str, int]:
    """FLOPs of one training step (forward + backward [+ the blocks' recompute]), by part, matmuls only."""
    recompute = cfg.activation_checkpointing if activation_checkpointing is None else activation_checkpointing
    fwd = forward_flops(cfg, seq_len, batch_size)
    parts = {part: 3 * fwd[part] for part in MATMUL_PARTS}
    if recompute:
        down = 2 * batch_size * seq_len * cfg.ffn_hidden * cfg.d_model * cfg.n_layers  # the FFN's last matmul
        parts["recompute"] = sum(fwd[p] for p in MATMUL_PARTS if p != "lm_head")
        parts["recompute"] -= down if cfg.norm_placement == "pre" and not cfg.sandwich_norm else 0  # a norm reads it
    parts["total"] = sum(parts.values())
    parts["softmax"] = 3 * fwd["softmax"]  # forward, its backward (about 2x), for reference only
    parts["per_token"] = parts["total"] // (batch_size * seq_len)
    return parts


def mfu(tokens_per_s: float, cfg: ModelConfig, peak_flops: float, seq_len: int | None = None) -> float:
    """Model FLOPs utilisation (PaLM, Chowdhery et al. 2022): achieved model FLOP/s over the hardware's peak.

    Counts the model's training FLOPs per token at `seq_len` (default max_seq_len), attention included, and never the
    recompute of activation checkpointing (that would be hardware FLOPs utilisation)."""
    if peak_flops <= 0:
        raise ValueError(f"peak_flops must be > 0 (the accelerator's peak FLOP/s), got {peak_flops}")
    per_token = training_flops(cfg, seq_len or cfg.max_seq_len, activation_checkpointing=False)["per_token"]
    return tokens_per_s * per_token / peak_flops
