"""A static KV cache: one preallocated buffer pair per layer, written by position index.

Nothing advances implicitly: the caller passes the positions of the new tokens (`input_pos`) to the model, the
attention layer writes its keys and values there, and the caller decides what the next positions are.
"""

from __future__ import annotations

import torch

from ..config import ModelConfig


class KVCache:
    """Buffers k, v of shape (L, B, K, S, Dh); layer i reads and writes the views k[i], v[i]."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, dtype: torch.dtype, device=None) -> None:
        if max_len > cfg.max_seq_len:
            raise ValueError(f"KV cache length {max_len} exceeds the model's max_seq_len {cfg.max_seq_len}")
        shape = (cfg.n_layers, batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch_size: int, max_len: int) -> KVCache:
        param = next(model.parameters())
        return cls(model.config, batch_size, max_len, param.dtype, param.device)

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def layer(self, i: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Views (B, K, length, Dh) of layer i's buffers: the first `length` positions (all by default)."""
        return self.k[i, :, :, :length], self.v[i, :, :, :length]

    def narrow(self, start: int, rows: int, length: int) -> KVCache:
        """A cache over rows start..start+rows-1 and positions 0..length-1 of this one, sharing its memory (writes go
        through): a serving batch runs over the rows in use and the positions written so far, not the whole buffer."""
        view = object.__new__(KVCache)
        view.k = self.k[:, start : start + rows, :, :length]
        view.v = self.v[:, start : start + rows, :, :length]
        return view

    def buffers(self) -> tuple[torch.Tensor, ...]:
        """Every buffer indexed (L, B, K, S, ...): keys and values (and a quantized cache's scales)."""
        return self.k, self.v

    def copy_prefix(self, other: KVCache, n: int) -> None:
        """Copy the first n positions of every layer and row of `other` (a smaller cache of the same kind) here."""
        for mine, theirs in zip(self.buffers(), other.buffers(), strict=True):
            mine[:, :, :, :n] = theirs[:, :, :, :n]

    def copy_row(self, dst: int, src: int, n: int) -> None:
        """Row `src`'s first n positions into row `dst` (a serving batch closing a hole)."""
        for buffer in self.buffers():
            buffer[:, dst, :, :n] = buffer[:, src, :, :n]

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


class RollingKVCache(KVCache):
    """A cache whose sliding-window layers keep only their last W = cfg.sliding_window positions (slot = position % W;
    min(W, max_len) slots),
    so its memory stays flat however long the sequence grows; full-attention layers keep (B, K, max_len, Dh).

    It only appends: each forward continues at the next position (no rewinding, which speculative decoding and
    prefix reuse need; they use KVCache, which the windowed mask makes exact too). `slot_pos` (W,) holds the position
    in each slot (-1: empty); the model updates it after its layers have read it. Rows share positions."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, dtype: torch.dtype, device=None) -> None:
        if max_len > cfg.max_seq_len:
            raise ValueError(f"KV cache length {max_len} exceeds the model's max_seq_len {cfg.max_seq_len}")
        self.window = cfg.sliding_window
        if not self.window:
            raise ValueError("a rolling KV cache needs a model with a sliding window (sliding_window > 0)")
        self._max_len = max_len
        self.ks, self.vs = [], []
        held = min(self.window, max_len)  # slot = position % window < max_len when the cache is shorter
        for i in range(cfg.n_layers):
            slots = held if cfg.layer_window(i) else max_len
            shape = (batch_size, cfg.n_kv_heads, slots, cfg.head_dim)
            self.ks.append(torch.zeros(shape, dtype=dtype, device=device))
            self.vs.append(torch.zeros(shape, dtype=dtype, device=device))
        self.rolling = [bool(cfg.layer_window(i)) for i in range(cfg.n_layers)]
        self.slot_pos = torch.full((held,), -1, dtype=torch.long, device=device)

    @property
    def batch_size(self) -> int:
        return self.ks[0].shape[0]

    @property
    def max_len(self) -> int:
        return self._max_len

    @property
    def next_pos(self) -> int:
        return int(self.slot_pos.max()) + 1

    def layer(self, i: int, length: int | None = None):
        if self.rolling[i]:
            return self.ks[i], self.vs[i]
        return self.ks[i][:, :, :length], self.vs[i][:, :, :length]

    def narrow(self, start: int, rows: int, length: int) -> KVCache:
        raise ValueError("a rolling KV cache cannot be narrowed (serving batches use KVCache)")

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.ks, *self.vs))


# ---- the cache's storage dtype -------------------------------------------------------------------------------------
KV_KINDS = ("float32", "bfloat16", "float16", "int8")  # "auto": the model's own dtype


class Int8KVCache(KVCache):
    """Keys and values rounded to int8 with one scale per (row, head, position): k[..., s, :] = q[..., s, :] * scale[s],
    scale = max |k[..., s, :]| / 127 (a head's token vector, rounded symmetrically), kept in float16. Dh + 2 bytes a
    head and token instead of bf16's 2 Dh: 66 / 128 = 0.52 of bf16's bytes at Dh = 64.

    Each layer's view is an `Int8Layer`; attention hands it the new keys and values (`write`) and attends over the
    dequantized ones it returns, in the model's dtype (O(S) work per step, which the saved bytes pay for at long
    context)."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, dtype: torch.dtype, device=None) -> None:
        super().__init__(cfg, batch_size, max_len, torch.int8, device)
        scales = (cfg.n_layers, batch_size, cfg.n_kv_heads, max_len, 1)
        self.k_scale = torch.zeros(scales, dtype=torch.float16, device=device)
        self.v_scale = torch.zeros(scales, dtype=torch.float16, device=device)
        self.compute_dtype = dtype

    def layer(self, i: int, length: int | None = None) -> Int8Layer:
        s = slice(None, length)
        return Int8Layer(self.k[i, :, :, s], self.v[i, :, :, s], self.k_scale[i, :, :, s], self.v_scale[i, :, :, s],
                         self.compute_dtype)  # fmt: skip

    def narrow(self, start: int, rows: int, length: int) -> KVCache:
        view = super().narrow(start, rows, length)
        view.__class__ = Int8KVCache
        view.k_scale = self.k_scale[:, start : start + rows, :, :length]
        view.v_scale = self.v_scale[:, start : start + rows, :, :length]
        view.compute_dtype = self.compute_dtype
        return view

    def buffers(self) -> tuple[torch.Tensor, ...]:
        return self.k, self.v, self.k_scale, self.v_scale

    def nbytes(self) -> int:
        return super().nbytes() + 2 * self.k_scale.numel() * self.k_scale.element_size()


