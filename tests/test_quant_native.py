"""modernlm's own quantized decode kernels (quant/native.py, native/qgemv.cpp) against float64 math: x rounded to
int8 in blocks of 32 (checked against its definition), then the product with the 4-bit or 8-bit codes equals the
float64 product of those same rounded values with the dequantized weight; batches the kernels do not take go to
torch's; MODERNLM_QUANT_KERNEL=torch switches them off."""

from __future__ import annotations

import pytest
import torch

from modernlm.quant import kernels, native
from modernlm.quant.weights import Int4Weight, Int8Weight

G = torch.Generator().manual_seed(0)
# opt-in kernels (MODERNLM_QUANT_KERNEL=native), built on first use (a minute): the slow suite
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def native_kernels(monkeypatch):
    monkeypatch.setenv("MODERNLM_QUANT_KERNEL", "native")
    if native.load() is None:
        pytest.skip("the native kernels could not be built here")


def test_activation_rounding_follows_its_definition():
    x = torch.randn(3, 96, generator=G) * torch.tensor([0.01, 1.0, 100.0])[:, None]
    x[1, 32:64] = 0  # an all-zero block: scale 0, codes 0
    codes, scales, sums = native.quantize_rows(x)
    blocks = x.double().reshape(3, 3, 32)
    want_scale = blocks.abs().amax(-1) / 127
    torch.testing.assert_close(scales.double(), want_scale, rtol=1e-6, atol=0)
    want = torch.round(blocks / torch.where(want_scale > 0, want_scale, 1)[..., None]).reshape(3, 96)
    assert torch.equal(codes.double(), want) and int(codes.abs().max()) <= 127
    torch.testing.assert_close(sums.double(), want.reshape(3, 3, 32).sum(-1) * scales.double(), rtol=1e-6, atol=0)


def rounded_reference(x: torch.Tensor, weight) -> torch.Tensor:
    """float64: the int8-rounded x (what the kernels multiply) times the dequantized weight."""
    codes, scales, _ = native.quantize_rows(x)
    return native.dequantize_rows(codes, scales).double() @ weight.dequantize().double().T


CASES = [(Int4Weight, 32), (Int4Weight, 64), (Int4Weight, 128), (Int8Weight, None), (Int8Weight, 32)]


@pytest.mark.parametrize("cls,group", CASES, ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("rows", [1, 3, 8])
def test_native_product_equals_float64_on_the_rounded_activations(cls, group, rows):
    w = cls.quantize(torch.randn(80, 256, generator=G), group)
    x = torch.randn(rows, 256, generator=G)
    y = w.matmul(x)
    assert ("_native4" if cls is Int4Weight else "_native8") in w.kernel_cache  # the native kernel ran
    want = rounded_reference(x, w)
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    # and the rounding of x costs about what bf16's does: well under 2% of the output's scale
    exact = x.double() @ w.dequantize().double().T
    assert float((y.double() - exact).abs().max() / exact.abs().max()) < 0.02


def test_larger_batches_and_switched_off_kernels_use_torch(monkeypatch):
    w = Int4Weight.quantize(torch.randn(64, 128, generator=G), 32)
    w.matmul(torch.randn(native.MAX_ROWS + 1, 128, generator=G))
    assert "_native4" not in w.kernel_cache and "_int4pack" in w.kernel_cache
    monkeypatch.setenv("MODERNLM_QUANT_KERNEL", "torch")
    w8 = Int8Weight.quantize(torch.randn(64, 128, generator=G))
    w8.matmul(torch.randn(1, 128, generator=G))
    assert "_native8" not in w8.kernel_cache
    monkeypatch.setenv("MODERNLM_QUANT_KERNEL", "fast")
    with pytest.raises(ValueError, match="MODERNLM_QUANT_KERNEL must be native or torch, got 'fast'"):
        w8.matmul(torch.randn(1, 128, generator=G))


def test_bf16_inputs_and_the_plain_twin():
    w = Int4Weight.quantize(torch.randn(48, 64, generator=G), 32)
    x = torch.randn(2, 64, generator=G)
    y = w.matmul(x.bfloat16())
    assert y.dtype == torch.bfloat16
    with kernels.plain():
        twin = w.matmul(x)
    torch.testing.assert_close(y.double(), twin.double(), rtol=2e-2, atol=2e-2 * float(twin.abs().max()))


@pytest.mark.parametrize("march,isa", [("-march=haswell", "avx2"), ("-march=x86-64", "scalar")])
def test_the_avx2_and_plain_paths_equal_float64_too(tmp_path, monkeypatch, march, isa):
    """The same source built for an AVX2-only CPU and for none of the vector extensions (this machine may have
    AVX-512 VNNI, which the default build uses): each path held to the float64 reference."""
    module = native.compile_module(tmp_path, march, name=f"modernlm_qgemv_{isa}")
    assert module.isa() == isa
    monkeypatch.setattr(native, "_module", module)
    for cls, group in CASES:
        w = cls.quantize(torch.randn(80, 256, generator=G), group)
        x = torch.randn(5, 256, generator=G)
        want = rounded_reference(x, w)
        torch.testing.assert_close(w.matmul(x).double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
