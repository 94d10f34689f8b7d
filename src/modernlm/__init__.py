"""modernlm: the modern (Llama-style) transformer, end to end, in plain PyTorch."""

from __future__ import annotations

from .config import ModelConfig, preset
from .loading import load_model, load_tokenizer, save_model
from .model import Transformer
from .quant import quantize

__all__ = ["ModelConfig", "Transformer", "generate", "load_model", "load_tokenizer", "preset", "quantize", "save_model"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "generate":  # generation sits above the model; import it on first use
        from .generation.generate import generate

        return generate
    raise AttributeError(f"module 'modernlm' has no attribute {name!r}")
