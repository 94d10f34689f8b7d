"""GGUF files out: a model and its tokenizer -> one file llama.cpp and transformers load, with the `gguf` package's
writer.

What is written, as llama.cpp's own converter writes it:
- metadata: `general.*` (name, file type), the `llama.*` (or `qwen2.*`, with q/k/v biases) hyper-parameters, RoPE
  scaling (linear, yarn), and the tokenizer: `tokenizer.ggml.*` (a byte-level BPE's tokens, token types, merges,
  pre-tokenizer name, special ids, add_bos) and `tokenizer.chat_template`;
- tensors under GGUF names (the inverse of checkpoints/gguf.py's NAME_TABLE), Q and K rows permuted back into
  llama.cpp's RoPE order for `llama`; vectors in F32; matrices in the chosen type: f16, q8_0, or q4_0 (with the
  embedding in q8_0, as llama.cpp keeps it at 6-8 bits), or q4_k_m, the mix llama-quantize chooses for Q4_K_M
  (`q4_k_m_type`): Q4_K, with Q6_K for the output (the embedding when it is tied) and for attn_v and ffn_down in the
  first and last eighth of the layers and every third one between; a width that is not a multiple of 256 takes
  llama.cpp's fallback (Q5_0 for Q4_K, Q8_0 for Q6_K). A matrix whose width is not a whole number of 32-value
  blocks is written in f16. Quantizing follows ggml's reference rounding (quant/gguf_blocks.py; the K-quants:
  quant/kquants.py).
A quantized model is written from its dequantized weights. A model GGUF cannot describe (no RoPE, no RMSNorm, a
non-gated FFN, post-norm, non-causal, biases beyond q/k/v, an encoder) is refused before anything is written.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..checkpoints.gguf import NAME_TABLE, GGUFError
from ..files import atomic_path
from ..model import Transformer
from ..quant import QuantEmbedding, QuantLinear
from ..quant.gguf_blocks import quantize_q4_0, quantize_q8_0
from ..quant.kquants import quantize_q4_k, quantize_q6_k

TYPES = ("f16", "q8_0", "q4_0", "q4_k_m")
FILE_TYPES = {"f16": 1, "q8_0": 7, "q4_0": 2, "q4_k_m": 15}  # llama.cpp's LLAMA_FTYPE values
log = logging.getLogger("modernlm")


def _check_mappable(cfg) -> str:
    """The GGUF architecture for this config, or GGUFError naming what has no GGUF mapping."""
    wrong = {
        "positions": (cfg.positions, "rope"),
        "norm": (cfg.norm, "rmsnorm"),
        "ffn": (cfg.ffn, "swiglu"),
        "norm_placement": (cfg.norm_placement, "pre"),
        "causal": (cfg.causal, True),
        "shared_qk": (cfg.shared_qk, False),
        "out_bias": (cfg.out_bias, False),
        "mlp_bias": (cfg.mlp_bias, False),
        "scale_embeddings": (cfg.scale_embeddings, False),
        "sliding_window": (cfg.sliding_window, 0),  # llama.cpp's llama architecture attends to every key
        # the later decoders' blocks (Qwen3, Gemma, Falcon): read from GGUF, not written
        "qk_norm": (cfg.qk_norm, False),
        "sandwich_norm": (cfg.sandwich_norm, False),
        "parallel_block": (cfg.parallel_block, False),
        "attn_softcap": (cfg.attn_softcap, None),
        "logit_softcap": (cfg.logit_softcap, None),
    }
    bad = {k: v for k, (v, want) in wrong.items() if v != want}
    if bad:
        raise GGUFError(
            f"this model has no GGUF mapping: {', '.join(f'{k}={v!r}' for k, v in bad.items())}; GGUF export writes "
            "Llama-style decoders (causal, RoPE, RMSNorm, SwiGLU, pre-norm, biases on q/k/v at most). Save it with "
            "save_model (a Hugging Face directory) instead"
        )
    return "qwen2" if cfg.qkv_bias else "llama"


def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Our (Hugging Face) Q/K rows -> llama.cpp's pairs-adjacent RoPE order; the inverse of gguf.unpermute_qk
    (checkpoints/gguf.py)."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _float_state(model) -> dict[str, torch.Tensor]:
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            state[f"{name}.weight"] = module.qweight.dequantize()
            if module.bias is not None:
                state[f"{name}.bias"] = module.bias.detach()
        elif isinstance(module, QuantEmbedding):
            state[f"{name}.weight"] = module.qweight.dequantize()
    for name, t in model.state_dict().items():
        if not any(part in name for part in ("qweight.", "inv_freq", "pos_embed.slopes")):
            state.setdefault(name, t)
    return {k: v.detach().float().cpu() for k, v in state.items()}


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's layers that get more bits in an _M mix: the first and last eighth, and every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def q4_k_m_type(name: str, n_layers: int, tied: bool) -> str:
    """The GGML type llama-quantize gives the matrix `name` (a GGUF name) in a Q4_K_M file: Q6_K for the output (the
    embedding when the output is tied to it) and for attn_v / ffn_down of the layers `use_more_bits` picks, else
    Q4_K."""
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        return "Q6_K"
    if name.startswith("blk.") and (".attn_v." in name or ".ffn_down." in name):
        return "Q6_K" if use_more_bits(int(name.split(".")[1]), n_layers) else "Q4_K"
    return "Q4_K"


def _k_quant(name: str, a: np.ndarray, qtype: str):
    """(array, GGML type) of a Q4_K_M matrix; a width that is not a multiple of 256 takes llama.cpp's fallback."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    if a.shape[-1] % 256 == 0:
        return (quantize_q6_k(a), Q.Q6_K) if qtype == "Q6_K" else (quantize_q4_k(a), Q.Q4_K)
    if qtype == "Q6_K":
        return quantize_q8_0(a), Q.Q8_0
    return gguf.quants.quantize(a, Q.Q5_0), Q.Q5_0


