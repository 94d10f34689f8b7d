"""Prefix reuse: a `Session` keeps one conversation's KV cache across calls, so a prompt that shares a prefix with what
is cached (the previous chat turns) only prefills the rest. Exact, because a cached key depends only on the tokens up
to it and its position. `stream_generate` is one call of a fresh session, yielding text."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..layers.kv_cache import KVCache, new_cache
from .generate import seen_mask, token_steps
from .inputs import (
    check_max_new_tokens,
    check_token_ids,
    device_of,
    eos_set,
    make_generator,
    model_sampling,
    prepare_prompts,
    stop_list,
    token_budget,
)
from .stops import FinishedRows, IncrementalDecoder


@dataclass
class TurnStats:
    """What the last call did: tokens reused from the cache, prefilled and generated, and the time each took."""

    prompt_tokens: int = 0
    reused_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0  # until the first new token was known
    decode_s: float = 0.0  # the rest

    @property
    def decode_tokens_per_s(self) -> float:
        return (self.new_tokens - 1) / self.decode_s if self.new_tokens > 1 and self.decode_s > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        total = self.prefill_s + self.decode_s
        return self.new_tokens / total if total > 0 else 0.0


@dataclass
class Session:
    """One conversation's KV cache, kept across calls (batch 1).

    Each call finds the longest common prefix of its token ids with the tokens whose keys and values are cached and
    prefills only the rest; positions beyond are stale but invisible (the causal mask hides them until they are
    overwritten). The cache grows in steps of `grow` positions up to the model's context; `kv_cache` is its storage
    ("auto": the model's dtype; "bfloat16", "int8"...: see layers/kv_cache.new_cache)."""

    model: torch.nn.Module
    tokenizer: object = None
    grow: int = 256
    kv_cache: str = "auto"
    cache: KVCache | None = field(default=None, repr=False)
    cached: list[int] = field(default_factory=list, repr=False)  # the tokens at positions 0.. of the cache
    stats: TurnStats = field(default_factory=TurnStats)

    def reset(self) -> None:
        """Forget the cached tokens (the buffers are kept and overwritten)."""
        self.cached = []

    def generate(self, input_ids: Sequence[int] | str, max_new_tokens: int, **options) -> list[int]:
        """The new token ids for one prompt (ids, or text with a tokenizer); options as in `generate`, no beams."""
        return [t for t, _ in self._tokens(input_ids, max_new_tokens, **options)]

    def stream(self, prompt: Sequence[int] | str, max_new_tokens: int, **options) -> Iterator[str]:
        """Yield the text of the new tokens as it comes (a final EOS token is not shown)."""
        decoder = IncrementalDecoder(self._need_tokenizer())
        eos = eos_set(options.get("eos_token_id"))
        for t, _ in self._tokens(prompt, max_new_tokens, **options):
            if t in eos:
                break
            piece = decoder.push(t)
            if piece:
                yield piece
        rest = decoder.flush()
        if rest:
            yield rest

    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("text in or out needs a tokenizer: Session(model, tokenizer=...)")
        return self.tokenizer

    def _tokens(
        self,
        prompt: Sequence[int] | str,
        max_new_tokens: int,
        *,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        stop_strings: str | Sequence[str] | None = None,
        seed: int | None = None,
    ) -> Iterator[tuple[int, int]]:
        """Validate everything, then yield (token, index) for each new token."""
        params = model_sampling(self.model, temperature, top_k, top_p, min_p, repetition_penalty)
        check_max_new_tokens(max_new_tokens)
        stops = stop_list(stop_strings, self.tokenizer)
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("the prompt is empty: give some text")
            prompt = self._need_tokenizer().encode(prompt)
        device = device_of(self.model)
        prompts = prepare_prompts(prompt, None, device)
        if len(prompts.rows) != 1:
            raise ValueError(f"a Session holds one conversation: give one prompt, not {len(prompts.rows)}")
        ids = prompts.rows[0]
        check_token_ids(prompts, self.model.config.vocab_size)
        steps = token_budget(self.model, len(ids), max_new_tokens)
        return self._run(prompts, ids, steps, params, eos_set(eos_token_id), stops, make_generator(seed, device))

    def _run(self, prompts, ids, steps, params, eos, stops, generator) -> Iterator[tuple[int, int]]:
        self._ensure_cache(len(ids) + steps - 1)
        reuse = _common_prefix(self.cached, ids, limit=len(ids) - 1)  # prefill at least one token for its logits
        self.cached = ids[:reuse]  # what stays valid if this call is interrupted
        self.stats = stats = TurnStats(prompt_tokens=len(ids), reused_tokens=reuse)
        seen = seen_mask(prompts, self.model.config.vocab_size, params)
        rows = FinishedRows(1, eos, stops, self.tokenizer)
        tail = prompts.ids[:, reuse:]
        t0 = time.perf_counter()
        steps_iter = token_steps(self.model, tail, reuse, self.cache, None, params, seen, generator, steps)
        generated: list[int] = []
        for i, tokens in enumerate(steps_iter):
            now = time.perf_counter()
            if i == 0:
                stats.prefill_s, t0 = now - t0, now
                self.cached = list(ids)
            else:
                stats.decode_s = now - t0
                self.cached.append(generated[-1])  # the previous token has been fed through the model
            (t,) = rows.update(tokens)
            generated.append(t)
            stats.new_tokens = len(generated)
            yield t, i
            if rows.all_done:
                break

    def _ensure_cache(self, needed: int) -> None:
        if self.cache is not None and self.cache.max_len >= needed:
            return
        limit = self.model.config.max_seq_len
        size = min(limit, -(-needed // self.grow) * self.grow)
        new = new_cache(self.model, 1, size, self.kv_cache, rolling=False)  # rewinds to any common prefix
        if self.cache is not None and self.cached:
            new.copy_prefix(self.cache, len(self.cached))
        self.cache = new


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = 0
    for x, y in zip(a[:limit], b[:limit], strict=False):
        if x != y:
            break
        n += 1
    return n


def stream_generate(model, tokenizer, prompt: str | Sequence[int], max_new_tokens: int, **options) -> Iterator[str]:
    """Generate for one prompt (text, encoded with `tokenizer`, or token ids) and yield the text as it comes.

    The pieces joined equal `tokenizer.decode` of the ids `generate` returns, less a final EOS token. Options are
    those of `generate` except beams and batching."""
    yield from Session(model, tokenizer=tokenizer).stream(prompt, max_new_tokens, **options)
