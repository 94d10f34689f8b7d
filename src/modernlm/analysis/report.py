"""The reports `modernlm flops` and `modernlm memory` print, as plain dicts, for any member: a decoder's FLOPs per
token by part and its training memory with and without activation checkpointing (flops.py, memory.py), an encoder's,
encoder-decoder's or ViT's forward FLOPs and training step (family.py). The checks of what a member's report can
count are made here, before anything is computed; the CLI only prints."""

from __future__ import annotations

import functools

import torch

from ..config import ModelConfig
from .family import generation_cache_bytes, member_forward_flops, member_training_memory
from .flops import forward_flops, training_flops
from .kv_cache import kv_cache_bytes
from .memory import PRECISIONS, per_rank_memory, training_memory
from .params import adapter_parameters, parameter_counts

FLOPS_PARTS = ("qkv_projection", "attention_scores", "softmax", "attention_values", "output_projection", "ffn",
               "lm_head", "recompute")  # fmt: skip


MEMBER_NAMES = {"decoder": "a decoder", "encoder": "an encoder", "seq2seq": "an encoder-decoder", "vit": "a ViT"}


def a_member(family: str) -> str:
    """The member named with its article, as a sentence says it: "an encoder", "a ViT"."""
    return MEMBER_NAMES.get(family, f"a {family}")


def member_tokens(cfg: ModelConfig, seq_len: int | None) -> int:
    """The tokens of one sequence: a ViT's come from its image (patches + [CLS]), the others' from `seq_len` (default:
    the model's max_seq_len)."""
    return cfg.n_patches + 1 if cfg.family == "vit" else seq_len or cfg.max_seq_len


def flops_report(cfg: ModelConfig, seq_len: int, batch_size: int, checkpointing: bool) -> dict:
    """A decoder's matmul FLOPs per token by part, forward and training."""
    tokens = seq_len * batch_size
    fwd = forward_flops(cfg, seq_len, batch_size)
    train = training_flops(cfg, seq_len, batch_size, activation_checkpointing=checkpointing)
    return {
        "seq_len": seq_len,
        "batch_size": batch_size,
        "parameters": parameter_counts(cfg)["total"],
        "forward_per_token": {k: fwd[k] / tokens for k in FLOPS_PARTS if k in fwd},
        "training_per_token": {k: train[k] / tokens for k in FLOPS_PARTS if k in train},
        "forward_total_per_token": fwd["per_token"],
        "training_total_per_token": train["per_token"],
        "note": "matmul FLOPs (2 per multiply-add); softmax (3 per score) is listed apart and not in the totals",
    }


def member_flops_report(cfg: ModelConfig, seq_len: int | None, batch_size: int, checkpointing: bool) -> dict:
    """An encoder's, encoder-decoder's (source and target of `seq_len` tokens) or ViT's forward FLOPs by part."""
    if checkpointing:
        raise ValueError(f"--checkpointing is counted for the decoder only, not {a_member(cfg.family)}")
    T = member_tokens(cfg, seq_len)
    parts = member_forward_flops(cfg, T, target_len=T, batch_size=batch_size)
    return {"family": cfg.family, "seq_len": T, "batch_size": batch_size, "forward": parts}


# The dtypes a KV cache is kept in (torch also names int1...int7 and others no cache uses: `--kv-dtype int3` is a typo)
KV_DTYPES = ("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "int8")


def memory_report(
    cfg: ModelConfig,
    batch_size: int,
    seq_len: int,
    precision: str,
    optimizer: str,
    device: str,
    kv_dtype: str,
    adapters: dict[str, int] | None = None,
    quantize: str | None = None,
    parallel: str = "none",
    world_size: int = 1,
) -> dict:
    """A decoder's training memory (per process of `world_size` under `parallel`, `batch_size` the global batch) and
    KV-cache bytes."""
    kw = dict(precision=precision, optimizer=optimizer, device=device, adapters=adapters, quantize=quantize)
    if adapters is not None:
        kw["trainable_parameters"] = adapter_parameters(cfg, adapters)
    if parallel == "none" and world_size > 1:
        raise ValueError(f"--world-size {world_size} needs --parallel ddp or fsdp")
    memory = training_memory
    if parallel != "none":
        memory = functools.partial(per_rank_memory, world_size=world_size, parallel=parallel)
    dtype = getattr(torch, kv_dtype, None) if kv_dtype in KV_DTYPES else None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown kv dtype {kv_dtype!r}; use one of {', '.join(KV_DTYPES)}")
    return {
        "batch_size": batch_size,
        "seq_len": seq_len,
        "precision": precision,
        "optimizer": optimizer,
        "parallel": parallel,
        "world_size": world_size,
        "training": memory(cfg, batch_size, seq_len, activation_checkpointing=False, **kw),
        "training_checkpointed": memory(cfg, batch_size, seq_len, activation_checkpointing=True, **kw),
        "kv_cache_bytes": kv_cache_bytes(cfg, tokens=seq_len, batch_size=batch_size, dtype=dtype),
        "kv_cache_bytes_per_token": kv_cache_bytes(cfg, dtype=dtype),
    }


def check_member_request(cfg: ModelConfig, name: str, *, seq_len, target_len, padded: bool, lora: bool) -> None:
    """Refuse the counts a member's report cannot make, naming the flag: LoRA/QLoRA and the decoder's options for an
    encoder, encoder-decoder or ViT; the encoders' options for a decoder."""
    if cfg.family in ("decoder", "vlm"):
        if target_len is not None or padded:
            raise ValueError(f"--target-len and --padded describe encoders and encoder-decoders; {name} is a decoder")
        return
    if lora:
        raise ValueError(f"--targets and --quantize count decoder fine-tuning; {name} is {a_member(cfg.family)}")
    if cfg.family == "vit" and (seq_len or target_len):
        raise ValueError(f"a ViT's tokens come from its image ({cfg.n_patches} patches + [CLS]); drop --seq-len")
    if cfg.family != "seq2seq" and target_len:
        raise ValueError(f"--target-len is an encoder-decoder's decoder length; {name} is {a_member(cfg.family)}")


def member_memory_report(
    cfg: ModelConfig, batch_size: int, seq_len: int | None, target_len: int | None, precision: str, optimizer: str,
    *, padded: bool, device: str,
) -> dict:  # fmt: skip
    """An encoder's, encoder-decoder's or ViT's training step by part; an encoder-decoder's generation cache too."""
    seq_len = member_tokens(cfg, seq_len)
    target_len = target_len or seq_len
    mem = member_training_memory(cfg, batch_size, seq_len, target_len, precision, optimizer, padded=padded,
                                 device=device)  # fmt: skip
    report = {"family": cfg.family, "batch_size": batch_size, "seq_len": seq_len, "precision": precision,
              "optimizer": optimizer, "training": mem}  # fmt: skip
    if cfg.family == "seq2seq":
        report["target_len"] = target_len
        report["generation_cache_bytes"] = generation_cache_bytes(cfg, seq_len, target_len, PRECISIONS[precision])
    return report
