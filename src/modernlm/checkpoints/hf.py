"""Hugging Face directories in and out: config.json + model.safetensors (or shards with an index).

Reads LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Phi3ForCausalLM and GPT2LMHeadModel
(its table in gpt2.py), and through decoders.py Gemma2ForCausalLM, Gemma3ForCausalLM and FalconForCausalLM; writes
GPT2LMHeadModel for a GPT-2-shaped config (learned positions, pre-norm LayerNorm, GELU/ReLU, biases, MHA), Gemma 2 / 3
or Falcon for their blocks (decoders.writes), else LlamaForCausalLM (Qwen2ForCausalLM when the model has q/k/v biases
only, Qwen3ForCausalLM with QK-norm, Phi3ForCausalLM for a model read from one), which `transformers` loads.
Weights are read with safetensors, never with pickle.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..config import ConfigError, ModelConfig
from ..text import read_json
from . import decoders, family, gpt2, vlm
from .base import CheckpointError, bool_field, decoder_shape, positive_field, write_directory
from .names import NameTable

SUPPORTED = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    decoders.PHI3: "phi3",  # Llama's config; its fused weights are split and joined in decoders.py
    gpt2.ARCHITECTURE: "gpt2",
}


# ---- names ------------------------------------------------------------------------------------------------------
# (HF name pattern, our name pattern); `{i}` is the layer index. One table for both directions.
NAME_TABLE = NameTable([
    ("model.embed_tokens.weight", "embed.weight"),
    ("model.layers.{i}.input_layernorm.weight", "blocks.{i}.attn_norm.weight"),
    *[
        (f"model.layers.{{i}}.self_attn.{p}_proj.{t}", f"blocks.{{i}}.attn.{p}_proj.{t}")
        for p in "qkvo"
        for t in ("weight", "bias")
    ],
    *[(f"model.layers.{{i}}.self_attn.{p}_norm.weight", f"blocks.{{i}}.attn.{p}_norm.weight") for p in "qk"],  # Qwen3
    ("model.layers.{i}.post_attention_layernorm.weight", "blocks.{i}.ffn_norm.weight"),
    *[
        (f"model.layers.{{i}}.mlp.{p}_proj.{t}", f"blocks.{{i}}.ffn.{p}_proj.{t}")
        for p in ("gate", "up", "down")
        for t in ("weight", "bias")
    ],
    ("model.norm.weight", "norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
])  # fmt: skip


def rename(name: str, to_hf: bool) -> str | None:
    return NAME_TABLE.theirs(name) if to_hf else NAME_TABLE.ours(name)


# ---- config -----------------------------------------------------------------------------------------------------
def _architecture(hf: dict[str, Any], where: str) -> str:
    """The class name config.json's `architectures` gives (or its `model_type` maps to), checked to be a name."""
    by_type = {v: k for k, v in SUPPORTED.items()}
    by_type.update(family.BY_MODEL_TYPE)
    by_type.update(decoders.BY_MODEL_TYPE)
    by_type.update(vlm.BY_MODEL_TYPE)
    archs = hf.get("architectures")
    if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise CheckpointError(f"{where}: architectures must be a list of class names like ['LlamaForCausalLM'], "
                              f"got {archs!r:.80}; fix config.json")  # fmt: skip
    model_type = hf.get("model_type")
    arch = (archs or [by_type.get(model_type, model_type) if isinstance(model_type, str) else model_type])[0]
    if not isinstance(arch, str):
        raise CheckpointError(f"{where}: model_type must be a name like 'llama', got {model_type!r:.80}")
    return arch


