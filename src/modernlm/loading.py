"""The one loader path: a source -> a local path -> (config, state dict) from its format -> a model on the meta device
filled with `load_state_dict(assign=True)`. And the way back out, `save_model`."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from .checkpoints import gguf_cache
from .checkpoints.base import MODEL_FILES, load_bar
from .checkpoints.generation_config import (
    FALLBACK,
    GREEDY,
    GenerationConfig,
    read_generation_config,
    write_generation_config,
)
from .checkpoints.gguf import chat_template_beside, load_gguf, read_gguf, tokenizer_from_gguf
from .checkpoints.hf import load_hf, read_hf_config, save_hf
from .checkpoints.limits import check_finite, check_memory, check_size, min_parameters
from .checkpoints.native import is_native, load_native, native_config
from .checkpoints.sources import SourceError, resolve
from .config import PRESETS, ModelConfig, preset
from .encoder import Encoder
from .files import atomic_dir, recover
from .model import Transformer
from .quant import KINDS, QuantError
from .quant import quantize as quantize_model
from .quant.load import load_gguf_kept
from .quant.load import parse as parse_quantize
from .seq2seq import Seq2Seq
from .tokenizer import Tokenizer, TokenizerError
from .vit import ViT
from .vlm import VLM

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


def _check_source(source) -> None:
    if source is not None and not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"source must be a model name, a path or a hub repo id (a str or a Path), got {type(source).__name__} "
            f"{source!r}"
        )


def _local_path(source) -> Path:
    """The file or directory a checked source names; a file must be a .gguf (both loaders read one)."""
    _check_source(source)
    if source is not None and not Path(source).expanduser().exists():
        recover(Path(source).expanduser())  # a save killed between the two renames of a swap: put the old one back
    path = resolve(source)
    if path.is_file() and path.suffix != ".gguf":
        raise SourceError(f"{path} is a file but not a .gguf; give a .gguf file or a Hugging Face directory")
    return path


def _converted(path: Path) -> Path | None:
    """For a GGUF file, its converted directory in the cache (made on first use; None when the cache is off)."""
    return gguf_cache.converted(path) if path.is_file() else None


def _format(path: Path) -> str:
    """Which reader a local source needs: "gguf" (a file), "native" (a modernlm run directory) or "hf"."""
    if path.is_file():
        return "gguf"
    if is_native(path):
        return "native"
    if (path / "config.json").is_file():
        return "hf"
    raise SourceError(
        f"{path} holds neither config.json (a Hugging Face directory) nor modernlm_config.json (a modernlm run "
        "directory), and is not a .gguf file"
    )


def _read_checkpoint(path: Path, converted: Path | None):
    kind = _format(path)
    if kind == "gguf":
        return _read_converted(path, converted) if converted is not None else load_gguf(path)
    return load_native(path) if kind == "native" else load_hf(path)


def _read_converted(path: Path, converted: Path):
    """A GGUF file's converted copy; a damaged one (truncated, deleted files) is converted again, not reported."""
    try:
        return load_native(converted)
    except (ValueError, OSError) as e:  # CheckpointError, a config's error, a file gone
        rebuilt = gguf_cache.rebuild(path, e)
    return load_native(rebuilt) if rebuilt is not None else load_gguf(path)


def load_model(
    source: str | os.PathLike | None = None,
    dtype: str | torch.dtype | None = None,
    device=None,
    quantize: str | None = None,
) -> torch.nn.Module:
    """Load a model. `source`: an embedded name (default `smollm2-135m-instruct`), a Hugging Face directory, a .gguf
    file, or a hub repo id. Weights are kept in `dtype` (default float32) on `device` (default CPU).

    `quantize`: None (float), "int8" or "int4" (quantize the linears on load, see modernlm.quant), or "gguf" (keep a
    GGUF file's own quantized blocks, Q8_0/Q4_0/Q4_1/Q4_K, without a round trip through float)."""
    return load(source, dtype, device, quantize, tokenizer=False)[0]


