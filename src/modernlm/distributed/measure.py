"""Measured per-process memory of a sharded (or replicated) model: the bytes of the storages this process holds for
its parameters, gradients and optimizer states (each storage once), to check `analysis.memory.per_rank_memory`."""

from __future__ import annotations

import torch


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # a DTensor's shard on this process


def _bytes(tensors, seen: set[int]) -> int:
    total = 0
    for t in tensors:
        storage = _local(t).untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def local_state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """{"parameters", "gradients", "optimizer_states"}: bytes this process holds (call after backward, before
    zero_grad). Optimizer states count the moment tensors, not AdamW's scalar step counters."""
    seen: set[int] = set()
    params = list(model.parameters())
    states = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
    return {
        "parameters": _bytes(params, seen),
        "gradients": _bytes([p.grad for p in params if p.grad is not None], seen),
        "optimizer_states": _bytes(states, seen),
    }


def padding_bound(model: torch.nn.Module, world_size: int) -> int:
    """Elements FSDP2 may add on one process by padding each parameter's first dimension to a multiple of
    world_size (at most world_size - 1 rows of each tensor)."""
    return sum((world_size - 1) * (p.numel() // max(p.shape[0], 1)) for p in model.parameters())
