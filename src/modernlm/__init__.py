"""modernlm: the modern (Llama-style) transformer, end to end, in plain PyTorch."""

from __future__ import annotations

from . import threads

threads.prepare_env()  # before torch loads OpenMP: a short spin, so decoding degrades gracefully on a busy machine

from .config import ModelConfig, preset  # noqa: E402
from .generation.generate import generate  # noqa: E402
from .loading import load, load_config, load_model, load_tokenizer, save_model  # noqa: E402
from .model import Transformer  # noqa: E402
from .quant import quantize  # noqa: E402

__all__ = [
    "ModelConfig",
    "Transformer",
    "generate",
    "load",
    "load_config",
    "load_model",
    "load_tokenizer",
    "preset",
    "quantize",
    "save_model",
]
__version__ = "0.1.0"

