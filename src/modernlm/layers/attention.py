"""Causal self-attention with grouped KV heads, RoPE on q and k (or an additive ALiBi mask), an optional shared Q/K
projection, and an optional static KV cache. Given `memory` (keys and values projected from another sequence with
`project_memory`), the same module is cross-attention: queries from x, keys and values from the encoder's output.

Dimension names used in the shape comments:
  B batch, T new tokens, S keys attended (T without a cache, the cache length with one, the encoder's length for
  cross-attention),
  D model width, H query heads, K kv heads (H % K == 0; K == H is MHA, K == 1 is MQA), Dh head dim.

Attention runs through SDPA, which never forms the (T, S) probabilities. Inside `recording(modules)` (a model's
`output_attentions=True`, modernlm.inspect) the same attention runs the explicit softmax instead, as transformers'
"eager" attention does, and each call's probabilities are kept; outside it nothing is kept and SDPA runs as before.
Recording is per thread: a server's engine thread running the same model meanwhile stays on SDPA.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .linear import Linear, attention_dtype
from .norm import make_norm
from .rope import apply_rope


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.dropout = cfg.attn_dropout
        self.scale = cfg.attn_scale  # None: SDPA's 1/sqrt(Dh)
        self.causal = cfg.causal  # what no mask means: causal over T, or every token sees every other (an encoder)
        self.q_proj = Linear(cfg.d_model, cfg.q_dim, bias=cfg.qkv_bias)
        # shared_qk: keys are the queries (one projection), so the raw scores q_i . q_j are symmetric.
        self.k_proj = None if cfg.shared_qk else Linear(cfg.d_model, cfg.kv_dim, bias=cfg.qkv_bias)
        self.v_proj = Linear(cfg.d_model, cfg.kv_dim, bias=cfg.qkv_bias)
        self.o_proj = Linear(cfg.q_dim, cfg.d_model, bias=cfg.out_bias)
        # qk_norm: a norm over each head's queries and keys before RoPE (Qwen3, Gemma 3)
        self.q_norm = make_norm(cfg.norm, cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = make_norm(cfg.norm, cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.softcap = cfg.attn_softcap  # None: SDPA; a cap: the explicit path, scores -> cap * tanh(scores / cap)
        # inside `recording`, per thread (another thread may run the model meanwhile, as a server's engine does):
        # the list each call's probabilities (B, H, T, S) go to; empty outside, where SDPA runs
        self.probs: dict[int, list[torch.Tensor]] = {}

    def forward(
        self,
        x: torch.Tensor,  # (B, T, D)
        rope: tuple[torch.Tensor, ...] | None,  # cos, sin: (T, Dh), or (B, T, Dh) with per-row positions; then the
        # keys' cos, sin (S, Dh) or (B, S, Dh) if the cache holds unrotated keys
        mask: torch.Tensor | None,  # bool (B or 1, 1, T, S), True = may attend, or a float bias (B or 1, H, T, S)
        # added to the scores (ALiBi, -inf where hidden); None = plain causal over T
        kv: tuple[torch.Tensor, ...] | None = None,  # cache buffers (B, K, S, Dh), and the slots to write (n,) if
        # they are a rolling window (see _write_cache)
        input_pos: torch.Tensor | None = None,  # (T,) positions written in the cache, or (B, T): one row each
        memory: tuple[torch.Tensor, torch.Tensor]
        | None = None,  # cross-attention: (B, K, S, Dh) x2 from project_memory
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, H, Dh)
        if memory is not None:  # cross-attention: no positions, no cache to write, every memory slot in the mask
            y = self._attend(q.transpose(1, 2), *memory, mask, causal=False)  # (B, H, T, Dh)
            return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))  # (B, T, D)
        k = q  # shared_qk: H == K
        if self.k_proj is not None:
            k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, K, Dh)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, Dh)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)  # (B, T, H, Dh), (B, T, K, Dh)
        # rope of 4 tables with a cache: the frequencies depend on the current length (dynamic NTK, LongRoPE), so keys
        # are cached unrotated and the keys read back are rotated with this step's tables (2 and 3)
        late = rope is not None and len(rope) == 4 and kv is not None
        if rope is not None:  # rotated before the heads move forward: the (B, T, heads, Dh) layout SDPA reads best
            cos, sin = rope[0].unsqueeze(-2), rope[1].unsqueeze(-2)  # (T, 1, Dh) or (B, T, 1, Dh)
            q_rotated = apply_rope(q, cos, sin)
            k = k if late else q_rotated if self.k_proj is None else apply_rope(k, cos, sin)
            q = q_rotated
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, Dh), (B, K, T, Dh)
        if kv is not None:
            k, v = _write_cache(kv, k, v, input_pos)  # (B, K, S, Dh)
        if late:
            key_cos, key_sin = rope[2].unsqueeze(-2), rope[3].unsqueeze(-2)  # (S, 1, Dh) or (B, S, 1, Dh)
            k = apply_rope(k.transpose(1, 2), key_cos, key_sin).transpose(1, 2)  # (B, K, S, Dh)
        y = self._attend(q, k, v, mask, causal=mask is None and T > 1 and self.causal)  # (B, H, T, Dh)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))  # (B, T, D)

    def project_memory(
        self, context: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:  # (B, S, D) -> (B, K, S, Dh) x2
        """Keys and values of another sequence (the encoder's output), computed once, reused by every decoder step."""
        B, S, _ = context.shape
        k = self.k_proj(context).view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, S, Dh)
        v = self.v_proj(context).view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, S, Dh)
        return k, v

    def _attend(self, q, k, v, mask, causal: bool) -> torch.Tensor:  # (B, H, T, Dh), (B, K, S, Dh) x2 -> (B, H, T, Dh)
        dtype, out_dtype = attention_dtype(q), q.dtype
        if dtype is not None:  # the fp32 kernel on bf16 values (see layers/linear.py)
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
            mask = mask.to(dtype) if mask is not None and mask.is_floating_point() else mask
        dropout = self.dropout if self.training else 0.0
        with torch.autocast("cpu", enabled=False) if dtype is not None else contextlib.nullcontext():
            log = self.recorded() if self.probs else None
            if self.softcap is not None or log is not None:  # the explicit softmax: soft-capped, or its weights kept
                y, probs = explicit_attention(q, k, v, mask, causal, self.scale, self.softcap, dropout)
                if log is not None:
                    log.append(probs)
                return y.to(out_dtype)
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                is_causal=causal,
                dropout_p=dropout,
                enable_gqa=self.n_kv_heads != self.n_heads,
                scale=self.scale,
            )
        return y.to(out_dtype)

    def recorded(self) -> list[torch.Tensor] | None:
        """This thread's list of recorded probabilities (B, H, T, S), or None outside `recording`."""
        return self.probs.get(threading.get_ident())


