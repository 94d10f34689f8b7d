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
