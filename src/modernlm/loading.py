"""The one loader path: a source -> a local path -> (config, state dict) from its format -> a model on the meta device
filled with `load_state_dict(assign=True)`. And the way back out, `save_model`."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .checkpoints.sources import SourceError, resolve
from .model import Transformer

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype) not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    return _DTYPES[str(dtype)]


def _read_checkpoint(path: Path):
    if path.is_file():
        if path.suffix != ".gguf":
            raise SourceError(f"{path} is a file but not a .gguf; give a .gguf file or a Hugging Face directory")
        from .checkpoints import gguf_cache
        from .checkpoints.gguf import load_gguf
        from .checkpoints.native import load_native

        directory = gguf_cache.converted(path)
        return load_native(directory) if directory is not None else load_gguf(path)
    from .checkpoints.native import is_native, load_native

    if is_native(path):
        return load_native(path)
    if (path / "config.json").is_file():
        from .checkpoints.hf import load_hf

        return load_hf(path)
    raise SourceError(
        f"{path} holds neither config.json (a Hugging Face directory) nor modernlm_config.json (a modernlm run "
        "directory), and is not a .gguf file"
    )


def load_model(
    source: str | os.PathLike | None = None,
    dtype: str | torch.dtype | None = None,
    device=None,
    quantize: str | None = None,
) -> Transformer:
    """Load a model. `source`: an embedded name (default `smollm2-135m-instruct`), a Hugging Face directory, a .gguf
    file, or a hub repo id. Weights are kept in `dtype` (default float32) on `device` (default CPU).

    `quantize`: None (float), "int8" or "int4" (quantize the linears on load, see modernlm.quant), or "gguf" (keep a
    GGUF file's own quantized blocks, Q8_0/Q4_0/Q4_1/Q4_K, without a round trip through float)."""
    dtype = parse_dtype(dtype)
    if quantize is not None:
        from .quant.load import load_quantized

        return load_quantized(source, quantize, dtype, device)
    config, state_dict = _read_checkpoint(resolve(source))
    state_dict = {
        k: v.to(dtype=dtype if v.is_floating_point() else v.dtype, device=device) for k, v in state_dict.items()
    }
    model = Transformer.from_state_dict(config, state_dict)
    return model.to(device) if device is not None else model


def load_tokenizer(source: str | os.PathLike | None = None):
    """The tokenizer of a model source: tokenizer.json of a directory, or the vocabulary inside a GGUF file."""
    from .tokenizer import Tokenizer

    path = resolve(source)
    if path.is_file():
        from .checkpoints import gguf_cache

        directory = gguf_cache.converted(path)
        if directory is not None and (directory / "tokenizer.json").is_file():
            return Tokenizer.from_directory(directory)
        return Tokenizer.from_gguf(path)
    return Tokenizer.from_directory(path)


def save_model(model: Transformer, directory: str | os.PathLike, tokenizer=None) -> Path:
    """Write a Hugging Face directory (config.json + model.safetensors [+ tokenizer files]) that transformers loads."""
    from .checkpoints.hf import save_hf

    return save_hf(model, Path(directory), tokenizer)
