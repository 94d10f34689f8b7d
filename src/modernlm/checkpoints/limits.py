"""Bounds on the work an untrusted model file can ask for, checked before anything is allocated.

A config (config.json, GGUF metadata, modernlm_config.json) says how big the model is; a hostile or broken one can
claim 10^9 layers or a vocabulary of 10^12, and building that model, even on the meta device, hangs or exhausts memory.
`check_size` compares the least the config implies (`min_parameters`, a lower bound: embeddings and the attention and
FFN matrices of every layer) with what the weight files hold on disk and with the memory this machine has free, and
refuses with the numbers and the fix. `check_finite` refuses weights holding NaN or Inf, on every load path (float
loads, and a GGUF's blocks kept quantized, whose scales are checked).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .base import CheckpointError

# The fewest bytes a stored parameter takes in a file we read (GGUF's 2-bit K-quants: ~2.6 bits), so a file may hold
# quantized weights; a config needing far more than this is not the config of these weights.
MIN_BYTES_PER_PARAMETER = 0.25


def min_parameters(config) -> int:
    """A lower bound on the parameters of a model of `config` (any member): the token embedding, and per layer the
    query and output projections and two FFN matrices."""
    d = config.d_model
    heads = config.n_heads * (config.head_dim or d // max(config.n_heads, 1))
    hidden = config.ffn_hidden or d
    layers = config.n_layers + ((config.n_decoder_layers or config.n_layers) if config.family == "seq2seq" else 0)
    embed = 0 if config.family == "vit" else config.vocab_size * d
    return embed + layers * (2 * d * heads + 2 * d * hidden)


_CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),  # v1
)


def available_memory() -> int | None:
    """Bytes of memory this process may still use: MemAvailable plus free swap, capped by a cgroup limit; None
    where the system does not say (no check is made then)."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        free = (int(info["MemAvailable"].split()[0]) + int(info.get("SwapFree", "0 kB").split()[0])) * 1024
    except (OSError, KeyError, ValueError):
        return None
    for limit, used in _CGROUP_FILES:
        try:
            free = min(free, int(Path(limit).read_text()) - int(Path(used).read_text()))
        except (OSError, ValueError):  # no such cgroup file, or "max"
            continue
    return free


def weight_bytes(path: Path) -> int:
    """What the weights of a source take on disk: a GGUF file's size, or a directory's .safetensors files'."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.glob("*.safetensors") if f.is_file())


def check_size(config, path: Path, bytes_per_parameter: float | None) -> None:
    """Refuse a config that needs far more than its weight files hold, or (`bytes_per_parameter`: the bytes each
    loaded parameter takes; None for a config alone) more memory than this machine has free."""
    need = min_parameters(config)
    on_disk = weight_bytes(path)
    if on_disk and need * MIN_BYTES_PER_PARAMETER > on_disk:
        raise CheckpointError(
            f"{path}: the config describes a model of at least {need:,} parameters ({config.n_layers:,} layers, "
            f"vocabulary {config.vocab_size:,}, width {config.d_model:,}), but the weights hold only {on_disk:,} "
            "bytes: the config does not belong to these weights (or the file is damaged); restore it from its source"
        )
    free = available_memory() if bytes_per_parameter else None
    if free is not None and need * bytes_per_parameter > free:
        raise CheckpointError(
            f"{path}: loading it needs at least {need * bytes_per_parameter / 2**30:.1f} GiB ({need:,} parameters at "
            f"{bytes_per_parameter:g} bytes), and this machine has {free / 2**30:.1f} GiB free; load it in bfloat16 "
            "(dtype='bfloat16', --dtype bf16), quantized (quantize='int4' / 'gguf'), or on a machine with more memory"
        )


def kv_bytes(config, rows: int, length: int, itemsize: int) -> int:
    """The bytes of a decoder's KV cache: keys and values of every layer, for `rows` sequences of `length`."""
    return 2 * config.n_layers * rows * length * (config.n_kv_heads or config.n_heads) * config.head_dim * itemsize


def device_memory(device) -> int | None:
    """Free bytes where tensors on `device` live: a CUDA GPU's own memory, else this machine's (None: unknown)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):  # no driver to ask: no check
            return None
    return available_memory() if device.type == "cpu" else None


def check_memory(need: int, what: str, fix: str, device=None) -> None:
    """ValueError when `need` bytes (for `what`) are more than `device` (default: this machine's memory) has free;
    `fix` says what to do."""
    free = device_memory(device)
    if free is not None and need > free:
        raise ValueError(
            f"{what} needs about {need / 2**30:.1f} GiB, and this machine has {free / 2**30:.1f} GiB free: {fix}"
        )


def check_finite(state_dict: dict[str, torch.Tensor], source) -> None:
    """Refuse weights holding NaN or Inf (a corrupt or badly converted file gives garbage, or token 0 forever).
    One pass over the floating-point tensors, a fraction of the load time."""
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{source}: the weight {name} holds {bad} NaN/Inf value(s); the checkpoint is corrupt or was "
                "converted wrongly: download or convert it again"
            )
