"""ModernBERT (`ModernBertForMaskedLM`, `ModernBertModel`) directories: the config and the name table.

ModernBERT (Warner et al. 2024) is our encoder with RoPE (a larger base on global layers), pre-norm LayerNorm without
biases, GeGLU (exact GELU), no biases in attention and FFN, a norm over the embedding that stands in for layer 0's
attention norm, and local attention (each token sees `local_attention // 2` neighbours each side) on all layers but
every `global_attn_every_n_layers`-th. HF fuses q/k/v into `Wqkv` and the GeGLU's two inputs into `Wi`; they are
split here on the way in and fused on the way out.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..config import ModelConfig
from .base import CheckpointError, bool_field

ARCHITECTURES = {"ModernBertModel": "none", "ModernBertForMaskedLM": "mlm"}
ACTIVATIONS = {"gelu": "geglu_erf", "gelu_new": "geglu", "gelu_pytorch_tanh": "geglu", "silu": "swiglu"}
SKIP = re.compile(r"^$")


def config_from_hf(hf: dict[str, Any], arch: str, where: str) -> ModelConfig:
    act = hf.get("hidden_activation", "gelu")
    if act not in ACTIVATIONS or hf.get("classifier_activation", act) != act:
        raise CheckpointError(
            f"{where}: ModernBERT hidden_activation {act!r} / classifier_activation "
            f"{hf.get('classifier_activation')!r}: supported are equal values among {list(ACTIVATIONS)}"
        )
    if hf.get("classifier_bias", False) != hf.get("mlp_bias", False) or hf.get("decoder_bias", True) is not True:
        raise CheckpointError(f"{where}: classifier_bias must equal mlp_bias and decoder_bias be true")
    n = hf["num_hidden_layers"]
    every = hf.get("global_attn_every_n_layers", 3)
    types = hf.get("layer_types") or ["sliding_attention" if i % every else "full_attention" for i in range(n)]
    every = next((k for k in range(1, n + 1) if types == _layer_types(n, k)), None)
    if every is None:
        raise CheckpointError(f"{where}: layer_types {types} is not 'full every k-th layer from 0, sliding between'")
    rope = hf.get("rope_parameters") or {}
    full, local = rope.get("full_attention") or {}, rope.get("sliding_attention") or {}
    if {full.get("rope_type", "default"), local.get("rope_type", "default")} != {"default"}:
        raise CheckpointError(f"{where}: ModernBERT RoPE scaling {rope} is not supported")
    return ModelConfig(
        family="encoder",
        head=ARCHITECTURES[arch],
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=n,
        n_heads=hf["num_attention_heads"],
        ffn=ACTIVATIONS[act],
        ffn_hidden=hf["intermediate_size"],
        norm="layernorm" if hf.get("norm_bias", False) else "layernorm_nobias",
        norm_eps=hf.get("norm_eps", 1e-5),
        positions="rope",
        rope_theta=float(full.get("rope_theta", hf.get("global_rope_theta", 160000.0))),
        local_rope_theta=float(local.get("rope_theta", hf.get("local_rope_theta", 10000.0))),
        local_window=hf.get("local_attention", 128) if every > 1 else 0,
        global_every=every if every > 1 else 1,
        embed_norm=True,
        skip_first_attn_norm=True,
        causal=False,
        qkv_bias=bool_field(hf, "attention_bias", False, where),
        out_bias=bool_field(hf, "attention_bias", False, where),
        mlp_bias=bool_field(hf, "mlp_bias", False, where),
        tie_embeddings=bool_field(hf, "tie_word_embeddings", True, where),
        max_seq_len=hf.get("max_position_embeddings", 8192),
        attn_dropout=hf.get("attention_dropout", 0.0),
        resid_dropout=hf.get("mlp_dropout", 0.0),
        embed_dropout=hf.get("embedding_dropout", 0.0),
        extra={"architecture": arch, "special_tokens": {k: hf[k] for k in SPECIAL if hf.get(k) is not None}},
    ).validate()


SPECIAL = ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id")


def _layer_types(n: int, every: int) -> list[str]:
    return ["sliding_attention" if i % every else "full_attention" for i in range(n)]


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    needs = dict(positions="rope", norm_placement="pre", embed_norm=True, skip_first_attn_norm=True, pooler=False)
    bad = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in needs.items() if getattr(cfg, k) != v]
    if cfg.ffn not in ACTIVATIONS.values() or cfg.norm not in ("layernorm", "layernorm_nobias"):
        bad.append(f"ffn={cfg.ffn!r}, norm={cfg.norm!r} (needs a gated FFN and a LayerNorm)")
    if cfg.qkv_bias != cfg.out_bias or cfg.head not in ARCHITECTURES.values() or cfg.type_vocab_size:
        bad.append("q/k/v and output biases differ, a classify head, or token types")
    if bad:
        raise CheckpointError("cannot save as ModernBERT: " + "; ".join(bad))
    every = cfg.global_every if cfg.local_window else cfg.n_layers + 1
    return {
        "architectures": [{v: k for k, v in ARCHITECTURES.items()}[cfg.head]],
        "model_type": "modernbert",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.ffn_hidden,
        "hidden_activation": {v: k for k, v in reversed(ACTIVATIONS.items())}[cfg.ffn],
        "classifier_activation": {v: k for k, v in reversed(ACTIVATIONS.items())}[cfg.ffn],
        "norm_eps": cfg.norm_eps,
        "norm_bias": cfg.norm == "layernorm",
        "attention_bias": cfg.qkv_bias,
        "mlp_bias": cfg.mlp_bias,
        "classifier_bias": cfg.mlp_bias,
        "decoder_bias": True,
        "local_attention": cfg.local_window or 128,
        "layer_types": _layer_types(cfg.n_layers, every),
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "sliding_attention": {"rope_type": "default", "rope_theta": cfg.local_rope_theta or cfg.rope_theta},
        },
        "max_position_embeddings": cfg.max_seq_len,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_dropout": cfg.attn_dropout,
        "mlp_dropout": cfg.resid_dropout,
        "embedding_dropout": cfg.embed_dropout,
        "torch_dtype": str(dtype).removeprefix("torch."),
        # the special ids of the directory it came from; 0 for a model made here (transformers needs them in range)
        **{k: cfg.extra.get("special_tokens", {}).get(k, 0) for k in SPECIAL},
    }


def to_ours(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Split the fused projections: Wqkv's output rows are [q; k; v], Wi's are [the GELU's input; the gate]."""
    for name in [
        n for n in state if n.endswith((".attn.qkv.weight", ".attn.qkv.bias", ".ffn.wi.weight", ".ffn.wi.bias"))
    ]:
        fused, stem, t = state.pop(name), name.rsplit(".", 2)[0], name.rsplit(".", 1)[1]
        parts = ("q_proj", "k_proj", "v_proj") if ".qkv." in name else ("gate_proj", "up_proj")
        for part, chunk in zip(parts, fused.chunk(len(parts), dim=0), strict=True):
            state[f"{stem}.{part}.{t}"] = chunk.contiguous()
    return state


