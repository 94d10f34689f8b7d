"""Wrapping a model for data-parallel training with torch's own engines, and getting a plain model back.

- DDP (`DistributedDataParallel`): every process holds the whole model, gradients are averaged by all-reduce during
  the backward pass (in buckets, overlapped with it). Memory per process: the single-process figure.
- FSDP2 (`fully_shard`): each block, then the root (embedding, final norm, head), is one unit whose parameters,
  gradients and optimizer states are split into world_size shards (dim 0, padded). A unit's full parameters are
  all-gathered just before its forward and backward and freed after; gradients are reduce-scattered. Memory per
  process: parameters, gradients and optimizer states divided by world_size, plus the gathered units in flight
  (`modernlm memory --parallel fsdp --world-size N`). A MixedPrecisionPolicy casts the gathered parameters to the
  run's 16-bit dtype and reduces gradients in float32; a CPUOffloadPolicy keeps the shards in CPU memory (GPU runs).
"""

from __future__ import annotations

import copy
import inspect

import torch
from torch import nn

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def wrap_model(model: nn.Module, mode: str, device: torch.device, precision: str, cpu_offload: bool) -> nn.Module:
    """`model` (already on `device`) under DDP or FSDP2; FSDP shards it in place and returns the same module."""
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # no buffer sync in the forward: the only buffers are RoPE's tables, computed identically on every process
        newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        sync = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
        return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True, **sync)
    if mode == "fsdp":
        return shard_model(model, precision, cpu_offload)
    raise ValueError(f"unknown parallel mode {mode!r}; use ddp or fsdp")


def shard_model(model: nn.Module, precision: str, cpu_offload: bool) -> nn.Module:
    """fully_shard each block of the decoder, then the root."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"fsdp shards a decoder block by block; {type(model).__name__} has no `blocks` list")
    dtype = DTYPES.get(precision)
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else MixedPrecisionPolicy()
    offload = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    for block in blocks:
        fully_shard(block, mp_policy=mp, offload_policy=offload)
    fully_shard(model, mp_policy=mp, offload_policy=offload)
    return model


def skeleton(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters are on the meta device (no memory; ties kept), its buffers and attributes
    real: what `plain_from_state` fills with gathered weights after FSDP has sharded the original in place."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad) for p in model.parameters()}
    return copy.deepcopy(model, memo)


def plain_from_state(shell: nn.Module, state: dict[str, torch.Tensor], device: torch.device) -> nn.Module:
    """The skeleton filled with a full state dict (on CPU), moved to `device` (FSDP's plain model: the CPU, so that
    publishing and sampling on rank 0 never hold a second whole model on its GPU)."""
    shell.load_state_dict(state, assign=True)
    missing = [n for n, p in shell.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"the gathered weights miss {missing[:3]}: a bug in the FSDP wrap")
    return shell.to(device)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP (FSDP2 wraps in place: the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