def load(
    source: str | os.PathLike | None = None,
    dtype: str | torch.dtype | None = None,
    device=None,
    quantize: str | None = None,
    tokenizer: bool = True,
) -> tuple[torch.nn.Module, Tokenizer | None]:
    """The model and its tokenizer from one source, resolved once (and a GGUF file's cache entry checked once):
    `model, tok = modernlm.load("smollm2-135m-instruct")`. The arguments are `load_model`'s; `tokenizer=False` skips
    the tokenizer (None in its place)."""
    _check_source(source)
    if not isinstance(tokenizer, bool):
        raise TypeError(f"load's tokenizer must be True or False (whether to load it), got {tokenizer!r:.40}")
    dtype, device = parse_dtype(dtype), parse_device(device)
    kind, group = parse_quantize(quantize) if quantize is not None else (None, None)  # a bad name fails first
    path = _local_path(source)
    _check_fits(path, dtype, kind, device)
    converted = _converted(path)
    if kind == "gguf":
        model = _load_gguf_kept(path, dtype)
    else:
        model = _load_float(path, converted, dtype, None if kind is not None else device)  # quantized on the CPU
        model = quantize_model(model, kind, group_size=group) if kind is not None else model
    model.source = path  # where it came from: save_model copies the tokenizer from there
    model.generation_config = _generation_config_at(path)  # its sampling defaults (checkpoints/generation_config.py)
    model = model.to(device) if device is not None else model
    return model, (_tokenizer_at(path, converted) if tokenizer else None)


def _check_fits(path: Path, dtype: torch.dtype, kind: str | None, device) -> None:
    """Refuse, before anything is built or allocated, a config far bigger than its weight files or than this
    machine's free memory, or a GPU's (checkpoints/limits.py)."""
    if path.is_file():
        entry = gguf_cache.entry_dir(path) if gguf_cache.enabled() else None
        cached = entry is not None and (entry / gguf_cache.DONE).is_file()
        config = native_config(entry) if cached else read_gguf(path).config()  # the conversion reuses the parse
        per_parameter = 0.5 if kind == "gguf" else 4 if not cached else dtype.itemsize  # converted as float32
    elif is_native(path) or (path / "config.json").is_file():
        config = _directory_config(path)
        per_parameter = dtype.itemsize
    else:
        return  # _read_checkpoint names what is missing
    check_size(config, path, per_parameter)
    if device is not None and device.type == "cuda":
        check_memory(min_parameters(config) * (0.5 if kind == "gguf" else dtype.itemsize), f"{path} on {device}",
                     "load it in bfloat16 or quantized, or on a GPU with more free memory", device)  # fmt: skip


def _load_float(path: Path, converted: Path | None, dtype: torch.dtype, device) -> torch.nn.Module:
    config, state_dict = _read_checkpoint(path, converted)
    bar = load_bar(sum(v.nbytes for v in state_dict.values()), f"loading {path.name}")  # a multi-GB file: a bar
    moved = {}
    for k, v in state_dict.items():
        check_finite({k: v}, path)
        moved[k] = v.to(dtype=dtype if v.is_floating_point() else v.dtype, device=device)
        bar.update(v.nbytes)
    bar.close()
    return model_class(config).from_state_dict(config, moved)


def _load_gguf_kept(path: Path, dtype: torch.dtype) -> torch.nn.Module:
    if not (path.is_file() and path.suffix == ".gguf"):
        raise QuantError(
            f"quantize='gguf' keeps a GGUF file's own blocks, and {path} is not a .gguf file; "
            f"use {' or '.join(repr(k) for k in KINDS)} to quantize it"
        )
    return load_gguf_kept(path, dtype)


def load_config(source: str | os.PathLike | None = None) -> ModelConfig:
    """A model's configuration without its weights: a preset name (`modernlm.config.PRESETS`), a ModelConfig JSON
    file, or any `load_model` source (a GGUF file's metadata and tensor shapes; a directory's config file)."""
    _check_source(source)
    if source is not None and str(source) in PRESETS and not Path(source).exists():
        return preset(str(source))
    if source is not None and str(source).endswith(".json") and Path(source).is_file():
        return ModelConfig.from_json(Path(source)).validate()
    try:
        path = _local_path(source)
        kind = _format(path)
    except SourceError as e:
        raise SourceError(f"{e}; or a preset: {', '.join(PRESETS)}; or a ModelConfig .json file") from e
    config = read_gguf(path).config() if kind == "gguf" else _directory_config(path)
    check_size(config, path, None)  # a config far bigger than its weights is refused here too
    return config


def load_generation_config(source: str | os.PathLike | None = None) -> GenerationConfig:
    """A source's sampling defaults: its generation_config.json, or the fallback (temperature 0.7, top-p 0.9) for a
    source without one (a GGUF file, a run directory). `load` sets them as `model.generation_config`."""
    return _generation_config_at(_local_path(source))


