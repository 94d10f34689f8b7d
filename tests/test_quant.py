"""Quantized linears against their plain twin (dequantize, then a float64 matmul), torch's fused kernels against the
twin (modernlm's own decode kernels have tests/test_quant_native.py), the clean fallback where a kernel is missing,
and quantize() on whole models with its bad-input errors."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

import modernlm
from modernlm.finetune.lora import LoraConfig, apply_lora
from modernlm.generation import generate
from modernlm.quant import (
    KINDS,
    Int4Weight,
    Int8Weight,
    QuantEmbedding,
    QuantError,
    QuantLinear,
    dequantize_model,
    kernels,
    plain,
    quantize,
    summary,
)

G = torch.Generator().manual_seed(0)


@pytest.fixture(autouse=True)
def torch_kernels(monkeypatch):
    """These tests hold torch's fused kernels to the twin at every batch size (test_quant_native.py: ours)."""
    monkeypatch.setenv("MODERNLM_QUANT_KERNEL", "torch")


CASES = [("int8", None), ("int8", 32), ("int8", 64), ("int4", 32), ("int4", 64), ("int4", 128)]


def reference(x: torch.Tensor, w) -> torch.Tensor:
    """float64 x @ dequantize(W).T: the independent arithmetic the kernels are held to."""
    return x.double() @ w.dequantize().double().T


def test_registry_lists_the_kinds():
    assert set(KINDS) == {"int8", "int4"}
    assert KINDS["int8"] is Int8Weight and KINDS["int4"] is Int4Weight
    for name, cls in KINDS.items():
        assert cls.kind == name and cls.group_sizes


@pytest.mark.parametrize("kind,group", CASES)
def test_integer_part_round_trips_exactly(kind, group):
    w = torch.randn(64, 256, generator=G)
    q = KINDS[kind].quantize(w, group)
    if kind == "int4":
        codes = q.codes()
        assert codes.max() <= 15
        again = Int4Weight.from_codes(codes, q.scales, q.zeros, group)
        assert torch.equal(again.packed, q.packed)
        deq = (codes.double() - 8) * q.scales.double().repeat_interleave(group, 1) + q.zeros.double().repeat_interleave(
            group, 1
        )
        step = q.scales.repeat_interleave(group, 1)
    else:
        assert q.qweight.abs().max() <= 127
        gs = 256 if group is None else group
        deq = q.qweight.double() * q.scales.double().repeat_interleave(gs, 1)
        step = q.scales.repeat_interleave(gs, 1)
    torch.testing.assert_close(q.dequantize().double(), deq, rtol=0, atol=1e-6)
    assert ((q.dequantize() - w).abs() <= step / 2 + 1e-6).all()  # round to nearest: at most half a step off


def assert_bf16_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Within a bf16 result's rounding (2^-8 relative) of the float64 product, plus float32 summation."""
    torch.testing.assert_close(got.double(), want, rtol=2**-7, atol=2**-7 * float(want.abs().max()))


