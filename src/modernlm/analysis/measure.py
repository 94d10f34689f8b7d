"""Measured memory: the bytes of tensors alive while a piece of code runs, counted as torch's ops create them.

On CPU torch has no `max_memory_allocated`, and RSS mixes in the allocator's caching and fragmentation; this counts
exactly what is live. `LiveBytes` sees every storage an op creates inside the mode and drops it when the last tensor
on it dies; tensors that existed before (parameters, buffers: pass their storages in `skip`) are not counted.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """`now`: bytes of storages created inside the mode and still alive; `peak`: the most at any moment."""

    def __init__(self, skip: set[int] | None = None) -> None:
        super().__init__()
        self.skip, self.refs, self.size, self.now, self.peak = skip or set(), {}, {}, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                key = t.untyped_storage().data_ptr()
                if key == 0 or key in self.skip:
                    continue
                if key not in self.refs:
                    self.refs[key], self.size[key] = 0, t.untyped_storage().nbytes()
                    self.now += self.size[key]
                    self.peak = max(self.peak, self.now)
                self.refs[key] += 1
                weakref.finalize(t, self._release, key)
        return out

    def _release(self, key: int) -> None:
        self.refs[key] -= 1
        if not self.refs[key]:
            del self.refs[key]
            self.now -= self.size.pop(key)


def storages_of(module: torch.nn.Module) -> set[int]:
    """The storages of a module's parameters and buffers, to leave out of a measurement."""
    return {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers()]}
