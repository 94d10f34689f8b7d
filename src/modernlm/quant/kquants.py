"""GGML's K-quant blocks written from float weights: Q4_K and Q6_K, what GGUF export's q4_k_m is made of.

Block layouts (ggml's `block_q4_K` and `block_q6_K`; 256 inputs a super-block, `d` and `dmin` fp16):
- Q4_K, 144 bytes: d, dmin, 12 bytes of eight 6-bit (scale, min) pairs, 128 bytes of nibbles (gguf_blocks.py reads
  it); sub-block j of 32 inputs: w = d * sc[j] * q - dmin * mn[j], q in [0, 15].
- Q6_K, 210 bytes: 128 bytes of low nibbles, 64 bytes of high bit pairs, sixteen int8 scales (one per 16 inputs),
  d; w = d * sc[g] * (q - 32), q in [0, 63]. Each half of 128 inputs takes 64 + 32 bytes: ql byte l holds inputs
  l (low) and l + 64 (high), byte l + 32 inputs l + 32 and l + 96; qh byte l the top two bits of l, l + 32, l + 64,
  l + 96.
The scales are the plain ones (a sub-block's range over 15 for Q4_K, its largest magnitude over 32 for Q6_K, then the
super-block's d over 63 or 128), not llama.cpp's searched ones: the format is the same and llama.cpp, transformers and
`gguf.quants.dequantize` read it; the error is a little larger than llama-quantize's (tests/test_export.py bounds it).
"""

from __future__ import annotations

import numpy as np

from .gguf_blocks import _blocks, _inverse, _rows

QK = 256


def _f16_round(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def _nearest(x: np.ndarray) -> np.ndarray:
    return np.rint(x).astype(np.int32)


def _pack_scales_q4_k(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """(n, 8) 6-bit scales and mins -> (n, 12) bytes, as ggml's get_scale_min_k4 reads them."""
    lo, hi = slice(0, 4), slice(4, 8)
    out = np.empty((len(sc), 12), np.uint8)
    out[:, 0:4] = sc[:, lo] | ((sc[:, hi] >> 4) << 6)
    out[:, 4:8] = mn[:, lo] | ((mn[:, hi] >> 4) << 6)
    out[:, 8:12] = (sc[:, hi] & 15) | ((mn[:, hi] & 15) << 4)
    return out


def quantize_q4_k(w) -> np.ndarray:
    """Float (..., K) -> Q4_K bytes (..., K / 256 * 144); K a multiple of 256."""
    b = _blocks(w, QK)
    sub = b.reshape(len(b), 8, 32)  # (n, 8 sub-blocks, 32)
    low = np.minimum(sub.min(axis=2), 0)  # (n, 8): the sub-block's offset, <= 0 (mins are stored positive)
    scale, mins = (sub.max(axis=2) - low) / np.float32(15), -low
    d = _f16_round(scale.max(axis=1, keepdims=True) / np.float32(63))  # (n, 1)
    dmin = _f16_round(mins.max(axis=1, keepdims=True) / np.float32(63))
    sc = np.clip(_nearest(scale * _inverse(d)), 0, 63).astype(np.uint8)  # (n, 8)
    mn = np.clip(_nearest(mins * _inverse(dmin)), 0, 63).astype(np.uint8)
    step, offset = d * sc, dmin * mn  # (n, 8): w = step * q - offset
    q = np.clip(_nearest((sub + offset[..., None]) * _inverse(step)[..., None]), 0, 15).astype(np.uint8)
    runs = q.reshape(len(b), 4, 2, 32)  # 4 runs of 64: sub-block 2c low nibbles, 2c + 1 high
    qs = (runs[:, :, 0] | (runs[:, :, 1] << 4)).reshape(len(b), 128)
    head = np.concatenate([d.astype(np.float16).view(np.uint8), dmin.astype(np.float16).view(np.uint8)], axis=1)
    out = np.concatenate([head, _pack_scales_q4_k(sc, mn), qs], axis=1)
    return _rows(out, tuple(np.shape(w)))


def quantize_q6_k(w) -> np.ndarray:
    """Float (..., K) -> Q6_K bytes (..., K / 256 * 210); K a multiple of 256."""
    b = _blocks(w, QK)
    n = len(b)
    groups = b.reshape(n, 16, 16)
    peak = np.take_along_axis(groups, np.abs(groups).argmax(axis=2)[..., None], axis=2)[..., 0]  # (n, 16), signed
    scale = peak / np.float32(-32)  # the peak maps to -32
    top = np.take_along_axis(scale, np.abs(scale).argmax(axis=1)[:, None], axis=1)  # (n, 1), signed
    d = _f16_round(top / np.float32(-128))
    sc = np.clip(_nearest(scale * _inverse(d)), -128, 127).astype(np.int8)  # (n, 16)
    step = d * sc.astype(np.float32)  # (n, 16)
    q = np.clip(_nearest(groups * _inverse(step)[..., None]), -32, 31) + 32  # (n, 16, 16) in [0, 63]
    q = q.reshape(n, 2, 4, 32).astype(np.uint8)  # two halves of 128: four runs of 32 each
    ql = np.concatenate([q[:, :, 0] & 15 | (q[:, :, 2] & 15) << 4, q[:, :, 1] & 15 | (q[:, :, 3] & 15) << 4], axis=2)
    qh = (q[:, :, 0] >> 4) | (q[:, :, 1] >> 4) << 2 | (q[:, :, 2] >> 4) << 4 | (q[:, :, 3] >> 4) << 6  # (n, 2, 32)
    out = np.concatenate(
        [ql.reshape(n, 128), qh.reshape(n, 64), sc.view(np.uint8), d.astype(np.float16).view(np.uint8)], axis=1
    )
    return _rows(out, tuple(np.shape(w)))
