"""modernlm's own directory format, for any ModelConfig (the HF format only expresses Llama/Qwen2 shapes):
`modernlm_config.json` (ModelConfig as JSON) + `model.safetensors` (our parameter names) [+ tokenizer files]."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import ModelConfig
from ..files import atomic_path
from .base import CheckpointError

CONFIG_NAME = "modernlm_config.json"
WEIGHTS_NAME = "model.safetensors"


def is_native(directory: Path) -> bool:
    return (directory / CONFIG_NAME).is_file()


def native_config(directory: str | Path) -> ModelConfig:
    """The config of a modernlm directory (no weights read)."""
    return ModelConfig.from_json(Path(directory) / CONFIG_NAME).validate()


def load_native(directory: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    directory = Path(directory)
    config = native_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{directory} has {CONFIG_NAME} but no {WEIGHTS_NAME}")
    try:
        return config, load_file(weights)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights} cannot be read ({e}); the file is truncated or corrupt") from e


def save_native(model: torch.nn.Module, directory: str | Path) -> Path:
    """Write the config and the weights; tied weights are stored once (as the embedding)."""
    directory = Path(directory)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(tensors, tmp, metadata={"format": "modernlm"})
    model.config.to_json(directory / CONFIG_NAME)
    return directory