def round_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., Dh) -> int8 values (..., Dh) and float16 scales (..., 1), symmetric per vector; a zero vector keeps 0."""
    scale = (x.abs().amax(-1, keepdim=True).float() / 127.0).to(torch.float16)  # (..., 1)
    safe = torch.where(scale == 0, torch.ones_like(scale), scale).float()
    return torch.round(x.float() / safe).clamp(-127, 127).to(torch.int8), scale


class Int8Layer:
    """One layer's int8 keys and values (B, K, S, Dh) with their scales (B, K, S, 1)."""

    def __init__(self, k, v, k_scale, v_scale, dtype: torch.dtype) -> None:
        self.k, self.v, self.k_scale, self.v_scale, self.dtype = k, v, k_scale, v_scale, dtype

    def write(self, k: torch.Tensor, v: torch.Tensor, input_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Round the new keys and values (B, K, T, Dh) into their positions (T,) or (B, T); return every position's
        keys and values dequantized, (B, K, S, Dh) in the model's dtype."""
        for new, values, scales in ((k, self.k, self.k_scale), (v, self.v, self.v_scale)):
            q, scale = round_int8(new)  # (B, K, T, Dh), (B, K, T, 1)
            if input_pos.dim() == 1:
                values.index_copy_(2, input_pos, q)
                scales.index_copy_(2, input_pos, scale)
            else:  # each row at its own positions: rows (B, 1) x positions (B, T)
                rows = torch.arange(q.shape[0], device=input_pos.device)[:, None]  # (B, 1)
                values[rows, :, input_pos] = q.transpose(1, 2)
                scales[rows, :, input_pos] = scale.transpose(1, 2)
        k_all = (self.k.float() * self.k_scale.float()).to(self.dtype)  # (B, K, S, Dh)
        v_all = (self.v.float() * self.v_scale.float()).to(self.dtype)  # (B, K, S, Dh)
        return k_all, v_all


def new_cache(model: torch.nn.Module, batch_size: int, max_len: int, kv: str = "auto", rolling: bool = True) -> KVCache:
    """The KV cache generation uses: `kv` "auto" (the model's `kv_cache` attribute when set, e.g. by the CLI's
    --kv-cache; else the model's dtype), a float dtype name, or "int8". With `rolling`, a sliding-window model keeps
    only its window per windowed layer (RollingKVCache, float kinds only), so memory stays flat however long it
    generates; without it (prefix reuse, speculative decoding rewind), every position."""
    kv, dtype, device = kind_of(model, kv), model_dtype(model), next(model.parameters()).device
    if kv == "int8":  # every position kept, also for a sliding window (its mask makes that exact): no rolling int8
        return Int8KVCache(model.config, batch_size, max_len, dtype, device)
    cls = RollingKVCache if model.config.sliding_window and rolling else KVCache
    return cls(model.config, batch_size, max_len, dtype if kv == "auto" else getattr(torch, kv), device)


def kind_of(model: torch.nn.Module, kv: str = "auto") -> str:
    """The cache kind asked for: `kv`, or for "auto" the model's `kv_cache` attribute ("auto" when unset)."""
    kv = getattr(model, "kv_cache", "auto") if kv == "auto" else kv
    if kv not in ("auto", *KV_KINDS):
        raise ValueError(f"unknown KV cache kind {kv!r}; use one of auto, {', '.join(KV_KINDS)}")
    return kv


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype the model computes in (its first floating-point parameter's; float32 for none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def stored_dtype(model: torch.nn.Module, kv: str = "auto") -> torch.dtype:
    """The element type a cache of this kind stores for the model (torch.int8 for "int8")."""
    kv = kind_of(model, kv)
    return model_dtype(model) if kv == "auto" else getattr(torch, kv)
