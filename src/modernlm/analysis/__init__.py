"""Accounting from a config alone: parameters by part, FLOPs by part, KV-cache bytes. Tests check each against the
real model (parameter count, torch's FlopCounterMode, the allocated cache)."""

from .flops import forward_flops
from .kv_cache import kv_cache_bytes
from .params import parameter_counts

__all__ = ["forward_flops", "kv_cache_bytes", "parameter_counts"]
