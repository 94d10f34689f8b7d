"""The other members' Hugging Face directories (BERT, T5, ViT), through one table-driven rename.

Each member's module (bert.py, t5.py, vit.py) gives its architectures, `config_from_hf`, `config_to_hf`,
`name_table(cfg)` ((HF name, our name) pairs with `{i}` for a layer and `{t}` for weight/bias), `SKIP` (HF tensors
that are buffers or aliases) and, where a tensor changes shape on the way, `to_ours` / `to_hf`. hf.py calls here for
any config whose family is not the decoder, so loading and saving stay one path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig
from . import bert, modernbert, t5, vit
from .base import CheckpointError, write_directory
from .names import NameTable

MODULES = {"encoder": bert, "seq2seq": t5, "vit": vit}
MEMBERS = {arch: module for module in (*MODULES.values(), modernbert) for arch in module.ARCHITECTURES}
BY_MODEL_TYPE = {
    "bert": "BertModel",
    "modernbert": "ModernBertModel",
    "t5": "T5ForConditionalGeneration",
    "vit": "ViTForImageClassification",
}  # a config.json without `architectures`


def config_from_hf(arch: str, hf: dict[str, Any], where: str) -> ModelConfig:
    return MEMBERS[arch].config_from_hf(hf, arch, where)


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    return _module(cfg).config_to_hf(cfg, dtype)


def _module(cfg: ModelConfig):
    if cfg.family == "encoder" and cfg.positions == "rope":  # the encoder with rotary positions is ModernBERT
        return modernbert
    if cfg.family not in MODULES:
        raise CheckpointError(f"no Hugging Face format is written for family {cfg.family!r} yet")
    return MODULES[cfg.family]


def state_from_hf(cfg: ModelConfig, tensors: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    module = _module(cfg)
    state = NameTable(module.name_table(cfg)).rename_all(tensors, True, where, module.SKIP, CheckpointError)
    return module.to_ours(cfg, state) if hasattr(module, "to_ours") else state


def state_to_hf(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    module = _module(cfg)
    state = module.to_hf(cfg, dict(state)) if hasattr(module, "to_hf") else state
    return NameTable(module.name_table(cfg)).rename_all(state, False, "state dict", error=CheckpointError)


def save(model: torch.nn.Module, directory, tokenizer=None):
    """config.json + model.safetensors (+ the tokenizer), each written atomically."""
    hf_config = config_to_hf(model.config, next(model.parameters()).dtype)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tensors = {k: v.contiguous() for k, v in state_to_hf(model.config, state).items()}
    return write_directory(Path(directory), tensors, hf_config, tokenizer)
