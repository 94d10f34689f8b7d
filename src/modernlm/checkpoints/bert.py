"""BERT (`BertModel`, `BertForMaskedLM`, `BertForSequenceClassification`) directories: the config and the name table.

BERT is our encoder with learned absolute positions, token types, a LayerNorm over the summed embeddings, post-norm
blocks, exact GELU and biases everywhere; the MLM head's decoder is tied to the token embedding.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..config import ModelConfig
from .base import CheckpointError, bool_field

ARCHITECTURES = {"BertModel": "none", "BertForMaskedLM": "mlm", "BertForSequenceClassification": "classify"}
ACTIVATIONS = {"gelu": "gelu_erf", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu"}  # HF -> our ffn
SKIP = re.compile(r"(^|\.)embeddings\.position_ids$|^cls\.predictions\.decoder\.bias$")  # a buffer; an alias


def config_from_hf(hf: dict[str, Any], arch: str, where: str) -> ModelConfig:
    act = hf.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise CheckpointError(f"{where}: BERT hidden_act {act!r} is not supported; supported: {list(ACTIVATIONS)}")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(
            f"{where}: position_embedding_type={hf['position_embedding_type']!r} is not supported; only 'absolute'"
        )
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise CheckpointError(f"{where}: a BERT decoder (is_decoder / add_cross_attention) is not supported")
    head = ARCHITECTURES[arch]
    n_classes = len(hf.get("id2label") or {}) or hf.get("num_labels", 2) if head == "classify" else 0
    return ModelConfig(
        family="encoder",
        head=head,
        n_classes=n_classes,
        pooler=head != "mlm",
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        ffn=ACTIVATIONS[act],
        ffn_hidden=hf["intermediate_size"],
        norm="layernorm",
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        norm_placement="post",
        positions="learned",
        type_vocab_size=hf.get("type_vocab_size", 2),
        embed_norm=True,
        causal=False,
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        tie_embeddings=bool_field(hf, "tie_word_embeddings", True, where),
        max_seq_len=hf.get("max_position_embeddings", 512),
        extra={"architecture": arch},
    ).validate()


def mismatches(cfg: ModelConfig) -> list[str]:
    """The fields that keep an encoder config from being a BERT checkpoint (empty: it is one)."""
    needs = dict(norm="layernorm", norm_placement="post", positions="learned", embed_norm=True, pooling="cls")
    needs.update(qkv_bias=True, out_bias=True, mlp_bias=True)
    out = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in needs.items() if getattr(cfg, k) != v]
    if cfg.ffn not in ACTIVATIONS.values():
        out.append(f"ffn={cfg.ffn!r} (needs a plain MLP: gelu_erf, gelu or relu)")
    if cfg.n_kv_heads != cfg.n_heads or cfg.q_dim != cfg.d_model:
        out.append("grouped heads or head_dim * n_heads != d_model (BERT is plain MHA)")
    if cfg.head == "classify" and not cfg.pooler:
        out.append("a classify head without the pooler (BertForSequenceClassification has one)")
    return out


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    if mismatches(cfg):
        raise CheckpointError("cannot save as BERT: " + "; ".join(mismatches(cfg)))
    arch = {v: k for k, v in ARCHITECTURES.items()}[cfg.head]
    hf = {
        "architectures": [arch],
        "model_type": "bert",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.ffn_hidden,
        "hidden_act": {v: k for k, v in reversed(ACTIVATIONS.items())}[cfg.ffn],
        "layer_norm_eps": cfg.norm_eps,
        "max_position_embeddings": cfg.max_seq_len,
        "type_vocab_size": cfg.type_vocab_size,
        "position_embedding_type": "absolute",
        "hidden_dropout_prob": cfg.resid_dropout,
        "attention_probs_dropout_prob": cfg.attn_dropout,
        "tie_word_embeddings": cfg.tie_embeddings,
        "pad_token_id": 0,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    if cfg.head == "classify":
        hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.n_classes)}
        hf["label2id"] = {f"LABEL_{i}": i for i in range(cfg.n_classes)}
    return hf


def name_table(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(HF name, our name) pairs; `{i}` is the layer, `{t}` weight or bias."""
    p = "" if cfg.head == "none" else "bert."
    layer = p + "encoder.layer.{i}."
    table = [
        (p + "embeddings.word_embeddings.weight", "embed.weight"),
        (p + "embeddings.position_embeddings.weight", "positions.weight"),
        (p + "embeddings.token_type_embeddings.weight", "type_embed.weight"),
        (p + "embeddings.LayerNorm.{t}", "embed_norm.{t}"),
        *[(layer + f"attention.self.{hf}.{{t}}", f"blocks.{{i}}.attn.{q}_proj.{{t}}") for hf, q in _QKV],
        (layer + "attention.output.dense.{t}", "blocks.{i}.attn.o_proj.{t}"),
        (layer + "attention.output.LayerNorm.{t}", "blocks.{i}.attn_norm.{t}"),
        (layer + "intermediate.dense.{t}", "blocks.{i}.ffn.up_proj.{t}"),
        (layer + "output.dense.{t}", "blocks.{i}.ffn.down_proj.{t}"),
        (layer + "output.LayerNorm.{t}", "blocks.{i}.ffn_norm.{t}"),
        (p + "pooler.dense.{t}", "pooler.{t}"),
        ("cls.predictions.transform.dense.{t}", "mlm.dense.{t}"),
        ("cls.predictions.transform.LayerNorm.{t}", "mlm.norm.{t}"),
        ("cls.predictions.bias", "mlm.bias"),
        ("cls.predictions.decoder.weight", "mlm.decoder.weight"),
        ("classifier.{t}", "classifier.{t}"),
    ]
    return table


_QKV = (("query", "q"), ("key", "k"), ("value", "v"))
