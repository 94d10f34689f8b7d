"""The one loader path: a source -> a local path -> (config, state dict) from its format -> a model on the meta device
filled with `load_state_dict(assign=True)`. And the way back out, `save_model`."""

from __future__ import annotations

import logging
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
        if not dtype.is_floating_point:
            raise ValueError(f"dtype {dtype} is not a floating-point type; use one of {', '.join(_DTYPES)}")
        return dtype
    if str(dtype) not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    return _DTYPES[str(dtype)]


def parse_device(device: str | torch.device | None) -> torch.device | None:
    """A torch device that exists here, or a clear error (an unknown name, CUDA or MPS without the hardware)."""
    if device is None:
        return None
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda:0', got {type(device).__name__} {device!r}")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {str(device)!r}; use 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but torch sees no CUDA GPU here; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r}: there are {torch.cuda.device_count()} CUDA devices here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' asked for, but this machine has no Apple GPU; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {str(device)!r} is not supported; use 'cpu', 'cuda' or 'mps'")
    return device


def check_finite(state_dict: dict[str, torch.Tensor], source) -> None:
    """Refuse weights holding NaN or Inf (a corrupt or badly converted file gives garbage, or token 0 forever).
    One pass over the floating-point tensors, a fraction of the load time."""
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(
                f"{source}: the weight {name} holds {bad} NaN/Inf value(s); the checkpoint is corrupt or was "
                "converted wrongly: download or convert it again"
            )


def _check_source(source) -> None:
    if source is not None and not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"source must be a model name, a path or a hub repo id (a str or a Path), got {type(source).__name__} "
            f"{source!r}"
        )


def _local_path(source) -> Path:
    """The file or directory a checked source names; a file must be a .gguf (both loaders read one)."""
    _check_source(source)
    path = resolve(source)
    if path.is_file() and path.suffix != ".gguf":
        raise SourceError(f"{path} is a file but not a .gguf; give a .gguf file or a Hugging Face directory")
    return path


def _read_checkpoint(path: Path):
    if path.is_file():
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
    _check_source(source)
    dtype, device = parse_dtype(dtype), parse_device(device)
    if quantize is not None:
        from .quant.load import load_quantized

        return load_quantized(source, quantize, dtype, device)
    path = _local_path(source)
    config, state_dict = _read_checkpoint(path)
    check_finite(state_dict, path)
    state_dict = {
        k: v.to(dtype=dtype if v.is_floating_point() else v.dtype, device=device) for k, v in state_dict.items()
    }
    model = model_class(config).from_state_dict(config, state_dict)
    model.source = path  # where it came from: save_model copies the tokenizer from there
    return model.to(device) if device is not None else model


def model_class(config) -> type[torch.nn.Module]:
    """The module of the config's member: the decoder, the encoder (BERT), the encoder-decoder (T5) or ViT."""
    from importlib import import_module

    module, name = MEMBERS[config.family]
    return Transformer if name == "Transformer" else getattr(import_module(module, __package__), name)


MEMBERS = {
    "decoder": (".model", "Transformer"),
    "encoder": (".encoder", "Encoder"),
    "seq2seq": (".seq2seq", "Seq2Seq"),
    "vit": (".vit", "ViT"),
}


def load_tokenizer(source: str | os.PathLike | None = None):
    """The tokenizer of a model source: tokenizer.json of a directory, or the vocabulary inside a GGUF file."""
    from .tokenizer import Tokenizer

    path = _local_path(source)
    if path.is_file():
        from .checkpoints import gguf_cache
        from .checkpoints.gguf import tokenizer_from_gguf

        directory = gguf_cache.converted(path)
        if directory is not None and (directory / "tokenizer.json").is_file():
            return Tokenizer.from_directory(directory)
        return tokenizer_from_gguf(path)
    return Tokenizer.from_directory(path)


def save_model(model: Transformer, directory: str | os.PathLike, tokenizer=None) -> Path:
    """Write a Hugging Face directory (config.json + model.safetensors + tokenizer files) that transformers loads.
    The tokenizer is `tokenizer`, or that of the source the model was loaded from; a model built in Python without
    one is saved without it, with a notice (give tokenizer= to make the directory usable for generation)."""
    from .checkpoints.hf import save_hf

    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise TypeError(
            f"save_model takes a modernlm model (from load_model or Transformer), got {type(model).__name__}"
        )
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} is a file; save_model writes a directory: give a directory path")
    if tokenizer is None and getattr(model, "source", None) is not None:
        from .tokenizer import TokenizerError

        try:
            tokenizer = load_tokenizer(model.source)
        except (TokenizerError, SourceError):  # a source without a tokenizer: the notice below says so
            pass
    if tokenizer is None:
        logging.getLogger("modernlm").warning(
            "saving %s without a tokenizer (the model was not loaded from a source that has one): pass "
            "save_model(model, directory, tokenizer=...) to generate from the directory",
            directory,
        )
    return save_hf(model, directory, tokenizer)
