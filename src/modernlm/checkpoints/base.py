"""What every Hugging Face checkpoint module shares, below hf.py and its members (gpt2.py, family.py and its tables):
the error they raise, the positive-integer check on size fields, and the directory writer every member's save ends in.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from ..files import atomic_path, write_json

LARGE_LOAD = 1 << 30  # bytes from which a load shows a bar (a 135M model loads in about a second: no bar)


def load_bar(total_bytes: int, what: str) -> tqdm:
    """A bar over the bytes of a large load (stderr, gone when done); disabled below LARGE_LOAD bytes."""
    return tqdm(total=total_bytes, desc=what, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
                file=sys.stderr, disable=total_bytes < LARGE_LOAD)  # fmt: skip
# What a saved model directory consists of: a save replaces all of these (written or not: an old shard index the new
# save has no use for would shadow its weights) and keeps anything else found in the directory.
MODEL_FILES = (
    "config.json", "generation_config.json", "modernlm_config.json", "model.safetensors", "model-*.safetensors",
    "model.safetensors.index.json", "tokenizer*", "special_tokens_map.json", "added_tokens.json", "chat_template.*",
    "vocab.*", "merges.txt",
)  # fmt: skip


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or written; the message names the file and the fix."""


def positive_field(hf: dict[str, Any], name: str, where: str) -> int:
    """A field of an HF config that sizes are computed from: a positive integer, or CheckpointError naming it."""
    value = hf[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CheckpointError(f"{where}: {name} must be a positive integer, got {value!r}; fix or restore config.json")
    return value


def bool_field(hf: dict[str, Any], name: str, default: bool, where: str = "config.json") -> bool:
    """A yes/no field of an HF config: a JSON boolean (absent or null: `default`), never a truthy string
    (`"tie_word_embeddings": "false"` would otherwise tie the embeddings and drop the LM head)."""
    value = hf.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise CheckpointError(f"{where}: {name} must be true or false (a JSON boolean), got {value!r}; fix config.json")
    return value


def write_directory(directory: Path, tensors: dict[str, torch.Tensor], hf_config: dict, tokenizer=None) -> Path:
    """model.safetensors, config.json (and the tokenizer, if given), each written atomically: every member's save."""
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})
    write_json(directory / "config.json", hf_config)
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory


def decoder_shape(cfg) -> dict:
    """A decoder's sizes under the names every transformers decoder config uses."""
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.ffn_hidden,
    }
