"""GGML's quantized blocks <-> our quantized weights, without a round trip through float.

Block layouts (ggml's `block_q*` structs; a row of K inputs is K / block elements long, `d`, `m`, `dmin` fp16):
- Q8_0, 32 inputs in 34 bytes: d, then 32 int8 codes q; w = q * d.                     -> int8, group 32
- Q4_0, 32 inputs in 18 bytes: d, then 16 bytes; byte j holds input j (low nibble) and input j + 16 (high nibble);
  w = (q - 8) * d.                                                                        -> int4 g32, zero = 0
- Q4_1, 32 inputs in 20 bytes: d, m, then the 16 bytes of Q4_0; w = q * d + m.          -> int4 g32, zero = m + 8 d
- Q4_K, 256 inputs in 144 bytes: d, dmin, 12 bytes of eight 6-bit (scale, min) pairs, 128 bytes of nibbles; each
  run of 64 inputs takes 32 bytes, low nibbles the first 32 inputs (sub-block 2c), high nibbles the next 32 (2c + 1);
  w = d * sc * q - dmin * mn.                                                             -> int4 g32, zero = 8 s - mn'
The other direction (`quantize_q8_0`, `quantize_q4_0`, `quantize_q4_1`) follows ggml's reference rounding, so the
bytes equal what `gguf.quants.quantize` (and llama.cpp) write; GGUF export uses it.
"""

from __future__ import annotations

import numpy as np
import torch

from .weights import Int4Weight, Int8Weight, QuantError, QuantWeight

