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


# ---- training memory: the activations a member keeps for the backward pass ----------------------------------------
# Each block is the decoder's (analysis/memory.py's `layer_activation_bytes`, which names what each tensor is); what
# differs is around the blocks, and the masks:
# - a bool mask (an encoder's padding mask, (1 or B, 1, S, S)) is turned into a float one by each attention call
#   and kept with its inputs (e bytes a score), on top of the fused kernel's tensors;
# - a float bias that needs a gradient (T5's learned relative bias, (1, H, S, S), built once per stack and kept)
#   makes torch use its materialising ("math") kernel in every layer of that stack;
# - a decoder block adds cross-attention: its norm, q and its projection's input, the output, and the keys and
#   values of the S source tokens (projected once per block from the encoder output, which is kept once).
def member_activation_bytes(
    cfg: ModelConfig,
    batch_size: int,
    seq_len: int,
    target_len: int = 1,
    precision: str = "fp32",
    *,
    padded: bool = False,
    attention_kernel: str = "auto",
    device: str = "cuda",
) -> dict[str, int]:
    """Bytes kept between the forward and the backward pass of one training step of an encoder (MLM or
    classification head), an encoder-decoder (teacher-forced over `target_len` decoder tokens) or a ViT, by part.
    `seq_len`: tokens (encoder) or source tokens; a ViT's come from its image (N + 1). `padded`: an attention
    mask is given (its float copy is per sequence instead of shared). Checked against a measured step on CPU."""
    from .memory import PRECISIONS, _check, _norm_own

    _check("precision", precision, PRECISIONS)
    e, B, D = PRECISIONS[precision], batch_size, cfg.d_model
    if cfg.family == "vit":
        return _vit_activations(cfg, B, e, attention_kernel, device)
    if cfg.family == "encoder":
        return _encoder_activations(cfg, B, seq_len, e, padded, attention_kernel, device)
    if cfg.family != "seq2seq":
        raise ValueError("member_activation_bytes covers encoder, seq2seq and vit; for a decoder use activation_bytes")
    S, T = B * seq_len, B * target_len  # source and target tokens of the batch
    enc_kernel, enc_extra = _stack_kernel(cfg, B, seq_len, seq_len, e, padded, attention_kernel, device)
    dec_kernel, dec_extra = _stack_kernel(cfg, B, target_len, target_len, e, False, attention_kernel, device)
    enc = _layer(cfg, B, seq_len, precision, enc_kernel, device) + enc_extra
    dec = _layer(cfg, B, target_len, precision, dec_kernel, device) + dec_extra
    parts = {
        "encoder_blocks": cfg.n_layers * enc,
        "decoder_blocks": cfg.n_decoder_layers * (dec + _cross_attention(cfg, B, seq_len, target_len, e)),
        "embedding": 8 * (S + T),  # the ids, for the embedding's weight gradient
        "positions": _shared_positions(cfg, seq_len, e, B if padded else 1) + _shared_positions(cfg, target_len, e),
        # the encoder's final norm; its output, which every decoder block's key and value projections keep
        "encoder_output": S * (_norm_own(cfg, e) + D * e),
        "final_norm_and_head": T * (_norm_own(cfg, e) + D * e),
        "logits_and_loss": 2 * T * cfg.vocab_size * 4 + 8 * T,  # float32 logits, the log-softmax, the targets
    }
    parts["total"] = sum(parts.values())
    return parts


def _layer(cfg: ModelConfig, B: int, T: int, precision: str, kernel: str, device: str) -> int:
    from .memory import layer_activation_bytes

    return layer_activation_bytes(cfg, B, T, precision, attention_kernel=kernel, device=device)["total"]


def _stack_kernel(cfg, B, T, S, e, padded, attention_kernel, device) -> tuple[str, int]:
    """(the attention kernel of a stack's layers, extra bytes each layer keeps for its mask)."""
    from .memory import resolve_kernel

    kernel = resolve_kernel(cfg, attention_kernel, device)
    if cfg.positions == "t5_relative":  # a float bias that needs a gradient: the math kernel, bias kept once
        return ("math" if attention_kernel == "auto" else kernel), 0
    if cfg.family == "encoder" and kernel == "flash":  # the bool padding mask, as floats, per layer
        return kernel, (B if padded else 1) * T * S * e
    return kernel, 0


def _cross_attention(cfg: ModelConfig, B: int, S: int, T: int, e: int) -> int:
    """A decoder block's cross-attention (fused kernel): its norm, q_proj's input, q, the lse, the output (o_proj's
    input), the block's keys and values of the source. (A padded source's mask, B x S values, is left out.)"""
    from .memory import _norm_own

    per_target = _norm_own(cfg, e) + cfg.d_model * e + 2 * cfg.q_dim * e + cfg.n_heads * 4
    return B * T * per_target + 2 * B * S * cfg.kv_dim * e


