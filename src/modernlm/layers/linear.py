"""The matrix product behind every projection, and how bfloat16 runs on a CPU without bf16 hardware.

On an x86 CPU without AVX512-BF16 or AMX, torch's bf16 GEMM runs 7-12x slower than fp32, and its bf16 attention about
5x. On such a machine `linear` computes a bf16 product as a bf16 kernel does (operands rounded to bf16, products
exact, sums in fp32, the result rounded to bf16) with fp32 GEMMs:
- under CPU bf16 autocast (training), keeping bf16 copies for the backward pass, so activations still take bf16
  memory;
- for bf16 weights and inputs of at least `MIN_ROWS` rows (a prompt's prefill). Fewer rows (decoding) keep torch's
  bf16 kernel: it reads half the bytes of fp32, and converting the weight for a few rows costs more than it saves.
`attention_dtype` asks attention to run its float32 kernel on the bf16 inputs in the same cases.

(Fusing q/k/v or gate/up into one GEMM over concatenated weights was measured and made training steps slower on
this AVX2 CPU, forward and backward: MKL runs the three narrow GEMMs as fast as the wide one.)

`F.linear` in bf16 is the plain twin; tests compare them.
"""

from __future__ import annotations

import functools
import platform

import torch
import torch.nn.functional as F
from torch import nn


@functools.cache
def native_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX); non-x86 CPUs are taken at their
    word (torch picks their kernels)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


MIN_ROWS = 16  # bf16 weights: rows of input from which fp32 GEMMs win (crossover measured at 8-16 on AVX2)


def _runs_in_fp32(x: torch.Tensor, enough_rows: bool) -> bool:
    """The one rule of the module's doc: on a CPU without bf16 units, under bf16 autocast, or for bf16 `x` with
    `enough_rows` (at least MIN_ROWS of them)."""
    if x.device.type != "cpu" or native_bf16_matmul():
        return False
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu") == torch.bfloat16
    return x.dtype == torch.bfloat16 and enough_rows


def emulating_bf16(x: torch.Tensor, weight: torch.Tensor | None = None) -> bool:
    """True where the bf16 product of x (with `weight`) runs as fp32 GEMMs on bf16 values (see the module's doc)."""
    same_dtype = weight is None or weight.dtype == x.dtype or torch.is_autocast_enabled("cpu")
    return same_dtype and _runs_in_fp32(x, x.numel() >= MIN_ROWS * x.shape[-1])


def attention_dtype(q: torch.Tensor) -> torch.dtype | None:
    """float32 when attention on queries q (B, H, T, Dh) should run its fp32 kernel, else None (as it is)."""
    return torch.float32 if _runs_in_fp32(q, q.shape[-2] >= MIN_ROWS) else None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T + bias: (..., in) -> (..., out)."""
    if emulating_bf16(x, weight):
        return _Bf16Linear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class _Bf16Linear(torch.autograd.Function):
    """A bf16 linear layer computed with fp32 GEMMs (bf16 x bf16 products are exact in fp32, and a bf16 kernel sums in
    fp32 too). Gradients come out as autocast's would: bf16 for the input and, rounded to bf16, for the weights."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        bf16 = torch.bfloat16
        xb, wb = x.to(bf16), weight.to(bf16)  # what autocast hands a bf16 kernel
        ctx.save_for_backward(xb, wb)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        with torch.autocast("cpu", enabled=False):
            bias32 = None if bias is None else bias.to(bf16).float()
            return F.linear(xb.float(), wb.float(), bias32).to(bf16)  # (..., out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # grad: (..., out)
        xb, wb = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        g = grad.to(torch.bfloat16).float().reshape(-1, grad.shape[-1])  # (N, out)
        grad_x = grad_w = grad_b = None
        with torch.autocast("cpu", enabled=False):
            if ctx.needs_input_grad[0]:
                grad_x = (g @ wb.float()).to(torch.bfloat16).reshape(xb.shape).to(x_dtype)  # (..., in)
            if ctx.needs_input_grad[1]:
                grad_w = (g.T @ xb.reshape(-1, xb.shape[-1]).float()).to(torch.bfloat16).to(w_dtype)  # (out, in)
            if ctx.needs_input_grad[2]:
                grad_b = g.sum(0).to(torch.bfloat16).to(b_dtype)  # (out,)
        return grad_x, grad_w, grad_b


class Linear(nn.Linear):
    """nn.Linear (same parameters, same names) whose product goes through `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