BLOCK = {"Q8_0": (32, 34), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q4_K": (256, 144)}  # type -> (inputs, bytes)
KEPT = tuple(BLOCK)


def _f16(raw: np.ndarray) -> np.ndarray:
    """(..., 2) uint8 -> (...) float32 (little-endian fp16)."""
    return np.ascontiguousarray(raw).view(np.float16)[..., 0].astype(np.float32)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def unpack(kind: str, data: np.ndarray, in_features: int) -> QuantWeight:
    """The QuantWeight of a GGUF tensor's raw rows: uint8 (N, bytes per row) of type `kind` (Q8_0, Q4_0, Q4_1, Q4_K)."""
    if kind not in BLOCK:
        raise QuantError(f"GGUF type {kind} cannot be kept quantized; kept types: {', '.join(KEPT)}")
    inputs, size = BLOCK[kind]
    N = data.shape[0]
    if in_features % inputs or data.shape[1] != in_features // inputs * size:
        raise QuantError(
            f"a {kind} row of {in_features} inputs takes {in_features // inputs * size} bytes, got {data.shape[1]}"
        )
    b = data.reshape(N, in_features // inputs, size)  # (N, blocks, bytes)
    if kind == "Q8_0":
        q = np.ascontiguousarray(b[..., 2:]).view(np.int8).reshape(N, in_features)
        return Int8Weight(_t(q), _t(_f16(b[..., :2])), 32)
    if kind == "Q4_K":
        return _unpack_q4_k(b, N, in_features)
    header = 2 if kind == "Q4_0" else 4
    qs = b[..., header:]  # (N, G, 16)
    codes = np.concatenate([qs & 15, qs >> 4], axis=-1).reshape(N, in_features)  # inputs 0..15, then 16..31
    d = _f16(b[..., 0:2])  # (N, G)
    zeros = np.zeros_like(d) if kind == "Q4_0" else _f16(b[..., 2:4]) + np.float32(8) * d
    return Int4Weight.from_codes(_t(codes), _t(d), _t(zeros), 32)


def _unpack_q4_k(b: np.ndarray, N: int, K: int) -> Int4Weight:
    S = K // 256  # super-blocks per row
    d, dmin = _f16(b[..., 0:2])[..., None], _f16(b[..., 2:4])[..., None]  # (N, S, 1)
    sc = b[..., 4:16].astype(np.uint8)  # (N, S, 12)
    lo6 = np.concatenate([sc[..., 0:4] & 63, (sc[..., 8:12] & 15) | ((sc[..., 0:4] >> 6) << 4)], axis=-1)  # scales
    mn6 = np.concatenate([sc[..., 4:8] & 63, (sc[..., 8:12] >> 4) | ((sc[..., 4:8] >> 6) << 4)], axis=-1)  # mins
    scale = d * lo6.astype(np.float32)  # (N, S, 8)
    low = dmin * mn6.astype(np.float32)  # (N, S, 8): w = q * scale - low
    qs = b[..., 16:].reshape(N, S, 4, 32)  # 4 runs of 64 inputs
    codes = np.stack([qs & 15, qs >> 4], axis=3).reshape(N, K)  # (N, S, 4, 2, 32) -> (N, K)
    scale, low = scale.reshape(N, S * 8), low.reshape(N, S * 8)
    return Int4Weight.from_codes(_t(codes), _t(scale), _t(np.float32(8) * scale - low), 32)


# ---- float -> blocks (ggml's reference rounding) ------------------------------------------------------------------
def _blocks(w: torch.Tensor | np.ndarray, size: int) -> np.ndarray:
    w = w.detach().float().cpu().numpy() if isinstance(w, torch.Tensor) else np.asarray(w, np.float32)
    if w.shape[-1] % size:
        raise QuantError(f"a row of {w.shape[-1]} values is not a whole number of {size}-value blocks")
    return w.reshape(-1, size)


def _roundf(x: np.ndarray) -> np.ndarray:
    """C's roundf: halves away from zero (numpy's round goes to even)."""
    a = np.abs(x)
    whole = np.floor(a)
    return np.sign(x) * (whole + np.floor(2 * (a - whole)))


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def _nibbles(q: np.ndarray) -> np.ndarray:  # (n, 32) codes -> (n, 16) bytes: input j low, input j + 16 high
    return (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)


def _rows(out: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return out.reshape(*shape[:-1], -1)


def quantize_q8_0(w) -> np.ndarray:
    """Float (..., K) -> Q8_0 bytes (..., K / 32 * 34)."""
    b = _blocks(w, 32)
    d = (np.abs(b).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
    q = _roundf(b * _inverse(d)).astype(np.int8)
    out = np.concatenate([d.astype(np.float16).view(np.uint8), q.view(np.uint8)], axis=1)
    return _rows(out, tuple(np.shape(w)))


def quantize_q4_0(w) -> np.ndarray:
    """Float (..., K) -> Q4_0 bytes: d = (the value of largest magnitude) / -8, q = trunc(w / d + 8.5) in [0, 15]."""
    b = _blocks(w, 32)
    peak = np.take_along_axis(b, np.abs(b).argmax(axis=1)[:, None], axis=1)
    d = (peak / np.float32(-8)).astype(np.float32)
    q = np.clip(np.trunc(b * _inverse(d) + np.float32(8.5)), 0, 15).astype(np.uint8)
    out = np.concatenate([d.astype(np.float16).view(np.uint8), _nibbles(q)], axis=1)
    return _rows(out, tuple(np.shape(w)))


def quantize_q4_1(w) -> np.ndarray:
    """Float (..., K) -> Q4_1 bytes: d = (max - min) / 15, m = min, q = trunc((w - min) / d + 0.5) in [0, 15]."""
    b = _blocks(w, 32)
    lo, hi = b.min(axis=1, keepdims=True), b.max(axis=1, keepdims=True)
    d = ((hi - lo) / np.float32(15)).astype(np.float32)
    q = np.clip(np.trunc((b - lo) * _inverse(d) + np.float32(0.5)), 0, 15).astype(np.uint8)
    head = np.concatenate([d.astype(np.float16).view(np.uint8), lo.astype(np.float16).view(np.uint8)], axis=1)
    return _rows(np.concatenate([head, _nibbles(q)], axis=1), tuple(np.shape(w)))


QUANTIZERS = {"Q8_0": quantize_q8_0, "Q4_0": quantize_q4_0, "Q4_1": quantize_q4_1}
