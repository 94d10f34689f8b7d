"""KV-cache size: 2 (K and V) x layers x kv heads x head dim x tokens x bytes per element; with a rolling cache
(layers/kv_cache.RollingKVCache) a sliding-window layer holds min(tokens, window) positions instead of tokens. An int8
cache (layers/kv_cache.Int8KVCache) adds a float16 scale per head and token: head dim + 2 bytes instead."""

from __future__ import annotations

import torch

from ..config import ModelConfig


def kv_cache_bytes(
    cfg: ModelConfig, tokens: int = 1, batch_size: int = 1, dtype: torch.dtype = torch.float32, rolling: bool = False
) -> int:
    per_vector = cfg.head_dim + 2 if dtype == torch.int8 else cfg.head_dim * torch.empty((), dtype=dtype).element_size()
    held = sum(min(tokens, cfg.layer_window(i)) if rolling and cfg.layer_window(i) else tokens
               for i in range(cfg.n_layers))  # fmt: skip
    return 2 * held * cfg.n_kv_heads * batch_size * per_vector
