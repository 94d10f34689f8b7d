"""Vision-language checkpoints in and out: Idefics3ForConditionalGeneration and SmolVLMForConditionalGeneration (the
same layout): a SigLIP vision tower (`vision_config`), the connector's one projection, a Llama-family decoder
(`text_config`, read and written by hf.py, which passes its readers in: this module sits below it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from ..config import ConfigError, ModelConfig
from ..vlm import decoder_config, vision_config
from .base import CheckpointError, positive_field
from .names import NameTable

ARCHITECTURES = ("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration")
BY_MODEL_TYPE = {"idefics3": ARCHITECTURES[0], "smolvlm": ARCHITECTURES[1]}
ACTIVATIONS = {"gelu_pytorch_tanh": "gelu", "gelu_new": "gelu", "gelu": "gelu_erf"}
TEXT_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
_TOWER = "model.vision_model."
VISION_NAMES = NameTable([
    (_TOWER + "embeddings.patch_embedding.{t}", "vision.patch_embed.{t}"),
    (_TOWER + "embeddings.position_embedding.weight", "vision.positions.weight"),
    *[(_TOWER + f"encoder.layers.{{i}}.self_attn.{p}_proj.{{t}}", f"vision.blocks.{{i}}.attn.{p}_proj.{{t}}")
      for p in "qkv"],
    (_TOWER + "encoder.layers.{i}.self_attn.out_proj.{t}", "vision.blocks.{i}.attn.o_proj.{t}"),
    (_TOWER + "encoder.layers.{i}.layer_norm1.{t}", "vision.blocks.{i}.attn_norm.{t}"),
    (_TOWER + "encoder.layers.{i}.layer_norm2.{t}", "vision.blocks.{i}.ffn_norm.{t}"),
    (_TOWER + "encoder.layers.{i}.mlp.fc1.{t}", "vision.blocks.{i}.ffn.up_proj.{t}"),
    (_TOWER + "encoder.layers.{i}.mlp.fc2.{t}", "vision.blocks.{i}.ffn.down_proj.{t}"),
    (_TOWER + "post_layernorm.{t}", "vision.norm.{t}"),
    ("model.connector.modality_projection.proj.weight", "projector.weight"),
])  # fmt: skip
_TEXT = re.compile(r"^model\.text_model\.")


# ---- config -------------------------------------------------------------------------------------------------------
def config_from_hf(arch: str, hf: dict[str, Any], where: str, text_reader: Callable) -> ModelConfig:
    """Our config from an Idefics3 / SmolVLM config.json; `text_reader` is hf.py's config_from_hf."""
    text = dict(hf.get("text_config") or {"model_type": "llama"})
    text.setdefault("model_type", "llama")
    decoder = text_reader(text, f"{where} text_config")
    if decoder.family != "decoder" or decoder.extra["architecture"] not in TEXT_ARCHITECTURES:
        raise CheckpointError(
            f"{where}: text_config is a {decoder.extra['architecture']}; a VLM's language model is read for "
            f"{', '.join(TEXT_ARCHITECTURES)}"
        )
    try:
        vision = _vision_from_hf(hf.get("vision_config") or {}, where)
        fields = {**decoder.to_dict(), "family": "vlm", "vision": vision.to_dict(), "extra": {"architecture": arch}}
        fields.update(image_token_id=hf.get("image_token_id", 128257), pixel_shuffle=hf.get("scale_factor", 2))
        fields["tie_embeddings"] = bool(hf.get("tie_word_embeddings", decoder.tie_embeddings))
        return ModelConfig.from_dict(fields, where).validate()
    except ConfigError as e:
        raise CheckpointError(f"{where}: {e}") from None


def _vision_from_hf(v: dict[str, Any], where: str) -> ModelConfig:
    act = v.get("hidden_act", "gelu_pytorch_tanh")
    if act not in ACTIVATIONS:
        raise CheckpointError(f"{where}: vision_config hidden_act {act!r} is not supported; supported: {ACTIVATIONS}")
    size, patch = v.get("image_size", 224), v.get("patch_size", 32)
    for name in ("image_size", "patch_size"):
        positive_field({name: v.get(name, size if name == "image_size" else patch)}, name, f"{where} vision_config")
    return ModelConfig(
        family="vit",
        head="none",
        class_token=False,
        vocab_size=1,  # the patches are the tokens
        d_model=v.get("hidden_size", 1152),
        n_layers=v.get("num_hidden_layers", 27),
        n_heads=v.get("num_attention_heads", 16),
        ffn=ACTIVATIONS[act],
        ffn_hidden=v.get("intermediate_size", 4304),
        norm="layernorm",
        norm_eps=v.get("layer_norm_eps", 1e-6),
        positions="learned",
        causal=False,
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        image_size=size,
        patch_size=patch,
        n_channels=v.get("num_channels", 3),
        max_seq_len=(size // patch) ** 2,
    )


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype, text_writer: Callable) -> dict[str, Any]:
    """Idefics3's (or SmolVLM's, for a model read from one) config.json; `text_writer` is hf.py's config_to_hf."""
    arch = cfg.extra.get("architecture") if cfg.extra.get("architecture") in ARCHITECTURES else ARCHITECTURES[0]
    text = {k: v for k, v in text_writer(decoder_config(cfg), dtype).items() if k not in ("architectures",)}
    vision = vision_config(cfg)
    if vision.ffn not in ACTIVATIONS.values() or vision.n_kv_heads != vision.n_heads or vision.class_token:
        raise CheckpointError("cannot save the VLM: its vision tower is not SigLIP's (plain MLP, MHA, no class token)")
    return {
        "architectures": [arch],
        "model_type": {v: k for k, v in BY_MODEL_TYPE.items()}[arch],
        "image_token_id": cfg.image_token_id,
        "scale_factor": cfg.pixel_shuffle,
        "tie_word_embeddings": cfg.tie_embeddings,
        "text_config": text,
        "vision_config": {
            "hidden_size": vision.d_model,
            "num_hidden_layers": vision.n_layers,
            "num_attention_heads": vision.n_heads,
            "intermediate_size": vision.ffn_hidden,
            "hidden_act": {v: k for k, v in reversed(ACTIVATIONS.items())}[vision.ffn],
            "layer_norm_eps": vision.norm_eps,
            "image_size": vision.image_size,
            "patch_size": vision.patch_size,
            "num_channels": vision.n_channels,
        },
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


# ---- weights ------------------------------------------------------------------------------------------------------
def state_from_hf(tensors: dict[str, torch.Tensor], where: str, text_rename: Callable) -> dict[str, torch.Tensor]:
    """Our state dict (vision.*, projector.*, text.*); `text_rename(name, to_hf)` is hf.py's Llama-family rename."""
    out = {}
    for name, tensor in tensors.items():
        theirs = _TEXT.sub("model.", name)
        ours = VISION_NAMES.ours(name) or (text_rename(theirs, False) and "text." + text_rename(theirs, False))
        if not ours:
            raise CheckpointError(f"{where}: unexpected tensor {name!r} for a vision-language model")
        out[ours] = tensor
    return out


def state_to_hf(state: dict[str, torch.Tensor], text_rename: Callable) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in state.items():
        if name.startswith("text."):
            theirs = text_rename(name.removeprefix("text."), True)
            theirs = theirs if theirs.startswith("lm_head.") else "model.text_model." + theirs.removeprefix("model.")
            out[theirs] = tensor
        else:
            out[VISION_NAMES.theirs(name)] = tensor
    return out
