"""The bf16-autocast product on CPUs without bf16 units (layers/linear.py), against float64 math and against torch's
own bf16 kernel (its plain twin)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modernlm import ModelConfig, Transformer
from modernlm.layers import linear as L

BF16_ULP = 2.0**-8  # relative spacing of bf16 values (8 significant bits)


@pytest.fixture
def emulate(monkeypatch):
    """Force the emulated path (True) or torch's bf16 kernel (False), whatever this CPU has."""

    def set_mode(on: bool) -> None:
        monkeypatch.setattr(L, "native_bf16_matmul", lambda: not on)

    return set_mode


def _round(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).double()


def test_forward_is_the_bf16_product_of_float64_math(emulate):
    emulate(True)
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(6, 5, 48, generator=gen), torch.randn(40, 48, generator=gen), torch.randn(40, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert L.emulating_bf16(x)
        y = L.linear(x, w, b)
    assert y.dtype == torch.bfloat16 and y.shape == (6, 5, 40)
    exact = _round(x) @ _round(w).T + _round(b)  # float64: the sum a bf16 kernel approximates in fp32
    torch.testing.assert_close(y.double(), exact, rtol=BF16_ULP, atol=1e-6)


def test_matches_torch_bf16_kernel_forward_and_backward(emulate):
    gen = torch.Generator().manual_seed(1)
    x0, w0, b0 = torch.randn(64, 96, generator=gen), torch.randn(80, 96, generator=gen), torch.randn(80, generator=gen)
    results = {}
    for on in (True, False):
        emulate(on)
        x, w, b = (t.clone().requires_grad_() for t in (x0, w0, b0))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert L.emulating_bf16(x) == on
            y = L.linear(x, w, b)
        (y.float() * torch.linspace(-1, 1, 80)).sum().backward()
        results[on] = (y, x.grad, w.grad, b.grad)
    for ours, theirs in zip(results[True], results[False], strict=True):
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        torch.testing.assert_close(ours.double(), theirs.double(), rtol=2 * BF16_ULP, atol=1e-2)


def test_backward_keeps_bf16_activations(emulate):
    emulate(True)
    saved: list[torch.dtype] = []

    def pack(t):
        saved.append(t.dtype)
        return t

    x = torch.randn(32, 64, requires_grad=True)
    w = torch.randn(16, 64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        L.linear(x, w)
    assert saved == [torch.bfloat16, torch.bfloat16]


def test_plain_float32_and_native_cpus_take_torch_kernel(emulate):
    x = torch.randn(2, 8)
    emulate(True)
    assert not L.emulating_bf16(x)  # no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emulate(False)
        assert not L.emulating_bf16(x)


def test_training_step_under_emulation_matches_torch_bf16(emulate):
    """A whole step of a tiny Llama: loss and gradients of the emulated bf16 step agree with torch's bf16 kernels
    (to bf16 precision), and both stay close to the fp32 step."""
    config = ModelConfig(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
    torch.manual_seed(0)
    model = Transformer(config).train()
    tokens = torch.randint(0, 97, (3, 17))

    def step(dtype):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 97), tokens[:, 1:].reshape(-1))
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])

    emulate(True)
    loss_emulated, grad_emulated = step(torch.bfloat16)
    emulate(False)
    loss_native, grad_native = step(torch.bfloat16)
    loss_fp32, grad_fp32 = step(None)
    assert loss_emulated == pytest.approx(loss_native, rel=1e-2)
    assert loss_emulated == pytest.approx(loss_fp32, rel=2e-2)
    assert F.cosine_similarity(grad_emulated, grad_native, dim=0) > 0.999
    assert F.cosine_similarity(grad_emulated, grad_fp32, dim=0) > 0.99


def test_bf16_weights_take_fp32_gemms_from_min_rows_on(emulate):
    """Inference with a bf16 model: prompts of MIN_ROWS tokens or more run as fp32 GEMMs on the bf16 values (same
    logits as torch's bf16 kernels, to bf16 precision); fewer rows (decoding) keep torch's kernel."""
    emulate(True)
    w = torch.randn(8, 16).bfloat16()
    assert not L.emulating_bf16(torch.randn(L.MIN_ROWS - 1, 16).bfloat16(), w)
    assert L.emulating_bf16(torch.randn(2, L.MIN_ROWS // 2, 16).bfloat16(), w)
    assert not L.emulating_bf16(torch.randn(L.MIN_ROWS, 16), w.float())  # float32: nothing to emulate
    config = ModelConfig(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)
    torch.manual_seed(0)
    model = Transformer(config).eval()
    ids = torch.randint(0, 97, (2, 40))
    with torch.no_grad():
        exact = model.double()(ids)
        model = model.bfloat16()
        ours = model(ids)
        emulate(False)
        theirs = model(ids)
    scale = exact.abs().max()
    assert (ours.double() - exact).abs().max() < 0.05 * scale
    assert (ours.double() - theirs.double()).abs().max() < 0.05 * scale
    assert (ours.double() - exact).abs().mean() <= 1.5 * (theirs.double() - exact).abs().mean()
