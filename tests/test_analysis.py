"""Accounting against measurement: parameters vs the model, FLOPs vs FlopCounterMode, KV bytes vs the cache."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from modernlm import Transformer, preset
from modernlm.analysis import forward_flops, kv_cache_bytes, parameter_counts
from modernlm.layers.kv_cache import KVCache

VARIANTS = [
    dict(),
    dict(n_kv_heads=1, tie_embeddings=True),
    dict(qkv_bias=True, out_bias=True, mlp_bias=True),
    dict(norm="layernorm", ffn="gelu"),
    dict(ffn="geglu", head_dim=32),
]


@pytest.mark.parametrize("fields", VARIANTS)
def test_parameter_counts_match_model(fields):
    model = Transformer(preset("llama-tiny", **fields))
    assert parameter_counts(model.config)["total"] == model.num_parameters()


def test_parameter_parts_of_smollm2_shape():
    counts = parameter_counts(preset("smollm2-135m"))
    # 30 layers of 576 wide: attention q,o 576x576, k,v 576x192; SwiGLU 3 x 576 x 1536; tied head.
    assert counts["attention"] == 30 * (2 * 576 * 576 + 2 * 576 * 192)
    assert counts["ffn"] == 30 * 3 * 576 * 1536
    assert counts["total"] == 134_515_008  # SmolLM2-135M's published 134.5 M parameters


@pytest.mark.parametrize("fields", VARIANTS[:3])
def test_forward_flops_match_flop_counter(fields):
    model = Transformer(preset("llama-tiny", **fields)).eval()
    ids = torch.randint(0, 512, (2, 40))
    # The math backend: torch's CPU flash-attention op has no FLOP formula registered (it would count 0); the math
    # path computes the same dense Q K^T and weights x V products as matmuls, which the counter sees.
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(ids)
    assert forward_flops(model.config, seq_len=40, batch_size=2)["total"] == counter.get_total_flops()


def test_kv_cache_bytes_match_allocation():
    cfg = preset("llama-tiny", n_kv_heads=2)
    cache = KVCache(cfg, batch_size=3, max_len=50, dtype=torch.bfloat16)
    assert kv_cache_bytes(cfg, tokens=50, batch_size=3, dtype=torch.bfloat16) == cache.nbytes()
    # the 7B-shaped model at 4K tokens in fp16: 2 x 32 x 32 x 128 x 4096 x 2 bytes = 2 GiB
    assert kv_cache_bytes(preset("llama-7b"), tokens=4096, dtype=torch.float16) == 2 * 1024**3