@pytest.mark.parametrize("kind,group", CASES)
@pytest.mark.parametrize("rows", [1, 3, 33])
def test_fast_product_equals_the_twin(kind, group, rows):
    """The fused kernels take x rounded to bf16 (kernels.py); held to float64 on that same rounded x. The twin
    computes in float32 and is held to float64 on x itself."""
    w = KINDS[kind].quantize(torch.randn(96, 256, generator=G), group)
    x = torch.randn(rows, 256, generator=G)
    fast = w.matmul(x)
    with plain():
        twin = w.matmul(x)
    assert fast.dtype == twin.dtype == torch.float32
    assert_bf16_close(fast, reference(x.bfloat16(), w))
    torch.testing.assert_close(twin.double(), reference(x, w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,group", [("int8", None), ("int8", 32), ("int4", 32)])
def test_float32_activations_on_request(monkeypatch, kind, group):
    monkeypatch.setenv("MODERNLM_QUANT_ACT", "float32")
    w = KINDS[kind].quantize(torch.randn(64, 128, generator=G), group)
    x = torch.randn(2, 128, generator=G)
    torch.testing.assert_close(w.matmul(x).double(), reference(x, w), rtol=1e-4, atol=1e-4)
    monkeypatch.setenv("MODERNLM_QUANT_ACT", "int8")
    with pytest.raises(ValueError, match="MODERNLM_QUANT_ACT must be bfloat16, float16 or float32, got 'int8'"):
        w.matmul(x)


def test_fast_kernels_run_where_torch_has_them(monkeypatch):
    calls = []
    real8 = torch._weight_int8pack_mm
    monkeypatch.setattr(torch, "_weight_int8pack_mm", lambda *a: calls.append("int8") or real8(*a))
    x = torch.randn(2, 128, generator=G)
    Int8Weight.quantize(torch.randn(32, 128, generator=G)).matmul(x)
    w4 = Int4Weight.quantize(torch.randn(32, 128, generator=G), 32)
    w4.matmul(x)
    assert calls == ["int8"]
    assert "_int4pack" in w4.kernel_cache  # torch's own layout was built and used


def test_missing_kernel_falls_back_with_one_notice(monkeypatch, caplog):
    monkeypatch.setattr(kernels, "has_op", lambda name: False)
    monkeypatch.setattr(kernels, "_noticed", set())
    w = Int4Weight.quantize(torch.randn(32, 128, generator=G), 32)
    x = torch.randn(3, 128, generator=G)
    with caplog.at_level(logging.INFO, logger="modernlm"):
        a, b = w.matmul(x), w.matmul(x)
    assert sum("dequantize-then-matmul" in r.message for r in caplog.records) == 1
    torch.testing.assert_close(a.double(), reference(x, w), rtol=1e-5, atol=1e-5)
    assert torch.equal(a, b) and w.kernel_cache == {}


def test_int4_shape_the_kernel_cannot_take_falls_back(caplog):
    w = Int4Weight.quantize(torch.randn(40, 64, generator=G), 32)  # 40 outputs: not a multiple of 16
    x = torch.randn(2, 64, generator=G)
    with caplog.at_level(logging.INFO, logger="modernlm"):
        y = w.matmul(x)
    torch.testing.assert_close(y.double(), reference(x, w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_bf16_inputs(kind):
    w = KINDS[kind].quantize(torch.randn(64, 128, generator=G), None if kind == "int8" else 32)
    x = torch.randn(3, 128, generator=G).bfloat16()
    y = w.matmul(x)
    assert y.dtype == torch.bfloat16
    assert_bf16_close(y, reference(x, w))


def test_gradient_reaches_the_input_not_the_codes():
    layer = QuantLinear(Int4Weight.quantize(torch.randn(32, 64, generator=G), 32), torch.zeros(32))
    x = torch.randn(4, 64, generator=G, requires_grad=True)
    g = torch.randn(4, 32, generator=G)  # a fixed upstream gradient: x.grad = g @ dequantize(W)
    (layer(x) * g).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    (F.linear(x2, layer.qweight.dequantize()) * g).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-4)


# ---- whole models -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,group", [("int8", None), ("int4", 32), ("int4", 64)])
def test_quantized_model_equals_its_dequantized_twin(kind, group, tiny_decoder):
    model = quantize(tiny_decoder("wide", tie_embeddings=True), kind, group_size=group)
    assert isinstance(model.embed, QuantEmbedding) and isinstance(model.blocks[0].attn.q_proj, QuantLinear)
    label = kind + ("" if group is None else f" g{group}")
    assert summary(model) == ({"int8": 15} if label == "int8" else {label: 14, "int8": 1})  # 2 x 7 linears, the head
    ids = torch.randint(0, 512, (2, 9), generator=G)
    with torch.no_grad():
        fast = model(ids)
        with plain():
            plain_path = model(ids)
        twin = dequantize_model(model)(ids)  # float nn.Linear modules with the dequantized weights
    torch.testing.assert_close(plain_path, twin, rtol=1e-4, atol=1e-4)
    assert float((fast - twin).norm() / twin.norm()) < 2e-2  # the kernels' bf16 activations, over two blocks


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_quantized_logits_stay_near_float(kind, tiny_decoder):
    model = tiny_decoder("wide", tie_embeddings=True)
    ids = torch.randint(0, 512, (1, 12), generator=G)
    with torch.no_grad():
        want = model(ids)
        got = quantize(model, kind)(ids)
    # Random Gaussian weights are the worst case for rounding (real weights: see the perplexity benchmark); 16-level
    # groups put ~9% noise on each matrix, 255 levels ~0.5%, compounded over 2 blocks.
    err = (got - want).norm() / want.norm()
    assert err < (0.05 if kind == "int8" else 0.35)


def test_untied_head_and_generation(tiny_decoder):
    model = quantize(tiny_decoder("wide", tie_embeddings=False), "int4")
    assert isinstance(model.lm_head, QuantLinear) and model.lm_head.qweight.kind == "int8"
    assert isinstance(model.embed, torch.nn.Embedding)
    out = generate(model, [1, 2, 3], 5)
    with plain():
        assert generate(model, [1, 2, 3], 5) == out


def test_bf16_model_quantizes(tiny_decoder):
    model = quantize(tiny_decoder("wide", tie_embeddings=True).to(torch.bfloat16), "int8")
    logits = model(torch.tensor([[1, 2, 3]]))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_load_model_quantize(tmp_path, tiny_decoder):
    modernlm.save_model(tiny_decoder("wide", tie_embeddings=True), tmp_path)
    model = modernlm.load_model(tmp_path, quantize="int4")
    assert model.quantization == {"kind": "int4", "group_size": 32, "head": "int8"}
    with pytest.raises(QuantError, match="unknown quantization 'int3'"):
        modernlm.load_model(tmp_path, quantize="int3")


def test_bad_input_is_refused_before_any_change(tiny_decoder):
    model = tiny_decoder("wide", tie_embeddings=True)
    with pytest.raises(QuantError, match="unknown quantization 'int2'.*int8, int4"):
        quantize(model, "int2")
    narrow = modernlm.Transformer(modernlm.preset("llama-tiny", d_model=96, n_heads=4, n_kv_heads=2))
    with pytest.raises(QuantError, match="group size 64 does not divide the input width 96 .*use group size 32"):
        quantize(narrow, "int4", group_size=64)
    with pytest.raises(QuantError, match="does not take group size 16"):
        quantize(model, "int4", group_size=16)
    assert not any(isinstance(m, QuantLinear) for m in model.modules())  # nothing was swapped
    quantize(model, "int8")
    with pytest.raises(QuantError, match="already quantized"):
        quantize(model, "int4")
    with pytest.raises(QuantError, match="LoRA adapters"):
        quantize(apply_lora(tiny_decoder("wide", tie_embeddings=True), LoraConfig(r=2)), "int8")


# ---- the CLI ------------------------------------------------------------------------------------------------------
def test_cli_info_and_generate_say_what_is_kept(tmp_path, capsys, caplog, tiny_decoder):
    from modernlm.cli.__main__ import main

    modernlm.save_model(tiny_decoder("wide", tie_embeddings=True), tmp_path)
    assert main(["info", str(tmp_path), "--quantize", "int4-g64"]) == 0
    assert "weights kept as:     int8 x1, int4 g64 x14; float32 norms" in capsys.readouterr().out
    with caplog.at_level(logging.INFO, logger="modernlm"):
        assert main(["generate", "--quantize", "gguf", "-p", "Hi", "-n", "3", "-q"]) == 0
    assert any("weights: int8 g32 x1, int4 g32 x210" in r.message for r in caplog.records)
    assert main(["generate", "--quantize", "int5", "-p", "Hi", "-n", "3"]) == 2
    assert "unknown quantization 'int5'" in capsys.readouterr().err
