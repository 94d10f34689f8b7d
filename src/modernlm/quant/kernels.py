"""The fast products of quantized weights, each beside its plain twin (dequantize, then `F.linear`).

With `MODERNLM_QUANT_KERNEL=native`, decoding batches (up to 8 rows) go to modernlm's own kernels instead (native.py:
int8 activations in blocks of 32 times the 4-bit or 8-bit codes, integer dot products, as llama.cpp computes); opt-in,
because torch's, below, decoded faster where measured.

torch ships fused CPU kernels that read the integer codes directly, so a decode step streams 1 (int8) or 1/2 (int4)
byte per weight instead of 4:
- `torch._weight_int8pack_mm(x (M, K), q int8 (N, K), scales (N,))`: one scale per output channel; a grouped int8
  weight (GGUF's Q8_0) runs it once per group of inputs on that group's codes and scales, summed in float32.
- `torch._weight_int4pack_mm_for_cpu(x, packed, group_size, scales_and_zeros (G, N, 2))` on codes packed by
  `torch._convert_weight_to_int4pack_for_cpu` (a layout of its own that depends on the CPU's vector width, so it is
  built on this machine at first use and never saved). It needs N % 16 == 0.

The activations they take: measured here (torch 2.14, AVX-512 CPU, one thread), both kernels are vectorised for
bfloat16 activations and run a slow loop for float32 ones (int4 on the 49152 x 576 head: 1.6 ms in bf16, 49 ms in
fp32, against 11 ms for the fp32 GEMV), and in bf16 they beat dequantize + GEMM at every batch size tried (1 to 64
rows). So by default x is rounded to bf16 for the product (ACTIVATIONS, `MODERNLM_QUANT_ACT=float32` to keep float32
activations), the kernel sums in float32, and its bf16 result is cast back to x's dtype. That rounding (8 bits of
mantissa on x and y) is what bf16 inference does everywhere, and finer than llama.cpp's own practice of quantizing
activations to 8-bit integers for its Q4/Q8 dot products; the tests hold the kernels to a float64 product of the same
rounded x.

Where a kernel is missing (an older torch, another device) or a shape does not fit it, the plain twin runs and a
notice says so once. `plain()` forces the twin (the tests compare the two).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from . import native

log = logging.getLogger("modernlm")
_enabled = True
ACTIVATIONS = "bfloat16"  # dtype x is rounded to for the fused kernels; MODERNLM_QUANT_ACT overrides
_noticed: set[str] = set()
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@contextlib.contextmanager
def plain() -> Iterator[None]:
    """Run every quantized product through its plain twin (dequantize, then matmul) inside the block."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before


def notice_once(key: str, message: str) -> None:
    if key not in _noticed:
        _noticed.add(key)
        log.info(message)


def has_op(name: str) -> bool:
    return hasattr(torch.ops.aten, name)


def activation_dtype() -> torch.dtype:
    name = os.environ.get("MODERNLM_QUANT_ACT", ACTIVATIONS)
    dtype = getattr(torch, name, None)
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"MODERNLM_QUANT_ACT must be bfloat16, float16 or float32, got {name!r}")
    return dtype


def _fast(x: torch.Tensor, op: str) -> bool:
    if not _enabled or x.device.type != "cpu" or x.dtype not in FLOAT_DTYPES:
        return False
    if not has_op(op):
        notice_once(op, f"torch {torch.__version__} has no {op}; quantized products run dequantize-then-matmul")
        return False
    return True


def plain_matmul(weight, x: torch.Tensor) -> torch.Tensor:
    """The twin: x (M, K) @ dequantize(W).T in x's dtype -> (M, N)."""
    return F.linear(x, weight.dequantize(torch.float32).to(x.dtype))


# ---- int8 ---------------------------------------------------------------------------------------------------------
def int8_matmul(weight, x: torch.Tensor) -> torch.Tensor:  # (M, K) -> (M, N)
    if _enabled and native.usable(x, weight.in_features):  # a decoding batch: int8 x int8 blocks (native.py)
        layout = _cached(weight, "_native8", lambda: native.int8_layout(weight))
        return native.int8_matmul(layout, x).to(x.dtype)
    if not _fast(x, "_weight_int8pack_mm"):
        return plain_matmul(weight, x)
    act = activation_dtype()
    xa = x.to(act)
    if weight.n_groups == 1:
        scales = _cached(weight, f"_scales_{act}", lambda: weight.scales[:, 0].contiguous().to(act))  # (N,)
        return torch._weight_int8pack_mm(xa, weight.qweight, scales).to(x.dtype)
    gs, G = weight.group_size, weight.n_groups
    grouped = _cached(weight, "_grouped", lambda: weight.qweight.reshape(-1, G, gs).transpose(0, 1).contiguous())
    scales = _cached(weight, f"_scales_{act}", lambda: weight.scales.t().contiguous().to(act))  # (G, N)
    y = torch.zeros(x.shape[0], weight.out_features, dtype=torch.float32, device=x.device)  # (M, N)
    for g in range(G):  # each group's codes (N, gs) with its own per-channel scales
        y += torch._weight_int8pack_mm(xa[:, g * gs : (g + 1) * gs].contiguous(), grouped[g], scales[g]).float()
    return y.to(x.dtype)


# ---- int4 ---------------------------------------------------------------------------------------------------------
def int4_matmul(weight, x: torch.Tensor) -> torch.Tensor:  # (M, K) -> (M, N)
    if _enabled and native.usable(x, weight.in_features):  # a decoding batch: 4-bit x int8 blocks (native.py)
        layout = _cached(weight, "_native4", lambda: native.int4_layout(weight))
        return native.int4_matmul(layout, x).to(x.dtype)
    op = "_weight_int4pack_mm_for_cpu"
    if not _fast(x, op) or not has_op("_convert_weight_to_int4pack_for_cpu"):
        return plain_matmul(weight, x)
    if weight.out_features % 16:
        notice_once(
            f"int4-N{weight.out_features}",
            f"int4: {weight.out_features} outputs is not a multiple of 16, which torch's int4 kernel needs; that "
            "layer runs dequantize-then-matmul",
        )
        return plain_matmul(weight, x)
    act = activation_dtype()
    packed = _cached(weight, "_int4pack", lambda: torch._convert_weight_to_int4pack_for_cpu(weight.codes().int(), 2))
    sz = _cached(
        weight,
        f"_sz_{act}",
        lambda: torch.stack([weight.scales.t(), weight.zeros.t()], dim=-1).contiguous().to(act),  # (G, N, 2)
    )
    return torch._weight_int4pack_mm_for_cpu(x.to(act), packed, weight.group_size, sz).to(x.dtype)


def _cached(weight, name: str, build) -> torch.Tensor:
    """A derived tensor kept in the weight's `kernel_cache` (a plain dict: never saved, moved or counted)."""
    if name not in weight.kernel_cache:
        weight.kernel_cache[name] = build()
    return weight.kernel_cache[name]
