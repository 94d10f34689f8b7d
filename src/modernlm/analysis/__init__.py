"""Accounting from a config alone: parameters by part, FLOPs by part (forward, training, MFU), training memory and
KV-cache bytes. Tests check each against the real model (parameter count, torch's FlopCounterMode, the allocated
cache, the memory a real training step keeps alive)."""

from .flops import forward_flops, mfu, training_flops
from .kv_cache import kv_cache_bytes
from .memory import activation_bytes, training_memory
from .params import parameter_counts

__all__ = [
    "activation_bytes",
    "forward_flops",
    "kv_cache_bytes",
    "mfu",
    "parameter_counts",
    "training_flops",
    "training_memory",
]