@contextlib.contextmanager
def recording(modules: list[Attention]) -> Iterator[list[list[torch.Tensor]]]:
    """Run `modules` through the explicit softmax while inside, in this thread only, and yield one list per module
    that collects each of its calls' probabilities (B, H, T, S); on the way out each module is as it was (SDPA, or
    an outer recording, which gets these calls too)."""
    thread = threading.get_ident()
    before = [module.probs.get(thread) for module in modules]
    logs: list[list[torch.Tensor]] = [[] for _ in modules]
    for module, log in zip(modules, logs, strict=True):
        module.probs[thread] = log
    try:
        yield logs
    finally:
        for module, old, log in zip(modules, before, logs, strict=True):
            if old is None:
                module.probs.pop(thread, None)
            else:
                module.probs[thread] = old
                old.extend(log)


def explicit_attention(
    q, k, v, mask, causal: bool, scale: float | None, cap: float | None, dropout: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDPA's computation written out (transformers' eager attention), softmax(q k^T * scale + mask) v with the softmax
    in float32, for what SDPA has no hook for: scores soft-capped to cap * tanh(scores / cap) before the mask (Gemma
    2; `cap` None: none), and the probabilities kept (`recording`). q (B, H, T, Dh), k and v (B, K, S, Dh); mask as for
    SDPA: bool (True = may attend) or a float bias, broadcastable to (B, H, T, S); None with `causal` is causal over
    T = S. Returns the output (B, H, T, Dh) and the probabilities (B, H, T, S), before dropout."""
    H, K = q.shape[1], k.shape[1]
    k, v = k.repeat_interleave(H // K, 1), v.repeat_interleave(H // K, 1)  # (B, H, S, Dh): each kv head serves H / K
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-1, -2)).float() * scale  # (B, H, T, S)
    if cap is not None:
        scores = torch.tanh(scores / cap) * cap
    if causal:
        T, S = scores.shape[-2:]
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)  # (T, S)
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:  # a float bias (ALiBi, T5), -inf where hidden
        scores = scores + mask.float()
    probs = scores.softmax(-1)  # (B, H, T, S)
    weights = F.dropout(probs, dropout, True) if dropout else probs
    return weights.to(v.dtype) @ v, probs  # (B, H, T, Dh), (B, H, T, S)


def _write_cache(kv, k: torch.Tensor, v: torch.Tensor, input_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Write the new keys and values (B, K, T, Dh) into the cache and return the keys and values to attend over.

    kv = (k_cache, v_cache), (B, K, S, Dh) indexed by position: written at input_pos, all S slots returned.
    kv = (k_cache, v_cache, slots), a rolling window of W slots: the window's keys followed by the new ones
    (B, K, W + T, Dh) are returned, then the last len(slots) new ones overwrite the slots (position % W).
    kv = an object with `write` (a quantized cache's layer): it stores them and returns what to attend over."""
    if hasattr(kv, "write"):  # a quantized cache's layer (kv_cache.Int8Layer) rounds, stores and dequantizes itself
        return kv.write(k, v, input_pos)
    k_cache, v_cache = kv[0], kv[1]
    dtype = k.dtype  # a cache kept in another dtype (bf16 beside fp32 weights) is read back in the model's
    k, v = k.to(k_cache.dtype), v.to(v_cache.dtype)
    if len(kv) == 3:
        slots = kv[2]  # (n,)
        keys, values = torch.cat((k_cache, k), 2), torch.cat((v_cache, v), 2)  # (B, K, W + T, Dh)
        n = slots.shape[0]
        k_cache.index_copy_(2, slots, k[:, :, k.shape[2] - n :])
        v_cache.index_copy_(2, slots, v[:, :, v.shape[2] - n :])
        return keys.to(dtype), values.to(dtype)
    if input_pos.dim() == 1:
        k_cache.index_copy_(2, input_pos, k)
        v_cache.index_copy_(2, input_pos, v)
    else:  # each row at its own positions (a serving batch): rows (B, 1) x positions (B, T) pick (B, T, K, Dh)
        rows = torch.arange(k.shape[0], device=input_pos.device)[:, None]  # (B, 1)
        k_cache[rows, :, input_pos] = k.transpose(1, 2)
        v_cache[rows, :, input_pos] = v.transpose(1, 2)
    return k_cache.to(dtype), v_cache.to(dtype)
