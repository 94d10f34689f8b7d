"""Quantized weight matrices (out N, in K): integer codes, float scales (and zero points), and the registry of kinds.

Each kind is one class here, registered in `KINDS` by name (configuration is data: `quantize(model, "int4")` looks the
name up; a test lists the registry). A weight knows three things:
- `dequantize()`: the float matrix (N, K) it stands for; the plain twin of everything else;
- `matmul(x)`: x @ W.T through torch's fused kernel where it has one (`kernels.py`), the plain twin otherwise;
- `rows(ids)`: the dequantized rows `ids` (an embedding lookup that shares the weight with a tied output head).

Kinds and their formulas (per group of `group_size` consecutive inputs of one output row, G = K / group_size groups):
- int8: symmetric, w = q * scale, q in [-127, 127]; `group_size=None` is one scale per output channel (torch's
  `_weight_int8pack_mm`), a group size (32 for GGUF's Q8_0) gives a scale per block.
- int4: asymmetric, w = (q - 8) * scale + zero, q in [0, 15]: `zero` is the value of code 8, the convention of
  torch's `_weight_int4pack_mm_for_cpu`. GGUF's Q4_0 is zero = 0; Q4_1 (w = q * d + m) is zero = m + 8 d; Q4_K's
  sub-blocks of 32 are the same with d and m from its 6-bit scales.
Codes are stored plainly (int8 (N, K); int4 two per byte (N, K/2), the even input in the low nibble); the kernels'
own layouts are built from them once, beside them, and never saved.
"""

from __future__ import annotations

import torch
from torch import nn

from . import kernels


class QuantError(ValueError):
    """A quantization setting or input that cannot work; the message names the value and the fix."""


