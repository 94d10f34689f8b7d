"""KV-cache size: 2 (K and V) x layers x kv heads x head dim x tokens x bytes per element."""

from __future__ import annotations

import torch

from ..config import ModelConfig


def kv_cache_bytes(cfg: ModelConfig, tokens: int = 1, batch_size: int = 1, dtype: torch.dtype = torch.float32) -> int:
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * tokens * batch_size * element