def config_from_hf(hf: dict[str, Any], where: str = "config.json") -> ModelConfig:
    arch = _architecture(hf, where)
    if arch in family.MEMBERS:  # an encoder, encoder-decoder or ViT
        return family.config_from_hf(arch, hf, where)
    if arch in decoders.ARCHITECTURES:  # Gemma 2 / 3, Falcon
        return decoders.config_from_hf(arch, hf, where)
    if arch in vlm.ARCHITECTURES:  # Idefics3, SmolVLM: a vision tower, the projector, a decoder read here
        return vlm.config_from_hf(arch, hf, where, config_from_hf)
    if arch not in SUPPORTED:
        supported = [*SUPPORTED, *decoders.ARCHITECTURES, *vlm.ARCHITECTURES, *family.MEMBERS]
        raise CheckpointError(f"{where}: unsupported architecture {arch!r}; supported: {', '.join(supported)}")
    if arch == gpt2.ARCHITECTURE:
        return gpt2.config_from_gpt2(hf, where)
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{where}: hidden_act {hf['hidden_act']!r} is not supported for {arch}; expected 'silu'")
    if arch == decoders.PHI3:
        decoders.check_phi3(hf, where)
    theta, scaling = _rope_from_hf(hf, where)
    heads = positive_field(hf, "num_attention_heads", where)
    positive_field(hf, "hidden_size", where)
    is_qwen2 = SUPPORTED[arch] == "qwen2"
    attention_bias = bool_field(hf, "attention_bias", False, where)
    context = hf.get("max_position_embeddings", 2048)
    if scaling and (scaling.get("rope_type") or scaling.get("type")) == "dynamic":  # HF's dynamic scales from here
        factor = scaling.get("factor")
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not isinstance(context, int):
            raise CheckpointError(f"{where}: dynamic rope scaling needs a numeric factor, got {factor!r}")
        scaling["original_max_position_embeddings"] = context
        context = math.ceil(context * float(scaling["factor"]))  # the length the factor was chosen for
    window, layer_types = _window_from_hf(hf, SUPPORTED[arch], context)
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=heads,
        n_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        ffn="swiglu",
        ffn_hidden=hf["intermediate_size"],
        norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=theta,
        rope_scaling=scaling,
        qkv_bias=is_qwen2 or attention_bias,
        out_bias=attention_bias and not is_qwen2,
        mlp_bias=bool_field(hf, "mlp_bias", False, where),
        qk_norm=SUPPORTED[arch] == "qwen3",
        tie_embeddings=bool_field(hf, "tie_word_embeddings", False, where),
        max_seq_len=context,
        sliding_window=window,
        layer_types=layer_types,
        extra={"architecture": arch},
    ).validate()


def _rope_from_hf(hf: dict[str, Any], where: str) -> tuple[float, dict[str, Any] | None]:
    """rope_theta and the scaling, from transformers 5's `rope_parameters` (theta and scaling together) or the older
    `rope_theta` + `rope_scaling`; a top-level original_max_position_embeddings (Phi-3) goes into the scaling."""
    for name in ("rope_parameters", "rope_scaling"):
        if hf.get(name) is not None and not isinstance(hf[name], dict):
            raise CheckpointError(f"{where}: {name} must be an object or null, got {hf[name]!r:.80}")
    rope = dict(hf.get("rope_parameters") or {})
    if any(isinstance(v, dict) for v in rope.values()):
        raise CheckpointError(f"{where}: per-layer-type rope_parameters {sorted(rope)} are not supported")
    theta = rope.pop("rope_theta", None) or hf.get("rope_theta", 10000.0)
    scaling = dict(hf.get("rope_scaling") or rope)
    scaling.pop("rope_theta", None)
    if (scaling.get("rope_type") or scaling.get("type") or "default") == "default":
        if set(scaling) - {"rope_type", "type", "partial_rotary_factor"}:
            raise CheckpointError(f"{where}: rope scaling {scaling} has keys but no rope_type; name its kind")
        return theta, None
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind in ("llama3", "yarn", "longrope") and hf.get("original_max_position_embeddings"):
        scaling["original_max_position_embeddings"] = hf["original_max_position_embeddings"]
    return theta, scaling


