"""T5 (`T5ForConditionalGeneration`) directories: the config and the name table.

T5 is our encoder-decoder with pre-norm RMSNorm (no mean, no bias), T5's bucketed relative bias per stack, unscaled
attention scores (attn_scale 1.0), no biases, and a ReLU MLP (the original) or a gated-GELU FFN (v1.1). The original
ties the LM head to the shared embedding and scales the decoder output by d_model^-0.5 first (`output_scale`); v1.1
has its own head and no scaling. transformers >= 5 always ties, and records the scaling as `scale_decoder_outputs`.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from ..config import ModelConfig
from .base import CheckpointError, bool_field

ARCHITECTURES = {"T5ForConditionalGeneration": "lm"}
# feed_forward_proj -> our ffn (a gated FFN's "gelu" is the tanh approximation, as transformers maps it)
FFNS = {"relu": "relu", "gelu": "gelu_erf", "gelu_new": "gelu", "gated-gelu": "geglu", "gated-silu": "swiglu"}
SKIP = re.compile(r"^(encoder|decoder)\.embed_tokens\.weight$")  # aliases of shared.weight


def config_from_hf(hf: dict[str, Any], arch: str, where: str) -> ModelConfig:
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in FFNS:
        raise CheckpointError(f"{where}: T5 feed_forward_proj {proj!r} is not supported; supported: {list(FFNS)}")
    tied = bool_field(hf, "tie_word_embeddings", True, where)
    scaled = hf.get("scale_decoder_outputs", tied)
    return ModelConfig(
        family="seq2seq",
        vocab_size=hf["vocab_size"],
        d_model=hf["d_model"],
        n_layers=hf["num_layers"],
        n_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        n_heads=hf["num_heads"],
        head_dim=hf["d_kv"],
        ffn=FFNS[proj],
        ffn_hidden=hf["d_ff"],
        norm="rmsnorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        positions="t5_relative",
        relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128),
        attn_scale=1.0,
        output_scale=hf["d_model"] ** -0.5 if scaled else 1.0,
        tie_embeddings=tied,
        decoder_start_token_id=hf.get("decoder_start_token_id", hf.get("pad_token_id", 0)) or 0,
        max_seq_len=hf.get("n_positions", 512),
        dropout=hf.get("dropout_rate", 0.0),
        extra={"architecture": arch},
    ).validate()


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    scaled = math.isclose(cfg.output_scale, cfg.d_model**-0.5)
    needs = dict(norm="rmsnorm", positions="t5_relative", attn_scale=1.0, qkv_bias=False, out_bias=False)
    needs.update(mlp_bias=False, n_kv_heads=cfg.n_heads)
    bad = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in needs.items() if getattr(cfg, k) != v]
    if cfg.ffn not in FFNS.values():
        bad.append(f"ffn={cfg.ffn!r} (T5 has {sorted(set(FFNS.values()))})")
    if not scaled and cfg.output_scale != 1.0 or scaled and not cfg.tie_embeddings:
        bad.append(f"output_scale={cfg.output_scale} (T5 scales by d_model^-0.5 with a tied head, or not at all)")
    if bad:
        raise CheckpointError("cannot save as T5: " + "; ".join(bad))
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "is_encoder_decoder": True,
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "d_kv": cfg.head_dim,
        "d_ff": cfg.ffn_hidden,
        "num_layers": cfg.n_layers,
        "num_decoder_layers": cfg.n_decoder_layers,
        "num_heads": cfg.n_heads,
        "relative_attention_num_buckets": cfg.relative_buckets,
        "relative_attention_max_distance": cfg.relative_max_distance,
        "feed_forward_proj": {v: k for k, v in FFNS.items()}[cfg.ffn],
        "layer_norm_epsilon": cfg.norm_eps,
        "dropout_rate": cfg.resid_dropout,
        # scaled: tied, as the original; unscaled: the v1.1 spelling, with the head written out (see to_hf)
        "tie_word_embeddings": scaled,
        "decoder_start_token_id": cfg.decoder_start_token_id,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "n_positions": cfg.max_seq_len,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def to_ours(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


def to_hf(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An unscaled model is written untied (v1.1), its head a copy of the embedding when ours is tied."""
    if cfg.tie_embeddings and cfg.output_scale == 1.0:
        state["lm_head.weight"] = state["embed.weight"].clone()
    return state


def name_table(cfg: ModelConfig) -> list[tuple[str, str]]:
    ffn = (("wi_0", "gate"), ("wi_1", "up"), ("wo", "down")) if cfg.ffn in ("geglu", "swiglu") else _MLP
    table = [("shared.weight", "embed.weight"), ("lm_head.weight", "lm_head.weight")]
    for stack, ours, ffn_layer in (("encoder", "encoder", 1), ("decoder", "decoder", 2)):
        block = f"{stack}.block.{{i}}.layer."
        table += [(f"{block}0.SelfAttention.{p}.weight", f"{ours}.{{i}}.attn.{p}_proj.weight") for p in "qkvo"]
        table += [
            (f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", f"{stack[:3]}_positions.weight"),
            (f"{block}0.layer_norm.weight", f"{ours}.{{i}}.attn_norm.weight"),
            *[(f"{block}{ffn_layer}.DenseReluDense.{hf}.weight", f"{ours}.{{i}}.ffn.{p}_proj.weight") for hf, p in ffn],
            (f"{block}{ffn_layer}.layer_norm.weight", f"{ours}.{{i}}.ffn_norm.weight"),
            (f"{stack}.final_layer_norm.weight", f"{stack[:3]}_norm.weight"),
        ]
    table += [
        (f"decoder.block.{{i}}.layer.1.EncDecAttention.{p}.weight", f"decoder.{{i}}.cross_attn.{p}_proj.weight")
        for p in "qkvo"
    ]
    table.append(("decoder.block.{i}.layer.1.layer_norm.weight", "decoder.{i}.cross_norm.weight"))
    return table


_MLP = (("wi", "up"), ("wo", "down"))