def to_hf(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for name in [n for n in state if ".attn.q_proj." in n or ".ffn.gate_proj." in n]:
        attn = ".attn.q_proj." in name
        parts = ("q_proj", "k_proj", "v_proj") if attn else ("gate_proj", "up_proj")
        stem, t = name.rsplit(".", 2)[0], name.rsplit(".", 1)[1]
        state[f"{stem}.{'qkv' if attn else 'wi'}.{t}"] = torch.cat([state.pop(f"{stem}.{p}.{t}") for p in parts])
    return state


def name_table(cfg: ModelConfig) -> list[tuple[str, str]]:
    p = "" if cfg.head == "none" else "model."
    layer = p + "layers.{i}."
    return [
        (p + "embeddings.tok_embeddings.weight", "embed.weight"),
        (p + "embeddings.norm.{t}", "embed_norm.{t}"),
        (layer + "attn_norm.{t}", "blocks.{i}.attn_norm.{t}"),
        (layer + "attn.Wqkv.{t}", "blocks.{i}.attn.qkv.{t}"),
        (layer + "attn.Wo.{t}", "blocks.{i}.attn.o_proj.{t}"),
        (layer + "mlp_norm.{t}", "blocks.{i}.ffn_norm.{t}"),
        (layer + "mlp.Wi.{t}", "blocks.{i}.ffn.wi.{t}"),
        (layer + "mlp.Wo.{t}", "blocks.{i}.ffn.down_proj.{t}"),
        (p + "final_norm.{t}", "norm.{t}"),
        ("head.dense.{t}", "mlm.dense.{t}"),
        ("head.norm.{t}", "mlm.norm.{t}"),
        ("decoder.weight", "mlm.decoder.weight"),
        ("decoder.bias", "mlm.bias"),
    ]