def _window_from_hf(hf: dict[str, Any], kind: str, context) -> tuple[int, list[str] | None]:
    """The sliding window and per-layer types as transformers builds them: Mistral windows every layer (4096 when
    config.json does not say; null: none); Qwen2 only with use_sliding_window, on layer_types or the layers from
    max_window_layers on; Llama has none (transformers ignores the field). A window as long as the context is none."""
    if kind in ("mistral", "phi3"):  # Phi-3 windows every layer when config.json gives a window
        window, types = hf.get("sliding_window", 4096 if kind == "mistral" else None), None
    elif kind in ("qwen2", "qwen3") and bool_field(hf, "use_sliding_window", False):
        window, n = hf.get("sliding_window", 4096), hf["num_hidden_layers"]
        first = hf.get("max_window_layers", 28)
        if not isinstance(first, int) or not isinstance(n, int):
            raise CheckpointError(f"max_window_layers must be an integer, got {first!r}; fix config.json")
        types = hf.get("layer_types") or [
            "sliding_attention" if window is not None and i >= first else "full_attention" for i in range(n)
        ]
    else:
        return 0, None
    if types is not None and not isinstance(types, list):
        raise CheckpointError(f"layer_types must be a list of full_attention / sliding_attention, got {types!r:.80}")
    if window is None or (isinstance(context, int) and isinstance(window, int) and window >= context):
        return 0, None
    if types is not None and "sliding_attention" not in types:
        return 0, None
    return window, None if types is None or "full_attention" not in types else list(types)


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    if cfg.family == "vlm":
        return vlm.config_to_hf(cfg, dtype, config_to_hf)
    if decoders.writes(cfg):
        return decoders.config_to_hf(cfg, dtype)
    if not gpt2.gpt2_mismatches(cfg) and not cfg.sliding_window:
        return gpt2.config_to_gpt2(cfg, dtype)
    not_llama = {
        "norm": (cfg.norm, "rmsnorm"),
        "ffn": (cfg.ffn, "swiglu"),
        "positions": (cfg.positions, "rope"),
        "norm_placement": (cfg.norm_placement, "pre"),
        "shared_qk": (cfg.shared_qk, False),
        "causal": (cfg.causal, True),
        "scale_embeddings": (cfg.scale_embeddings, False),
        "attn_softcap": (cfg.attn_softcap, None),
        "logit_softcap": (cfg.logit_softcap, None),
        "local_rope_theta": (cfg.local_rope_theta, None),
    }
    for field, (value, needed) in not_llama.items():
        if value != needed:
            raise CheckpointError(
                f"cannot save as a Llama/Qwen2 checkpoint: {field}={value!r} (needs {needed!r}); nor as GPT-2: "
                f"{'; '.join(gpt2.gpt2_mismatches(cfg))}. modernlm.checkpoints.native.save_native writes any config"
            )
    qwen2 = cfg.qkv_bias and not cfg.out_bias and not cfg.mlp_bias and not cfg.qk_norm
    if cfg.qkv_bias != cfg.out_bias and not qwen2:
        raise CheckpointError("cannot save: q/k/v and output biases differ, which neither Llama nor Qwen2 expresses")
    if cfg.qk_norm and cfg.mlp_bias:
        raise CheckpointError("cannot save: QK-norm (Qwen3) with MLP biases, which Qwen3 does not express")
    kind = "qwen3" if cfg.qk_norm else "qwen2" if qwen2 else "llama"
    hf = {
        "architectures": [{"qwen3": "Qwen3ForCausalLM", "qwen2": "Qwen2ForCausalLM"}.get(kind, "LlamaForCausalLM")],
        "model_type": kind,
        **decoder_shape(cfg),
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "max_position_embeddings": cfg.max_seq_len,
        "torch_dtype": str(dtype).removeprefix("torch."),
        **_rope_to_hf(cfg),
    }
    if not qwen2:
        hf.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
    if decoders.is_phi3(cfg) and not cfg.qk_norm:
        return decoders.phi3_to_hf(cfg, hf)
    if cfg.sliding_window:
        hf.update(_window_to_hf(cfg, qwen2 or cfg.qk_norm))
    return hf


def _rope_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """rope_theta, rope_scaling (and for dynamic NTK the original length as max_position_embeddings, which HF's
    dynamic scales from). ntk is HF's default RoPE with the raised base; ntk_by_parts is yarn without temperature."""
    scaling = dict(cfg.rope_scaling) if cfg.rope_scaling else None
    kind = (scaling or {}).get("rope_type")
    out: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_scaling": scaling}
    if kind == "ntk":
        dim = cfg.head_dim
        return {"rope_theta": cfg.rope_theta * float(scaling["factor"]) ** (dim / (dim - 2)), "rope_scaling": None}
    if kind == "ntk_by_parts":
        scaling.update(rope_type="yarn", attention_factor=1.0)
    if kind == "dynamic":
        out["max_position_embeddings"] = scaling.pop("original_max_position_embeddings")
    return out


def _window_to_hf(cfg: ModelConfig, qwen2: bool) -> dict[str, Any]:
    """Mistral's one window for every layer, or Qwen2's window on the layers from max_window_layers on."""
    types = cfg.layer_types or ["sliding_attention"] * cfg.n_layers
    if not qwen2:
        if cfg.qkv_bias or cfg.mlp_bias:
            raise CheckpointError("cannot save: Mistral (a sliding window on every layer) has no biases")
        if cfg.layer_types is not None and "full_attention" in types:
            raise CheckpointError(
                "cannot save: full and sliding layers mixed without q/k/v biases, which neither Mistral (every layer "
                "windowed) nor Llama expresses; save_native writes any config"
            )
        return {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "sliding_window": cfg.sliding_window}
    first = types.index("sliding_attention")
    return dict(use_sliding_window=True, sliding_window=cfg.sliding_window, max_window_layers=first, layer_types=types)


