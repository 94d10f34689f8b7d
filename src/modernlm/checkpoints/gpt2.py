"""GPT-2 (`GPT2LMHeadModel`) checkpoints in and out: the name table, the config, and the two layout changes.

GPT-2 stores its projections as `Conv1D`, weights (in, out), the transpose of `nn.Linear`'s (out, in), and fuses q, k, v
into one `c_attn` of width 3D. Everything else is a rename. Older checkpoints (the hub's `gpt2`) lack the
`transformer.` prefix and carry the causal-mask buffers `attn.bias` / `attn.masked_bias`, which are skipped.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..config import ModelConfig
from .base import CheckpointError, bool_field, positive_field
from .names import fill, pattern

ARCHITECTURE = "GPT2LMHeadModel"
ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu"}  # HF name -> our ffn

# (GPT-2 name, our name, layout): "same", "T" (Conv1D (in, out) <-> Linear (out, in)), or "qkv" (fused c_attn).
NAME_TABLE = [
    ("transformer.wte.weight", "embed.weight", "same"),
    ("transformer.wpe.weight", "pos_embed.weight", "same"),
    ("transformer.h.{i}.ln_1.{t}", "blocks.{i}.attn_norm.{t}", "same"),
    ("transformer.h.{i}.attn.c_attn.weight", "blocks.{i}.attn.{qkv}_proj.weight", "qkv"),
    ("transformer.h.{i}.attn.c_attn.bias", "blocks.{i}.attn.{qkv}_proj.bias", "qkv"),
    ("transformer.h.{i}.attn.c_proj.weight", "blocks.{i}.attn.o_proj.weight", "T"),
    ("transformer.h.{i}.attn.c_proj.bias", "blocks.{i}.attn.o_proj.bias", "same"),
    ("transformer.h.{i}.ln_2.{t}", "blocks.{i}.ffn_norm.{t}", "same"),
    ("transformer.h.{i}.mlp.c_fc.weight", "blocks.{i}.ffn.up_proj.weight", "T"),
    ("transformer.h.{i}.mlp.c_fc.bias", "blocks.{i}.ffn.up_proj.bias", "same"),
    ("transformer.h.{i}.mlp.c_proj.weight", "blocks.{i}.ffn.down_proj.weight", "T"),
    ("transformer.h.{i}.mlp.c_proj.bias", "blocks.{i}.ffn.down_proj.bias", "same"),
    ("transformer.ln_f.{t}", "norm.{t}", "same"),
    ("lm_head.weight", "lm_head.weight", "same"),
]
_SKIPPED = re.compile(r"^(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)$|\.attn\.(bias|masked_bias)$")


_FROM = [(pattern(hf), ours, layout) for hf, ours, layout in NAME_TABLE]


# ---- config -----------------------------------------------------------------------------------------------------
def config_from_gpt2(hf: dict[str, Any], where: str) -> ModelConfig:
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise CheckpointError(
            f"{where}: GPT-2 activation_function {act!r} is not supported; supported: {list(ACTIVATIONS)}"
        )
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(flag):
            raise CheckpointError(f"{where}: GPT-2 option {flag}=true is not supported; only the standard attention is")
    if not hf.get("scale_attn_weights", True):
        raise CheckpointError(f"{where}: scale_attn_weights=false (no 1/sqrt(d) scaling) is not supported")
    d = positive_field(hf, "n_embd", where)
    positive_field(hf, "n_head", where)
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layers=hf["n_layer"],
        n_heads=hf["n_head"],
        ffn=ACTIVATIONS[act],
        ffn_hidden=hf.get("n_inner") or 4 * d,
        norm="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        positions="learned",
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        tie_embeddings=bool_field(hf, "tie_word_embeddings", True, where),
        max_seq_len=hf.get("n_positions", 1024),
        attn_dropout=hf.get("attn_pdrop", 0.0),
        resid_dropout=hf.get("resid_pdrop", 0.0),
        embed_dropout=hf.get("embd_pdrop", 0.0),
        extra={"architecture": ARCHITECTURE},
    ).validate()


def gpt2_mismatches(cfg: ModelConfig) -> list[str]:
    """The fields that keep `cfg` from being a GPT-2 checkpoint (empty: it is one)."""
    needs = dict(norm="layernorm", norm_placement="pre", positions="learned", shared_qk=False, causal=True)
    needs["scale_embeddings"] = False
    out = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in needs.items() if getattr(cfg, k) != v]
    if cfg.ffn not in ACTIVATIONS.values():
        out.append(f"ffn={cfg.ffn!r} (needs 'gelu' or 'relu')")
    if not (cfg.qkv_bias and cfg.out_bias and cfg.mlp_bias):
        out.append("biases off (GPT-2 has biases on every projection)")
    if cfg.n_kv_heads != cfg.n_heads or cfg.q_dim != cfg.d_model:
        out.append("n_kv_heads != n_heads or n_heads * head_dim != d_model (GPT-2 is plain MHA)")
    return out


def config_to_gpt2(cfg: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": cfg.ffn_hidden,
        "n_positions": cfg.max_seq_len,
        "activation_function": "gelu_new" if cfg.ffn == "gelu" else "relu",
        "layer_norm_epsilon": cfg.norm_eps,
        "attn_pdrop": cfg.attn_dropout,
        "resid_pdrop": cfg.resid_dropout,
        "embd_pdrop": cfg.embed_dropout,
        "tie_word_embeddings": cfg.tie_embeddings,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


# ---- weights ----------------------------------------------------------------------------------------------------
def state_from_gpt2(tensors: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """GPT-2 tensors -> our state dict: renamed, Conv1D weights transposed, c_attn split into q, k, v."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        full = name if name.startswith(("transformer.", "lm_head.")) else "transformer." + name
        if _SKIPPED.search(full):
            continue  # the causal-mask buffers of older checkpoints
        found = next(((p.match(full), ours, layout) for p, ours, layout in _FROM if p.match(full)), None)
        if found is None:
            raise CheckpointError(f"{where}: unexpected tensor {name!r} for {ARCHITECTURE}")
        m, ours, layout = found
        if layout == "qkv":  # (D, 3D) or (3D,) -> q, k, v
            for part, chunk in zip("qkv", tensor.chunk(3, dim=-1), strict=True):
                out[fill(ours, m).replace("{qkv}", part)] = chunk.t().contiguous() if chunk.dim() == 2 else chunk
        else:
            out[fill(ours, m)] = tensor.t().contiguous() if layout == "T" else tensor
    return out


def state_to_gpt2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> GPT-2 tensors (the inverse of `state_from_gpt2`)."""
    out: dict[str, torch.Tensor] = {}
    for hf, ours, layout in NAME_TABLE:
        if layout == "qkv":
            continue
        compiled = pattern(ours)
        for name, tensor in state.items():
            m = compiled.match(name)
            if m:
                out[fill(hf, m)] = tensor.t().contiguous() if layout == "T" else tensor
    layers = {int(n.split(".")[1]) for n in state if n.startswith("blocks.")}
    for i in sorted(layers):
        for t in ("weight", "bias"):
            parts = [state[f"blocks.{i}.attn.{p}_proj.{t}"] for p in "qkv"]
            fused = torch.cat([p.t() for p in parts], dim=1) if t == "weight" else torch.cat(parts)  # (D, 3D) | (3D,)
            out[f"transformer.h.{i}.attn.c_attn.{t}"] = fused.contiguous()
    return out