def _shared_positions(cfg: ModelConfig, T: int, e: int, rows: int = 1) -> int:
    """Built once per stack and kept for the backward pass: the position ids; T5's bucket ids (its bias table's
    gradient) and its bool mask (`rows` of them: one per sequence when padded; the float bias itself is not kept, the
    math kernel adds it); RoPE's cos and sin (twice with ModernBERT's local base)."""
    if cfg.positions == "t5_relative":
        return 8 * T * T + rows * T * T
    if cfg.positions == "rope":
        return 2 * T * cfg.head_dim * e * (2 if cfg.local_window else 1) + 8 * T
    return 8 * T


def _encoder_activations(cfg, B, T, e, padded, attention_kernel, device) -> dict[str, int]:
    from .memory import PRECISIONS, _norm_own

    precision = next(k for k, v in PRECISIONS.items() if v == e)
    kernel, extra = _stack_kernel(cfg, B, T, T, e, padded, attention_kernel, device)
    N, D = B * T, cfg.d_model
    head = {
        # dense's input, the activation's input, the norm's own, the decoder's input; the logits, the
        # log-softmax and the targets
        "mlm": N * (D * e + D * e + _norm_own(cfg, e) + D * e) + 2 * N * cfg.vocab_size * 4 + 8 * N,
        "classify": _classify_head(cfg, B, T, e),
        "none": 0,
    }[cfg.head]
    parts = {
        "blocks": cfg.n_layers * (_layer(cfg, B, T, precision, kernel, device) + extra),
        "embedding": 8 * N * (2 if cfg.type_vocab_size else 1) + (N * _norm_own(cfg, e) if cfg.embed_norm else 0),
        "positions": _shared_positions(cfg, T, e),
        "final_norm": N * _norm_own(cfg, e) if cfg.norm_placement == "pre" else 0,
        # ModernBERT's first block has no norm of its own (the embedding norm's output goes straight in)
        "first_norm_skipped": -N * _norm_own(cfg, e) if cfg.skip_first_attn_norm else 0,
        "head": head,
    }
    parts["total"] = sum(parts.values())
    return parts


def _classify_head(cfg: ModelConfig, B: int, T: int, e: int) -> int:
    """[CLS] through the pooler (dense, tanh: its input, its output) and the classifier, or the mean over tokens
    (the weights (B, T, 1), the pooled state); the logits."""
    D = cfg.d_model
    if cfg.pooling == "mean":
        return B * T * e + B * D * e + B * cfg.n_classes * 4
    # the [CLS] row is a view: the whole final state (B, T, D) stays with it
    return B * T * D * e + (B * D * e if cfg.pooler else 0) + B * cfg.n_classes * 4


def _vit_activations(cfg, B, e, attention_kernel, device) -> dict[str, int]:
    from .memory import PRECISIONS, _norm_own, resolve_kernel

    precision = next(k for k, v in PRECISIONS.items() if v == e)
    T = cfg.n_patches + 1
    kernel = resolve_kernel(cfg, attention_kernel, device)
    parts = {
        "blocks": cfg.n_layers * _layer(cfg, B, T, precision, kernel, device),
        "positions": 8 * T,
        # the final norm's own; its output, whose [CLS] row (a view: the whole tensor stays) the classifier keeps
        "final_norm_and_head": B * T * (_norm_own(cfg, e) + cfg.d_model * e) + B * cfg.n_classes * 4,
    }
    parts["total"] = sum(parts.values())
    return parts


def member_training_memory(
    cfg: ModelConfig,
    batch_size: int,
    seq_len: int,
    target_len: int = 1,
    precision: str = "fp32",
    optimizer: str = "adamw",
    *,
    padded: bool = False,
    device: str = "cuda",
) -> dict[str, int]:
    """Bytes of one training step of a member, by part: float32 parameters, gradients and optimizer states (the
    parameters counted on the model built on the meta device), autocast's 16-bit weight copies, the activations."""
    import torch

    from ..loading import model_class
    from .memory import OPTIMIZER_STATES, PRECISIONS, _check

    _check("optimizer", optimizer, OPTIMIZER_STATES)
    with torch.device("meta"):
        n = parameters_by_part(model_class(cfg)(cfg))["total"]
    acts = member_activation_bytes(cfg, batch_size, seq_len, target_len, precision, padded=padded, device=device)
    parts = {
        "parameters": 4 * n,
        "gradients": 4 * n,
        "optimizer_states": 4 * n * OPTIMIZER_STATES[optimizer],
        "weight_copies": 0 if precision == "fp32" else PRECISIONS[precision] * n,
        "activations": acts["total"],
    }
    parts["total"] = sum(parts.values())
    return parts