# ---- weights ----------------------------------------------------------------------------------------------------
def _weight_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, "shard index", CheckpointError).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no weight_map object; restore the file from the model's source")
        files = [_shard_path(directory, name, index) for name in dict.fromkeys(weight_map.values())]
    elif (directory / "model.safetensors").is_file():
        files = [directory / "model.safetensors"]
    elif any(directory.glob("*.bin")) or any(directory.glob("*.pt")):
        raise CheckpointError(
            f"{directory} holds only pickle weights (.bin/.pt), which are never loaded (unsafe); "
            "convert them to model.safetensors first"
        )
    else:
        raise CheckpointError(f"{directory} holds no model.safetensors or model.safetensors.index.json")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"weight shard(s) listed in the index are missing: {missing}")
    return files


def _shard_path(directory: Path, name: Any, index: Path) -> Path:
    """A shard the index names, refused before it is opened unless it is a plain .safetensors file name inside the
    model directory (`../outside.safetensors` and `/etc/passwd` name files the directory does not hold)."""
    if not isinstance(name, str) or not name.endswith(".safetensors"):
        raise CheckpointError(f"{index} names the shard {name!r}; shards are .safetensors files in the directory")
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or ".." in parts or "\\" in name or ":" in parts[0]:
        raise CheckpointError(
            f"{index} names the shard {name!r}, outside the model directory {directory}; a model directory may only "
            "name its own files: restore the index from the model's source"
        )
    return directory / name


def read_hf_config(directory: str | Path) -> ModelConfig:
    """Our config from a Hugging Face directory's config.json (no weights read)."""
    config_path = Path(directory) / "config.json"
    hf = read_json(config_path, "model config", CheckpointError)
    if not isinstance(hf, dict):
        raise CheckpointError(f"{config_path} must hold a JSON object of config fields, got {type(hf).__name__}")
    try:
        config = config_from_hf(hf, str(config_path))
    except KeyError as e:
        raise CheckpointError(f"{config_path} lacks the field {e.args[0]!r}") from e
    except ConfigError as e:
        raise CheckpointError(f"{config_path}: {e}") from e
    return config


def load_hf(directory: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    directory = Path(directory)
    config = read_hf_config(directory)
    state_dict: dict[str, torch.Tensor] = {}
    for file in _weight_files(directory):
        try:
            tensors = load_file(file)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(
                f"{file} cannot be read ({e}); the file is truncated or corrupt: download it again"
            ) from e
        if config.family == "vlm":
            state_dict.update(vlm.state_from_hf(tensors, file.name, rename))
            continue
        if config.family != "decoder":
            state_dict.update(family.state_from_hf(config, tensors, file.name))
            continue
        if config.extra["architecture"] in decoders.TABLES:  # Gemma 2 / 3, Falcon, Phi-3
            state_dict.update(decoders.state_from_hf(config, tensors, file.name))
            continue
        if config.extra["architecture"] == gpt2.ARCHITECTURE:
            state_dict.update(gpt2.state_from_gpt2(tensors, file.name))
            continue
        for name, tensor in tensors.items():
            ours = rename(name, to_hf=False)
            if ours is None:
                if name.endswith("rotary_emb.inv_freq"):
                    continue  # a buffer older transformers saved; recomputed from the config
                raise CheckpointError(f"{file.name}: unexpected tensor {name!r} for {config.extra['architecture']}")
            state_dict[ours] = tensor
    if config.tie_embeddings:
        state_dict.pop("lm_head.weight", None)
        state_dict.pop("text.lm_head.weight", None)
    return config, state_dict


def save_hf(model: torch.nn.Module, directory: Path, tokenizer=None) -> Path:
    """Write config.json, model.safetensors (and the tokenizer, if given) to `directory`."""
    if model.config.family not in ("decoder", "vlm"):
        return family.save(model, directory, tokenizer)
    dtype = next(model.parameters()).dtype
    hf_config = config_to_hf(model.config, dtype)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.family == "vlm":
        tensors = vlm.state_to_hf(state, rename)
    elif hf_config["architectures"] == [gpt2.ARCHITECTURE]:
        tensors = gpt2.state_to_gpt2(state)
    elif hf_config["architectures"][0] in decoders.TABLES:
        tensors = decoders.state_to_hf(model.config, state, hf_config["architectures"][0])
    else:
        tensors = {rename(k, to_hf=True): v for k, v in state.items()}
    return write_directory(directory, tensors, hf_config, tokenizer)