def _tensor(name: str, w: torch.Tensor, kind: str, mix: str | None = None):
    """(array, GGML type) for one tensor in the chosen type (`mix`: its Q4_K_M type, for kind q4_k_m)."""
    from gguf import GGMLQuantizationType as Q

    a = w.numpy().astype(np.float32)
    if a.ndim == 1:
        return a, Q.F32
    if name == "token_embd.weight" and kind == "q4_0":
        kind = "q8_0"
    if kind != "f16" and a.shape[-1] % 32:
        log.info("%s: %d inputs is not a whole number of 32-value blocks; written in f16", name, a.shape[-1])
        kind = "f16"
    if kind == "q8_0":
        return quantize_q8_0(a), Q.Q8_0
    if kind == "q4_0":
        return quantize_q4_0(a), Q.Q4_0
    if kind == "q4_k_m":
        return _k_quant(name, a, mix)
    return a.astype(np.float16), Q.F16


def _pre_tokenizer_name(backend: dict) -> str:
    """llama.cpp's name for a tokenizer's pre-tokenizer: "gpt-2" for byte-level BPE split by GPT-2's regex (what
    `modernlm tokenizer` and `train` build), else "default"."""
    pre = backend.get("pre_tokenizer") or {}
    return "gpt-2" if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) else "default"


def _tokenizer_metadata(writer, tokenizer, pre: str | None) -> None:
    backend = json.loads(tokenizer.backend.to_str())
    pre = _pre_tokenizer_name(backend) if pre is None else pre
    model = backend.get("model", {})
    if model.get("type") != "BPE":
        raise GGUFError(
            f"the tokenizer is a {model.get('type')!r} model; GGUF export writes byte-level BPE tokenizers only"
        )
    vocab = model["vocab"]
    tokens = [""] * (max(vocab.values()) + 1)
    for token, i in vocab.items():
        tokens[i] = token
    special = {t["content"] for t in backend.get("added_tokens", []) if t.get("special")}
    for t in backend.get("added_tokens", []):
        if t["id"] >= len(tokens):
            tokens += [""] * (t["id"] + 1 - len(tokens))
        tokens[t["id"]] = t["content"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])
    writer.add_token_merges(merges)
    for name, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id)):
        if getattr(tokenizer, name) is not None:
            add(getattr(tokenizer, name))
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def export_gguf(
    model,
    tokenizer,
    out: str | os.PathLike,
    kind: str = "f16",
    name: str = "modernlm",
    tokenizer_pre: str | None = None,
) -> Path:
    """Write `model` (and `tokenizer`, if given) as a GGUF file of type `kind` (f16, q8_0, q4_0, q4_k_m) at `out`.
    `tokenizer_pre`: llama.cpp's name of the pre-tokenizer (a GGUF source's own `tokenizer.ggml.pre`); None infers
    it from the tokenizer ("gpt-2" for a byte-level BPE with GPT-2's split, else "default")."""
    import gguf

    if kind not in TYPES:
        raise GGUFError(f"unknown GGUF export type {kind!r}; choose one of {', '.join(TYPES)}")
    if not isinstance(model, Transformer):
        raise GGUFError(
            f"a {type(model).__name__} has no GGUF mapping; GGUF export writes decoder-only Transformer models (an "
            "encoder, an encoder-decoder or a ViT: save it with save_model instead)"
        )
    cfg = model.config
    arch = _check_mappable(cfg)
    state = _float_state(model)
    names = {k: NAME_TABLE.theirs(k) for k in state}
    unknown = [k for k, g in names.items() if g is None]
    if unknown:
        raise GGUFError(f"tensors {unknown[:4]} have no GGUF name; this model has no GGUF mapping")
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        _model_metadata(writer, cfg, name, kind)
        if tokenizer is not None:
            _tokenizer_metadata(writer, tokenizer, tokenizer_pre)
        for ours, w in state.items():
            g = names[ours]
            if arch == "llama" and ".attn_q." in g:
                w = permute_qk(w, cfg.n_heads)
            elif arch == "llama" and ".attn_k." in g:
                w = permute_qk(w, cfg.n_kv_heads)
            mix = q4_k_m_type(g, cfg.n_layers, "output.weight" not in names.values()) if kind == "q4_k_m" else None
            array, qtype = _tensor(g, w, kind, mix)
            writer.add_tensor(g, array, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(out)


def _model_metadata(writer, cfg, name: str, kind: str) -> None:
    """`general.*` and the architecture's hyper-parameters, RoPE scaling included."""
    writer.add_name(name)
    writer.add_file_type(FILE_TYPES[kind])
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.d_model)
    writer.add_block_count(cfg.n_layers)
    writer.add_feed_forward_length(cfg.ffn_hidden)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_kv_heads)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_rope_freq_base(float(cfg.rope_theta))
    writer.add_layer_norm_rms_eps(float(cfg.norm_eps))
    writer.add_vocab_size(cfg.vocab_size)
    _rope_scaling(writer, cfg.rope_scaling)


def _rope_scaling(writer, scaling: dict | None) -> None:
    import gguf

    if not scaling:
        return
    kind = scaling.get("rope_type")
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    elif kind == "yarn":
        extra = sorted(set(scaling) - {"rope_type", "factor", "original_max_position_embeddings"})
        if extra:  # the writer here has no key for them: refused rather than dropped
            raise GGUFError(f"YaRN keys {extra} have no GGUF metadata here; export supports factor and original length")
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
    else:
        raise GGUFError(f"RoPE scaling {kind!r} has no GGUF metadata here; export supports linear and yarn")
