"""Decoders whose Hugging Face checkpoints differ from Llama's beyond a few config fields: Gemma 2, Gemma 3 and Falcon
(config and weights, in and out), and Phi-3's fused projections (weights in and out; its config is Llama's, read in
hf.py). Each is configuration over the one Transformer, never a model of its own:

- Gemma 2: GeGLU (tanh GELU), embeddings scaled by sqrt(D), a norm before and after each sub-layer (sandwich_norm),
  attention and final-logit soft-capping, query_pre_attn_scalar as attn_scale, sliding-window layers alternating with
  global ones (layer_types). Gemma's RMSNorm multiplies by (1 + w): our norms hold 1 + w, so the gains get 1 added on
  the way in and taken off on the way out (llama.cpp's converter stores 1 + w in GGUF files too).
- Gemma 3: Gemma 2's block plus QK-norm, no soft-capping by default, the local layers' own RoPE base
  (local_rope_theta; `rope_local_base_freq` or rope_parameters["sliding_attention"]), the pattern of layer_types.
- Falcon: LayerNorm, GELU, attention and MLP side by side off one norm (parallel_block), multi-query attention, and a
  fused query_key_value: [q | k | v] rows for multi-query, interleaved per head otherwise. The 7B layout only:
  new_decoder_architecture (40B / 180B: grouped q/k/v and two norms) and ALiBi (falcon-rw) are refused by name.
- Phi-3: qkv_proj ([q | k | v] rows) and gate_up_proj ([gate | up] rows) split on the way in, joined on the way out.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..config import ConfigError, ModelConfig
from .base import CheckpointError, decoder_shape, positive_field
from .names import NameTable

GEMMA2, GEMMA3, FALCON, PHI3 = "Gemma2ForCausalLM", "Gemma3ForCausalLM", "FalconForCausalLM", "Phi3ForCausalLM"
ARCHITECTURES = (GEMMA2, GEMMA3, FALCON)  # config read and written here; Phi-3's config is Llama's (hf.py)
BY_MODEL_TYPE = {"gemma2": GEMMA2, "gemma3_text": GEMMA3, "falcon": FALCON}  # a config.json without `architectures`
GEMMA_ACTIVATIONS = {"gelu_pytorch_tanh": "geglu", "gelu_new": "geglu", "gelu": "geglu_erf"}
FALCON_ACTIVATIONS = {"gelu": "gelu_erf", "gelu_pytorch_tanh": "gelu", "gelu_new": "gelu", "relu": "relu"}
# HF's names for the kinds of RoPE scaling a Gemma / Falcon checkpoint may carry (the others have no HF spelling here)
HF_SCALINGS = ("linear", "dynamic", "yarn", "llama3", "longrope")
_SKIP = re.compile(r"rotary_emb\.inv_freq$")  # a buffer older transformers saved; recomputed from the config


# ---- names ------------------------------------------------------------------------------------------------------
def _attention_pairs(prefix: str = "model.layers.{i}.self_attn.") -> list[tuple[str, str]]:
    return [(f"{prefix}{p}_proj.{{t}}", f"blocks.{{i}}.attn.{p}_proj.{{t}}") for p in "qkvo"]


GEMMA_NAMES = NameTable([
    ("model.embed_tokens.weight", "embed.weight"),
    ("model.layers.{i}.input_layernorm.weight", "blocks.{i}.attn_norm.weight"),
    *_attention_pairs(),
    ("model.layers.{i}.self_attn.q_norm.weight", "blocks.{i}.attn.q_norm.weight"),
    ("model.layers.{i}.self_attn.k_norm.weight", "blocks.{i}.attn.k_norm.weight"),
    ("model.layers.{i}.post_attention_layernorm.weight", "blocks.{i}.attn_post_norm.weight"),
    ("model.layers.{i}.pre_feedforward_layernorm.weight", "blocks.{i}.ffn_norm.weight"),
    ("model.layers.{i}.post_feedforward_layernorm.weight", "blocks.{i}.ffn_post_norm.weight"),
    *[(f"model.layers.{{i}}.mlp.{p}_proj.weight", f"blocks.{{i}}.ffn.{p}_proj.weight") for p in ("gate", "up", "down")],
    ("model.norm.weight", "norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
])  # fmt: skip
FALCON_NAMES = NameTable([
    ("transformer.word_embeddings.weight", "embed.weight"),
    ("transformer.h.{i}.input_layernorm.{t}", "blocks.{i}.attn_norm.{t}"),
    ("transformer.h.{i}.post_attention_layernorm.{t}", "blocks.{i}.ffn_norm.{t}"),  # sequential blocks only
    ("transformer.h.{i}.self_attention.query_key_value.{t}", "blocks.{i}.attn.qkv.{t}"),  # fused: split below
    ("transformer.h.{i}.self_attention.dense.{t}", "blocks.{i}.attn.o_proj.{t}"),
    ("transformer.h.{i}.mlp.dense_h_to_4h.{t}", "blocks.{i}.ffn.up_proj.{t}"),
    ("transformer.h.{i}.mlp.dense_4h_to_h.{t}", "blocks.{i}.ffn.down_proj.{t}"),
    ("transformer.ln_f.{t}", "norm.{t}"),
    ("lm_head.weight", "lm_head.weight"),
])  # fmt: skip
PHI3_NAMES = NameTable([
    ("model.embed_tokens.weight", "embed.weight"),
    ("model.layers.{i}.input_layernorm.weight", "blocks.{i}.attn_norm.weight"),
    ("model.layers.{i}.self_attn.qkv_proj.weight", "blocks.{i}.attn.qkv.weight"),  # fused: split below
    ("model.layers.{i}.self_attn.o_proj.weight", "blocks.{i}.attn.o_proj.weight"),
    ("model.layers.{i}.post_attention_layernorm.weight", "blocks.{i}.ffn_norm.weight"),
    ("model.layers.{i}.mlp.gate_up_proj.weight", "blocks.{i}.ffn.gate_up.weight"),  # fused: split below
    ("model.layers.{i}.mlp.down_proj.weight", "blocks.{i}.ffn.down_proj.weight"),
    ("model.norm.weight", "norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
])  # fmt: skip
TABLES = {GEMMA2: GEMMA_NAMES, GEMMA3: GEMMA_NAMES, FALCON: FALCON_NAMES, PHI3: PHI3_NAMES}


# ---- fused projections and Gemma's norm gains ----------------------------------------------------------------------
def qkv_sizes(cfg: ModelConfig) -> list[int]:
    return [cfg.q_dim, cfg.kv_dim, cfg.kv_dim]


def split_qkv(cfg: ModelConfig, fused: torch.Tensor, interleaved: bool = False) -> list[torch.Tensor]:
    """q, k, v from a fused projection's rows (weight (q + 2kv, D) or bias): [q | k | v], or q, k, v interleaved per
    head (Falcon without multi-query: rows (H, 3, Dh))."""
    if interleaved:
        per_head = fused.reshape(cfg.n_heads, 3, cfg.head_dim, *fused.shape[1:])  # (H, 3, Dh, ...)
        return [per_head[:, j].reshape(cfg.q_dim, *fused.shape[1:]) for j in range(3)]
    return list(fused.split(qkv_sizes(cfg), dim=0))


def join_qkv(cfg: ModelConfig, q, k, v, interleaved: bool = False) -> torch.Tensor:
    if interleaved:
        parts = [t.reshape(cfg.n_heads, 1, cfg.head_dim, *t.shape[1:]) for t in (q, k, v)]  # (H, 1, Dh, ...) x3
        return torch.cat(parts, 1).reshape(3 * cfg.q_dim, *q.shape[1:])
    return torch.cat((q, k, v), 0)


def _split_fused(cfg: ModelConfig, state: dict[str, torch.Tensor], interleaved: bool) -> dict[str, torch.Tensor]:
    """Our state dict with the fused `attn.qkv.*` and `ffn.gate_up.*` entries split into their projections."""
    out = {}
    for name, tensor in state.items():
        if ".attn.qkv." in name:
            for p, part in zip("qkv", split_qkv(cfg, tensor, interleaved), strict=True):
                out[name.replace(".attn.qkv.", f".attn.{p}_proj.")] = part
        elif ".ffn.gate_up." in name:
            gate, up = tensor.chunk(2, dim=0)  # (2F, D) -> (F, D) x2: gate first (Phi-3's chunk order)
            out[name.replace(".gate_up.", ".gate_proj.")], out[name.replace(".gate_up.", ".up_proj.")] = gate, up
        else:
            out[name] = tensor
    return out


def _shift_norms(state: dict[str, torch.Tensor], by: float) -> dict[str, torch.Tensor]:
    """Gemma's norms compute x_hat * (1 + w); ours x_hat * g: g = w + 1 in, w = g - 1 out."""
    return {n: t + by if n.endswith("norm.weight") else t for n, t in state.items()}