def _generation_config_at(path: Path) -> GenerationConfig:
    found = read_generation_config(path) if path.is_dir() else None
    return found if found is not None else FALLBACK


def _directory_config(path: Path) -> ModelConfig:
    return native_config(path) if is_native(path) else read_hf_config(path)


def model_class(config) -> type[torch.nn.Module]:
    """The module of the config's member: the decoder, the encoder (BERT), the encoder-decoder (T5), ViT or the
    vision-language model."""
    return MEMBERS[config.family]


MEMBERS = {"decoder": Transformer, "encoder": Encoder, "seq2seq": Seq2Seq, "vit": ViT, "vlm": VLM}


def load_tokenizer(source: str | os.PathLike | None = None) -> Tokenizer:
    """The tokenizer of a model source: tokenizer.json of a directory, or the vocabulary inside a GGUF file."""
    path = _local_path(source)
    return _tokenizer_at(path, _converted(path))


def _tokenizer_at(path: Path, converted: Path | None) -> Tokenizer:
    if not path.is_file():
        return Tokenizer.from_directory(path)
    tokenizer = _gguf_tokenizer(path, converted)
    if tokenizer.chat_template is None:  # a file without one: the template beside it, if any (not cached with it)
        tokenizer.chat_template = chat_template_beside(path)
    return tokenizer


def _gguf_tokenizer(path: Path, converted: Path | None) -> Tokenizer:
    if converted is not None and (converted / "tokenizer.json").is_file():
        try:
            return Tokenizer.from_directory(converted)
        except TokenizerError as e:  # a damaged copy: converted again, else read from the GGUF file itself
            rebuilt = gguf_cache.rebuild(path, e)
            if rebuilt is not None and (rebuilt / "tokenizer.json").is_file():
                return Tokenizer.from_directory(rebuilt)
    return tokenizer_from_gguf(path)


def save_model(model: torch.nn.Module, directory: str | os.PathLike, tokenizer=None) -> Path:
    """Write a Hugging Face directory (config.json + model.safetensors + tokenizer files, and a decoder's
    generation_config.json: its sampling defaults) that transformers loads.
    The tokenizer is `tokenizer`, or that of the source the model was loaded from; a model built in Python without
    one is saved without it, with a notice (give tokenizer= to make the directory usable for generation).

    The directory is written whole beside the old one and swapped in at once (`files.atomic_dir`): a kill at any
    moment leaves the old model or the new one, weights and tokenizer together. Other files in it are kept."""
    with staged_save(model, directory, tokenizer):
        pass
    return Path(directory)


@contextlib.contextmanager
def staged_save(model: torch.nn.Module, directory: str | os.PathLike, tokenizer=None) -> Iterator[Path]:
    """`save_model`, with the staging directory yielded once the model is written there, so that a caller can add to
    it or change it (a reward model's head) before the whole directory replaces the old one."""
    directory, tokenizer = _check_save(model, directory, tokenizer)
    needed = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    with atomic_dir(directory, replaces=MODEL_FILES, needed=needed) as staging:
        save_hf(model, staging, tokenizer)
        if model.config.family == "decoder":  # its sampling defaults travel with it (GREEDY for a model built here)
            write_generation_config(staging, getattr(model, "generation_config", None) or GREEDY, tokenizer)
        yield staging


def _check_save(model, directory, tokenizer) -> tuple[Path, Tokenizer | None]:
    """save_model's arguments checked (swapped ones named), and the tokenizer to write: the given or the source's."""
    if isinstance(model, (str, os.PathLike)) and isinstance(directory, torch.nn.Module):
        raise TypeError("save_model(model, directory): the arguments are swapped; the model comes first")
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise TypeError(
            f"save_model takes a modernlm model (from load_model or Transformer), got {type(model).__name__}"
        )
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"save_model's directory must be a str or a Path, got {type(directory).__name__}")
    if tokenizer is not None and not callable(getattr(tokenizer, "save", None)):
        raise TypeError(f"save_model's tokenizer must be a modernlm Tokenizer or None, got {type(tokenizer).__name__}")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} is a file; save_model writes a directory: give a directory path")
    if tokenizer is None and getattr(model, "source", None) is not None:
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
    return directory, tokenizer