class QuantWeight(nn.Module):
    """The common part: shape, group size, and the three operations of the module's doc."""

    kind = ""
    bits = 0
    group_sizes: tuple[int | None, ...] = ()

    def __init__(self, out_features: int, in_features: int, group_size: int | None) -> None:
        super().__init__()
        self.out_features, self.in_features = out_features, in_features
        self.group_size = group_size
        self.kernel_cache: dict[str, torch.Tensor] = {}  # the kernels' own layouts of the codes, built at first use

    @property
    def n_groups(self) -> int:
        return 1 if self.group_size is None else self.in_features // self.group_size

    def label(self) -> str:
        return self.kind + ("" if self.group_size is None else f" g{self.group_size}")

    def extra_repr(self) -> str:
        return f"{self.out_features}, {self.in_features}, {self.label()}"

    def _apply(self, fn, recurse=True):  # .to(device or dtype): the kernels' layouts are rebuilt from the new codes
        self.kernel_cache.clear()
        return super()._apply(fn, recurse)

    def nbytes(self) -> int:
        """Bytes of the stored codes, scales and zeros (the kernels' packed copies not counted)."""
        return sum(b.numel() * b.element_size() for n, b in self.named_buffers() if not n.startswith("_"))

    def _grouped(self, values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:  # (N, K) -> (N, G, K / G)
        return values.to(dtype).reshape(self.out_features, self.n_groups, -1)

    @classmethod
    def check(cls, out_features: int, in_features: int, group_size: int | None, where: str = "") -> None:
        """Raise QuantError if a weight of this shape cannot take this group size."""
        if group_size not in cls.group_sizes:
            choices = ", ".join("none (per channel)" if g is None else str(g) for g in cls.group_sizes)
            raise QuantError(f"{cls.kind} does not take group size {group_size!r}; choose one of {choices}")
        if group_size is not None and in_features % group_size:
            fits = [g for g in cls.group_sizes if g is not None and in_features % g == 0]
            hint = f"use group size {max(fits)}" if fits else "this layer cannot be quantized to " + cls.kind
            raise QuantError(
                f"group size {group_size} does not divide the input width {in_features} of {where or 'a layer'}; {hint}"
            )


class Int8Weight(QuantWeight):
    kind, bits = "int8", 8
    group_sizes = (None, 32, 64, 128)

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, group_size: int | None = None) -> None:
        N, K = qweight.shape
        super().__init__(N, K, group_size)
        if qweight.dtype != torch.int8 or scales.shape != (N, self.n_groups):
            raise QuantError(f"int8 weight needs int8 codes (N, K) and scales (N, {self.n_groups})")
        self.register_buffer("qweight", qweight.contiguous())  # (N, K) int8
        self.register_buffer("scales", scales.float().contiguous())  # (N, G)

    @classmethod
    def quantize(cls, w: torch.Tensor, group_size: int | None = None) -> Int8Weight:
        """Round to nearest: scale = max |w| / 127 over each channel (or group)."""
        N, K = w.shape
        G = 1 if group_size is None else K // group_size
        blocks = w.detach().float().reshape(N, G, K // G)  # (N, G, gs)
        scales = blocks.abs().amax(-1) / 127  # (N, G)
        scales = torch.where(scales > 0, scales, torch.ones_like(scales))
        q = torch.round(blocks / scales[..., None]).clamp(-127, 127).to(torch.int8)
        return cls(q.reshape(N, K), scales, group_size)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:  # (N, K)
        w = self._grouped(self.qweight, torch.float32) * self.scales[..., None]  # (N, G, gs)
        return w.reshape(self.out_features, self.in_features).to(dtype)

    def rows(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:  # ids (...) -> (..., K)
        q, s = self.qweight[ids], self.scales[ids]  # (..., K), (..., G)
        return (q.float() * s.repeat_interleave(self.in_features // s.shape[-1], dim=-1)).to(dtype)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:  # (M, K) -> (M, N)
        return kernels.int8_matmul(self, x)


class Int4Weight(QuantWeight):
    kind, bits = "int4", 4
    group_sizes = (32, 64, 128)

    def __init__(self, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> None:
        N, half = packed.shape
        super().__init__(N, 2 * half, group_size)
        if packed.dtype != torch.uint8 or scales.shape != (N, self.n_groups) or zeros.shape != scales.shape:
            raise QuantError(f"int4 weight needs uint8 codes (N, K/2) and scales, zeros (N, {self.n_groups})")
        self.register_buffer("packed", packed.contiguous())  # (N, K/2) uint8, even input in the low nibble
        self.register_buffer("scales", scales.float().contiguous())  # (N, G)
        self.register_buffer("zeros", zeros.float().contiguous())  # (N, G): the value of code 8

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> Int4Weight:
        """From codes (N, K) in [0, 15]."""
        codes = codes.to(torch.uint8)
        return cls(codes[:, 0::2] | (codes[:, 1::2] << 4), scales, zeros, group_size)

    @classmethod
    def quantize(cls, w: torch.Tensor, group_size: int = 32) -> Int4Weight:
        """Round to nearest over [min, max] of each group: scale = (max - min) / 15, q = round((w - min) / scale)."""
        N, K = w.shape
        blocks = w.detach().float().reshape(N, K // group_size, group_size)  # (N, G, gs)
        lo, hi = blocks.amin(-1), blocks.amax(-1)  # (N, G)
        scales = (hi - lo) / 15
        scales = torch.where(scales > 0, scales, torch.ones_like(scales))
        q = torch.round((blocks - lo[..., None]) / scales[..., None]).clamp(0, 15)
        return cls.from_codes(q.reshape(N, K), scales, lo + 8 * scales, group_size)

    def codes(self) -> torch.Tensor:  # (N, K) uint8 in [0, 15]
        return torch.stack([self.packed & 15, self.packed >> 4], dim=-1).reshape(self.out_features, self.in_features)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:  # (N, K)
        q = self._grouped(self.codes(), torch.float32) - 8  # (N, G, gs)
        w = torch.addcmul(self.zeros[..., None].float(), q, self.scales[..., None].float())  # q * scale + zero
        return w.reshape(self.out_features, self.in_features).to(dtype)

    def rows(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:  # ids (...) -> (..., K)
        p = self.packed[ids]  # (..., K/2)
        q = torch.stack([p & 15, p >> 4], dim=-1).reshape(*p.shape[:-1], self.in_features).float() - 8
        gs = self.group_size
        s, z = self.scales[ids].repeat_interleave(gs, -1), self.zeros[ids].repeat_interleave(gs, -1)
        return (q * s + z).to(dtype)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:  # (M, K) -> (M, N)
        return kernels.int4_matmul(self, x)


# The registry: a quantization name -> its weight class. Adding a kind is one entry here.
KINDS: dict[str, type[QuantWeight]] = {"int8": Int8Weight, "int4": Int4Weight}
DEFAULT_GROUP = {"int8": None, "int4": 32}


def kind_class(name: str) -> type[QuantWeight]:
    if name not in KINDS:
        raise QuantError(f"unknown quantization {name!r}; choose one of {', '.join(KINDS)} (or 'gguf' at load time)")
    return KINDS[name]