def state_from_hf(cfg: ModelConfig, tensors: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    arch = cfg.extra["architecture"]
    state = TABLES[arch].rename_all(tensors, True, where, _SKIP, CheckpointError)
    if arch in (GEMMA2, GEMMA3):
        return _shift_norms(state, 1.0)
    return _split_fused(cfg, state, interleaved=arch == FALCON and cfg.n_kv_heads != 1)


def state_to_hf(cfg: ModelConfig, state: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    if arch in (GEMMA2, GEMMA3):
        state = _shift_norms(state, -1.0)
    else:
        state = _join(cfg, state, interleaved=arch == FALCON and cfg.n_kv_heads != 1)
    return TABLES[arch].rename_all(state, False, "state dict", error=CheckpointError)


def _join(cfg: ModelConfig, state: dict[str, torch.Tensor], interleaved: bool) -> dict[str, torch.Tensor]:
    """q/k/v joined into `attn.qkv.*`, and (gated FFNs) gate/up into `ffn.gate_up.*`; every other tensor as it is."""
    out, gated = {}, "ffn.gate_proj.weight" in " ".join(state)
    for name, tensor in state.items():
        if ".attn.q_proj." in name:
            k, v = (state[name.replace(".q_proj.", f".{p}_proj.")] for p in "kv")
            out[name.replace(".q_proj.", ".qkv.")] = join_qkv(cfg, tensor, k, v, interleaved)
        elif gated and ".ffn.gate_proj." in name:
            out[name.replace(".gate_proj.", ".gate_up.")] = torch.cat((tensor, state[name.replace("gate", "up")]), 0)
        elif not re.search(r"\.attn\.[kv]_proj\." + (r"|\.ffn\.up_proj\." if gated else ""), name):
            out[name] = tensor
    return out


# ---- config in ----------------------------------------------------------------------------------------------------
def config_from_hf(arch: str, hf: dict[str, Any], where: str) -> ModelConfig:
    try:
        config = _falcon_config(hf, where) if arch == FALCON else _gemma_config(arch, hf, where)
        return config.validate()
    except ConfigError as e:
        raise CheckpointError(f"{where}: {e}") from None


def _flat_rope(rope: dict[str, Any] | None, theta: float, where: str) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) of one flat rope_parameters / rope_scaling dict; a kind HF does not spell is refused."""
    rope = dict(rope or {})
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise CheckpointError(f"{where}: partial_rotary_factor={rope['partial_rotary_factor']} is not supported")
    rope.pop("partial_rotary_factor", None)
    theta = rope.pop("rope_theta", None) or theta
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if kind == "default":
        return theta, None
    if kind not in HF_SCALINGS:
        raise CheckpointError(f"{where}: rope_type {kind!r} is not supported; supported: {', '.join(HF_SCALINGS)}")
    return theta, rope


def _gemma_rope(arch: str, hf: dict[str, Any], where: str) -> tuple[float, dict | None, float | None]:
    """(global theta, global scaling, local theta) from transformers 5's rope_parameters (per layer type for Gemma 3)
    or the older rope_theta / rope_scaling / rope_local_base_freq."""
    params = hf.get("rope_parameters")
    if params is not None and not isinstance(params, dict):
        raise CheckpointError(f"{where}: rope_parameters must be an object or null, got {params!r:.80}")
    params = params or {}
    if arch == GEMMA2 or not any(isinstance(v, dict) for v in params.values()):
        glob, local = params or hf.get("rope_scaling"), {"rope_theta": hf.get("rope_local_base_freq", 10000.0)}
    else:
        glob, local = params.get("full_attention"), params.get("sliding_attention") or {"rope_theta": 10000.0}
    theta, scaling = _flat_rope(glob, hf.get("rope_theta", 10000.0 if arch == GEMMA2 else 1e6), where)
    local_theta, local_scaling = _flat_rope(local, 10000.0, where)
    if local_scaling is not None:
        raise CheckpointError(f"{where}: RoPE scaling on the sliding-window layers is not supported (Gemma 3 has none)")
    return theta, scaling, None if arch == GEMMA2 else local_theta


def _gemma_window(arch: str, hf: dict[str, Any], context: int, where: str) -> tuple[int, list[str] | None]:
    """Gemma 2 alternates sliding and global layers; Gemma 3 keeps one global layer in `sliding_window_pattern`."""
    n, window = positive_field(hf, "num_hidden_layers", where), hf.get("sliding_window", 4096)
    every = 2 if arch == GEMMA2 else hf.get("sliding_window_pattern", 6)
    types = hf.get("layer_types") or [
        "sliding_attention" if (i + 1) % every else "full_attention" for i in range(n)
    ]  # fmt: skip
    if not isinstance(types, list):
        raise CheckpointError(f"{where}: layer_types must be a list of full_attention / sliding_attention")
    if window is None or "sliding_attention" not in types or (isinstance(window, int) and window >= context):
        return 0, None
    return window, None if "full_attention" not in types else list(types)


def _gemma_config(arch: str, hf: dict[str, Any], where: str) -> ModelConfig:
    act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in GEMMA_ACTIVATIONS:
        supported = list(GEMMA_ACTIVATIONS)
        raise CheckpointError(f"{where}: hidden_activation {act!r} is not supported; supported: {supported}")
    if hf.get("use_bidirectional_attention"):
        raise CheckpointError(f"{where}: use_bidirectional_attention=true (EmbeddingGemma) is not supported")
    heads, d = positive_field(hf, "num_attention_heads", where), positive_field(hf, "hidden_size", where)
    context = hf.get("max_position_embeddings", 8192 if arch == GEMMA2 else 131072)
    theta, scaling, local_theta = _gemma_rope(arch, hf, where)
    window, types = _gemma_window(arch, hf, context, where)
    softcaps = (50.0, 30.0) if arch == GEMMA2 else (None, None)
    scalar = hf.get("query_pre_attn_scalar", 256)
    if not isinstance(scalar, (int, float)) or isinstance(scalar, bool) or scalar <= 0:
        raise CheckpointError(f"{where}: query_pre_attn_scalar must be a positive number, got {scalar!r}")
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layers=hf["num_hidden_layers"],
        n_heads=heads,
        n_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or 256,
        ffn=GEMMA_ACTIVATIONS[act],
        ffn_hidden=hf["intermediate_size"],
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=theta,
        rope_scaling=scaling,
        local_rope_theta=local_theta if window else None,
        qkv_bias=bool(hf.get("attention_bias", False)),
        out_bias=bool(hf.get("attention_bias", False)),
        qk_norm=arch == GEMMA3,
        sandwich_norm=True,
        scale_embeddings=True,
        attn_scale=float(scalar) ** -0.5,
        attn_softcap=hf.get("attn_logit_softcapping", softcaps[0]),
        logit_softcap=hf.get("final_logit_softcapping", softcaps[1]),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        max_seq_len=context,
        sliding_window=window,
        layer_types=types,
        extra={"architecture": arch},
    )


def _falcon_config(hf: dict[str, Any], where: str) -> ModelConfig:
    for flag, what in (("new_decoder_architecture", "Falcon 40B / 180B's grouped q/k/v and two norms"),
                       ("alibi", "ALiBi positions (falcon-rw)")):  # fmt: skip
        if hf.get(flag):
            raise CheckpointError(f"{where}: {flag}=true ({what}) is not supported; the 7B layout (false) is")
    act = hf.get("activation", "gelu")
    if act not in FALCON_ACTIVATIONS:
        raise CheckpointError(f"{where}: activation {act!r} is not supported; supported: {list(FALCON_ACTIVATIONS)}")
    d = hf.get("hidden_size") or hf.get("n_embed")
    heads, layers = hf.get("num_attention_heads") or hf.get("n_head"), hf.get("num_hidden_layers") or hf.get("n_layer")
    for name, value in (("hidden_size", d), ("num_attention_heads", heads), ("num_hidden_layers", layers)):
        positive_field({name: value}, name, where)
    theta, scaling = _flat_rope(hf.get("rope_parameters") or hf.get("rope_scaling"), hf.get("rope_theta", 1e4), where)
    bias = bool(hf.get("bias", False))
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layers=layers,
        n_heads=heads,
        n_kv_heads=1 if hf.get("multi_query", True) else heads,
        ffn=FALCON_ACTIVATIONS[act],
        ffn_hidden=hf.get("ffn_hidden_size") or 4 * d,
        norm="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        rope_theta=theta,
        rope_scaling=scaling,
        parallel_block=bool(hf.get("parallel_attn", True)),
        qkv_bias=bias,
        out_bias=bias,
        mlp_bias=bias,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        max_seq_len=hf.get("max_position_embeddings", 2048),
        extra={"architecture": FALCON},
    )


# ---- config out ---------------------------------------------------------------------------------------------------
def writes(cfg: ModelConfig) -> str | None:
    """The architecture this module writes `cfg` as (Gemma 2 / 3 for sandwich blocks, Falcon for LayerNorm + RoPE
    or parallel blocks), or None (hf.py's Llama family, or GPT-2)."""
    if cfg.sandwich_norm:
        return GEMMA3 if cfg.qk_norm else GEMMA2
    if cfg.parallel_block or (cfg.norm == "layernorm" and cfg.positions == "rope"):
        return FALCON
    return None


def _refuse(arch: str, needs: dict[str, tuple[Any, Any]]) -> None:
    bad = [f"{k}={v!r} (needs {want!r})" for k, (v, want) in needs.items() if v != want]
    if bad:
        raise CheckpointError(
            f"cannot save as {arch}: {'; '.join(bad)}. modernlm.checkpoints.native.save_native writes any config"
        )


def _rope_out(cfg: ModelConfig, arch: str) -> dict[str, Any]:
    scaling = dict(cfg.rope_scaling) if cfg.rope_scaling else {"rope_type": "default"}
    if scaling["rope_type"] not in ("default", *HF_SCALINGS) or scaling["rope_type"] == "dynamic":
        raise CheckpointError(f"cannot save as {arch}: rope_scaling {scaling['rope_type']!r} has no spelling there")
    return {"rope_theta": cfg.rope_theta, **scaling}


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    arch = writes(cfg)
    hf = _falcon_to_hf(cfg) if arch == FALCON else _gemma_to_hf(cfg, arch)
    return {"architectures": [arch], **hf, "torch_dtype": str(dtype).removeprefix("torch.")}


def _gemma_to_hf(cfg: ModelConfig, arch: str) -> dict[str, Any]:
    act = {v: k for k, v in reversed(GEMMA_ACTIVATIONS.items())}.get(cfg.ffn)
    scalar = (cfg.attn_scale or cfg.head_dim**-0.5) ** -2
    _refuse(arch, {"ffn": (cfg.ffn if act else None, "geglu"), "norm": (cfg.norm, "rmsnorm"),
                   "positions": (cfg.positions, "rope"), "scale_embeddings": (cfg.scale_embeddings, True),
                   "mlp_bias": (cfg.mlp_bias, False), "out_bias": (cfg.out_bias, cfg.qkv_bias),
                   "query_pre_attn_scalar": (abs(scalar - round(scalar)) < 1e-6 * scalar, True),
                   "local_rope_theta": (cfg.local_rope_theta if arch == GEMMA2 else None, None)})  # fmt: skip
    types = cfg.layer_types or ["sliding_attention" if cfg.sliding_window else "full_attention"] * cfg.n_layers
    rope = _rope_out(cfg, arch)
    if arch == GEMMA3:
        local = {"rope_type": "default", "rope_theta": cfg.local_rope_theta or cfg.rope_theta}
        rope = {"full_attention": rope, "sliding_attention": local}
    return {
        "model_type": "gemma2" if arch == GEMMA2 else "gemma3_text",
        **decoder_shape(cfg),
        "hidden_activation": act,
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "max_position_embeddings": cfg.max_seq_len,
        "rope_parameters": rope,
        "attention_bias": cfg.qkv_bias,
        "query_pre_attn_scalar": round(scalar),
        "sliding_window": cfg.sliding_window or None,
        "layer_types": types,
        "attn_logit_softcapping": cfg.attn_softcap,
        "final_logit_softcapping": cfg.logit_softcap,
    }


def _falcon_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    act = {v: k for k, v in reversed(FALCON_ACTIVATIONS.items())}.get(cfg.ffn)
    _refuse(FALCON, {"ffn": (cfg.ffn if act else None, "gelu_erf"), "norm": (cfg.norm, "layernorm"),
                     "positions": (cfg.positions, "rope"), "out_bias": (cfg.out_bias, cfg.qkv_bias),
                     "mlp_bias": (cfg.mlp_bias, cfg.qkv_bias), "n_kv_heads": (cfg.n_kv_heads in (1, cfg.n_heads), True),
                     "head_dim": (cfg.head_dim, cfg.d_model // cfg.n_heads), "sliding_window": (cfg.sliding_window, 0),
                     "qk_norm": (cfg.qk_norm, False), "attn_softcap": (cfg.attn_softcap, None),
                     "logit_softcap": (cfg.logit_softcap, None), "scale_embeddings": (cfg.scale_embeddings, False),
                     "attn_scale": (cfg.attn_scale, None), "shared_qk": (cfg.shared_qk, False)})  # fmt: skip
    return {
        "model_type": "falcon",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "multi_query": cfg.n_kv_heads == 1,
        "new_decoder_architecture": False,
        "alibi": False,
        "parallel_attn": cfg.parallel_block,
        "bias": cfg.qkv_bias,
        "activation": act,
        "ffn_hidden_size": cfg.ffn_hidden,
        "layer_norm_epsilon": cfg.norm_eps,
        "max_position_embeddings": cfg.max_seq_len,
        "rope_parameters": _rope_out(cfg, FALCON),
        "tie_word_embeddings": cfg.tie_embeddings,
    }


def check_phi3(hf: dict[str, Any], where: str) -> None:
    """What Phi-3's config may hold beyond Llama's fields that we do not implement: partial RoPE (Phi-4-mini)."""
    rope = hf.get("rope_parameters") if isinstance(hf.get("rope_parameters"), dict) else {}
    factor = hf.get("partial_rotary_factor", rope.get("partial_rotary_factor", 1.0))
    if factor != 1.0:
        raise CheckpointError(f"{where}: partial_rotary_factor={factor} (RoPE on part of each head) is not supported")


def phi3_to_hf(cfg: ModelConfig, llama: dict[str, Any]) -> dict[str, Any]:
    """Phi-3's config.json from the Llama one hf.py writes: its class, the top-level original length of LongRoPE, and
    the window on every layer (Phi-3 has no per-layer types)."""
    _refuse(PHI3, {"qkv_bias": (cfg.qkv_bias, False), "mlp_bias": (cfg.mlp_bias, False),
                   "layer_types": (cfg.layer_types, None), "qk_norm": (cfg.qk_norm, False)})  # fmt: skip
    hf = {k: v for k, v in llama.items() if k not in ("attention_bias", "mlp_bias")}
    hf.update(architectures=[PHI3], model_type="phi3", sliding_window=cfg.sliding_window or None)
    hf.update(pad_token_id=None, bos_token_id=None, eos_token_id=None)  # Phi3Config's defaults are Phi-3's own ids
    old = (cfg.rope_scaling or {}).get("original_max_position_embeddings")
    if old is not None:
        hf["original_max_position_embeddings"] = old
    return hf


def is_phi3(cfg: ModelConfig) -> bool:
    """A model read from a Phi-3 checkpoint goes back out as one (its fused layout), when its config still fits."""
    return cfg.extra.get("architecture") == PHI3

