"""The CPU kernels against their plain twins: float64 matmul, and the model with kernels off."""

from __future__ import annotations

import pytest
import torch

from modernlm import Transformer, kernels, preset
from modernlm.layers.kv_cache import KVCache


@pytest.fixture(scope="module")
def built():
    kernels.build()  # CI has a compiler; a failure here is a real failure
    return kernels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows, k, n", [(1, 576, 192), (3, 100, 37), (8, 1536, 64), (11, 17, 5), (16, 64, 300)])
def test_rowdot_matches_float64(built, dtype, rows, k, n):
    torch.manual_seed(rows)
    x, w = torch.randn(rows, k).to(dtype), torch.randn(n, k).to(dtype)
    expected = x.double() @ w.double().T
    got = built._state["module"].rowdot(x, w)
    assert got.dtype == dtype
    tol = 1e-4 * k**0.5 if dtype == torch.float32 else 0.02 * expected.abs().max().item()
    torch.testing.assert_close(got.double(), expected, atol=tol, rtol=0 if dtype == torch.float32 else 0.01)


def test_linear_equals_f_linear_below_and_above_the_row_limit(built):
    x, w, b = torch.randn(4, 5, 64), torch.randn(32, 64), torch.randn(32)
    with kernels.use_kernels(), torch.no_grad():
        small = kernels.linear(x[:2, :2], w, b)  # 4 rows: the kernel
        large = kernels.linear(x, w, b)  # 20 rows: F.linear
    torch.testing.assert_close(small, torch.nn.functional.linear(x[:2, :2], w, b), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(large, torch.nn.functional.linear(x, w, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decoding_with_kernels_matches_plain_torch(built, dtype):
    torch.manual_seed(0)
    model = Transformer(preset("llama-tiny", n_kv_heads=2, tie_embeddings=True)).eval().to(dtype)
    ids = torch.randint(0, 512, (2, 12))
    outputs = []
    for enabled in (False, True):
        cache = KVCache.for_model(model, 2, 16)
        with torch.no_grad(), kernels.use_kernels(enabled):
            steps = [model(ids[:, t : t + 1], input_pos=torch.tensor([t]), cache=cache) for t in range(12)]
        outputs.append(torch.cat(steps, 1))
    tol = 1e-4 if dtype == torch.float32 else 0.1
    torch.testing.assert_close(outputs[1], outputs[0], atol=tol, rtol=0)
