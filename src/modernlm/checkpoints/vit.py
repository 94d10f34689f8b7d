"""ViT (`ViTForImageClassification`) directories: the config and the name table.

ViT is our encoder over image patches: pre-norm LayerNorm blocks, exact GELU, biases everywhere, learned positions
(one per patch and the class token; HF stores them as (1, N + 1, D), we as the (N + 1, D) table), a final norm and
a linear classifier on the class token.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..config import ModelConfig
from .base import CheckpointError, bool_field

ARCHITECTURES = {"ViTForImageClassification": "classify"}
ACTIVATIONS = {"gelu": "gelu_erf", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu"}
SKIP = re.compile(r"^$")


def config_from_hf(hf: dict[str, Any], arch: str, where: str) -> ModelConfig:
    act = hf.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise CheckpointError(f"{where}: ViT hidden_act {act!r} is not supported; supported: {list(ACTIVATIONS)}")
    size, patch = hf.get("image_size", 224), hf.get("patch_size", 16)
    bias = bool_field(hf, "qkv_bias", True, where)
    return ModelConfig(
        family="vit",
        head="classify",
        n_classes=len(hf.get("id2label") or {}) or hf.get("num_labels", 2),
        vocab_size=1,  # no token vocabulary: the patches are the tokens
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        ffn=ACTIVATIONS[act],
        ffn_hidden=hf["intermediate_size"],
        norm="layernorm",
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        positions="learned",
        causal=False,
        qkv_bias=bias,
        out_bias=True,
        mlp_bias=True,
        image_size=size,
        patch_size=patch,
        n_channels=hf.get("num_channels", 3),
        max_seq_len=(size // patch) ** 2 + 1 if size % patch == 0 else 1,
        extra={"architecture": arch},
    ).validate()


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    needs = dict(norm="layernorm", norm_placement="pre", out_bias=True, mlp_bias=True, head="classify")
    bad = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in needs.items() if getattr(cfg, k) != v]
    if cfg.ffn not in ACTIVATIONS.values() or cfg.n_kv_heads != cfg.n_heads or cfg.q_dim != cfg.d_model:
        bad.append("ffn must be a plain MLP and attention plain MHA with n_heads * head_dim == d_model")
    if bad:
        raise CheckpointError("cannot save as ViT: " + "; ".join(bad))
    return {
        "architectures": ["ViTForImageClassification"],
        "model_type": "vit",
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.ffn_hidden,
        "hidden_act": {v: k for k, v in reversed(ACTIVATIONS.items())}[cfg.ffn],
        "layer_norm_eps": cfg.norm_eps,
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
        "num_channels": cfg.n_channels,
        "qkv_bias": cfg.qkv_bias,
        "hidden_dropout_prob": cfg.resid_dropout,
        "attention_probs_dropout_prob": cfg.attn_dropout,
        "id2label": {str(i): f"LABEL_{i}" for i in range(cfg.n_classes)},
        "label2id": {f"LABEL_{i}": i for i in range(cfg.n_classes)},
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def to_ours(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state["positions.weight"] = state["positions.weight"][0]  # (1, N + 1, D) -> (N + 1, D)
    return state


def to_hf(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state["positions.weight"] = state["positions.weight"][None]  # (N + 1, D) -> (1, N + 1, D)
    return state


def name_table(cfg: ModelConfig) -> list[tuple[str, str]]:
    layer = "vit.encoder.layer.{i}."
    return [
        ("vit.embeddings.cls_token", "cls_token"),
        ("vit.embeddings.position_embeddings", "positions.weight"),
        ("vit.embeddings.patch_embeddings.projection.{t}", "patch_embed.{t}"),
        *[(layer + f"attention.attention.{hf}.{{t}}", f"blocks.{{i}}.attn.{q}_proj.{{t}}") for hf, q in _QKV],
        (layer + "attention.output.dense.{t}", "blocks.{i}.attn.o_proj.{t}"),
        (layer + "layernorm_before.{t}", "blocks.{i}.attn_norm.{t}"),
        (layer + "intermediate.dense.{t}", "blocks.{i}.ffn.up_proj.{t}"),
        (layer + "output.dense.{t}", "blocks.{i}.ffn.down_proj.{t}"),
        (layer + "layernorm_after.{t}", "blocks.{i}.ffn_norm.{t}"),
        ("vit.layernorm.{t}", "norm.{t}"),
        ("classifier.{t}", "classifier.{t}"),
    ]


_QKV = (("query", "q"), ("key", "k"), ("value", "v"))
