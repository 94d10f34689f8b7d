"""Generation: prefill the prompt once into a static KV cache, then decode one token per step.

- `generate(model, input_ids, max_new_tokens, ...)`: greedy, sampling (temperature, top-k, top-p, min-p, repetition
  penalty) or beam search; batched prompts of different lengths are left-padded with an attention mask.
- `stream_generate(model, tokenizer, prompt, ...)`: the same loop for one prompt, yielding text pieces that never
  split a multi-byte character.
- `Session`: keeps its KV cache across calls; a prompt that shares a prefix with what is cached (the previous chat
  turns) only prefills the rest. Exact, because a cached key depends only on the tokens up to it and its position.
- `generate_naive(...)`: the reference, recomputing the whole sequence for every token with no cache (DESIGN rule 6).

Every token costs one host sync (`.tolist()` of the chosen tokens), needed to test EOS and stop strings.
Shapes: B sequences, P prompt length (after left padding), S cache length, V vocabulary.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..layers.kv_cache import KVCache, RollingKVCache
from .beam import beam_search
from .compiled import decode_step
from .sampling import SamplingParams, next_token

TokenIds = torch.Tensor | Sequence[int] | Sequence[Sequence[int]]


# ---- inputs -------------------------------------------------------------------------------------------------------
@dataclass
class Prompts:
    """A batch of prompts, left-padded to a common length P."""

    rows: list[list[int]]  # the real tokens of each prompt
    ids: torch.Tensor  # (B, P) long, padding (token 0) on the left
    mask: torch.Tensor | None  # (B, P) long, 1 = real token, 0 = padding; None when no row is padded

    @property
    def length(self) -> int:
        return self.ids.shape[1]


def prepare_prompts(input_ids: TokenIds, attention_mask: torch.Tensor | None = None, device=None) -> Prompts:
    """Accept one prompt (list of ints, 1-D tensor), a batch (list of lists, (B, T) tensor with an optional
    left-padding `attention_mask`), and return them left-padded. Raises ValueError on an empty prompt."""
    rows = _rows(input_ids, attention_mask)
    if not rows:
        raise ValueError("input_ids is empty: give at least one prompt")
    for b, row in enumerate(rows):
        if not row:
            raise ValueError(f"prompt {b} is empty: every prompt needs at least one token (e.g. the BOS token)")
    P = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), P, dtype=torch.long)
    mask = torch.zeros(len(rows), P, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, P - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[b, P - len(row) :] = 1
    padded = bool((mask == 0).any())
    return Prompts(rows, ids.to(device), mask.to(device) if padded else None)


def _rows(input_ids: TokenIds, attention_mask: torch.Tensor | None) -> list[list[int]]:
    if isinstance(input_ids, torch.Tensor):
        if input_ids.is_floating_point() or input_ids.dim() not in (1, 2):
            raise ValueError(
                f"input_ids must be an integer tensor (T,) or (B, T), got {input_ids.dtype} "
                f"of shape {tuple(input_ids.shape)}"
            )
        ids = input_ids.tolist() if input_ids.dim() == 2 else [input_ids.tolist()]
        if attention_mask is None:
            return ids
        mask = attention_mask.tolist() if attention_mask.dim() == 2 else [attention_mask.tolist()]
        if len(mask) != len(ids) or any(len(m) != len(r) for m, r in zip(mask, ids, strict=False)):
            raise ValueError(
                f"attention_mask of shape {tuple(attention_mask.shape)} does not match input_ids "
                f"of shape {tuple(input_ids.shape)}"
            )
        rows = []
        for b, (row, m) in enumerate(zip(ids, mask, strict=True)):
            first = next((i for i, v in enumerate(m) if v), len(m))
            if not all(m[first:]):
                raise ValueError(
                    f"attention_mask row {b} has padding after real tokens: only left padding is "
                    "supported; pad on the left or pass a list of lists of different lengths"
                )
            rows.append(row[first:])
        return rows
    if attention_mask is not None:
        raise ValueError("attention_mask goes with a (B, T) tensor; a list of lists needs none (it is padded here)")
    if isinstance(input_ids, (str, bytes)) or not isinstance(input_ids, Sequence):
        raise TypeError(
            f"input_ids must be token ids (a list of ints, a list of such lists, or a LongTensor), got "
            f"{type(input_ids).__name__}; encode text first: tokenizer.encode(text)"
        )
    seq = list(input_ids)
    if seq and all(isinstance(t, int) and not isinstance(t, bool) for t in seq):
        return [seq]
    for row in seq:
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
            raise TypeError(f"input_ids must hold ints or lists of ints, got an item of type {type(row).__name__}")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in row):
            raise TypeError("input_ids rows must hold ints (token ids); encode text with tokenizer.encode(text)")
    return [list(row) for row in seq]


def check_token_ids(prompts: Prompts, vocab_size: int) -> None:
    """Every prompt id must be a row of the embedding: [0, vocab_size)."""
    for b, row in enumerate(prompts.rows):
        bad = next((t for t in row if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise ValueError(
                f"prompt {b} holds the token id {bad}, outside this model's vocabulary [0, {vocab_size}); "
                "encode with the model's own tokenizer"
            )


def _eos_set(eos_token_id: int | Sequence[int] | None) -> frozenset[int]:
    if eos_token_id is None:
        return frozenset()
    if isinstance(eos_token_id, int):
        return frozenset([eos_token_id])
    return frozenset(int(t) for t in eos_token_id)


def _stop_list(stop_strings: str | Sequence[str] | None, tokenizer) -> list[str]:
    if stop_strings is None:
        return []
    stops = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)
    for s in stops:
        if not isinstance(s, str) or not s:
            raise ValueError(f"stop strings must be non-empty strings, got {s!r}")
    if stops and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer (pass tokenizer=...) to turn the tokens into text")
    return stops


def _check_max_new_tokens(max_new_tokens) -> None:
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")


def token_budget(model, prompt_len: int, max_new_tokens: int) -> int:
    """How many new tokens fit: the last one is produced from position max_seq_len - 1, so at most
    max_seq_len - prompt_len + 1. Raises ValueError when the prompt alone is longer than the context."""
    limit = model.config.max_seq_len
    if prompt_len > limit:
        raise ValueError(
            f"the prompt has {prompt_len} tokens, more than the model's context of {limit}; shorten the prompt"
        )
    room = limit - prompt_len + 1
    if room < max_new_tokens:
        logging.getLogger("modernlm").warning(
            "the model's context (max_seq_len %d) leaves room for %d of the %d new tokens asked for after this "
            "%d-token prompt: generation stops there",
            limit, room, max_new_tokens, prompt_len,
        )  # fmt: skip
    return min(max_new_tokens, room)


# ---- text ---------------------------------------------------------------------------------------------------------
class IncrementalDecoder:
    """The text of a growing token sequence, piece by piece.

    Decodes a short window (the tokens since the last emitted piece, with the piece before them as context) and holds
    back text that ends in U+FFFD, the mark of a multi-byte character whose bytes have not all arrived. The pieces
    joined equal `tokenizer.decode` of all the ids (for byte-level tokenizers; window starts sit at character ends)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # window start: the tokens of the previous piece, kept as context
        self.read = 0  # tokens before this are emitted

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        return self._emit(final=False)

    def flush(self) -> str:
        """What is left, even if it ends in an incomplete character (then it really is invalid)."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        after = self.tokenizer.decode(self.ids[self.prefix :])
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""


class _Rows:
    """Which sequences have finished: on an EOS token, or when their text contains a stop string."""

    def __init__(self, batch: int, eos: frozenset[int], stops: list[str], tokenizer) -> None:
        self.eos, self.stops = eos, stops
        self.done = [False] * batch
        self.decoders = [IncrementalDecoder(tokenizer) for _ in range(batch)] if stops else []
        self.texts = [""] * batch
        self.longest_stop = max((len(s) for s in stops), default=0)

    def update(self, tokens: list[int]) -> list[int | None]:
        """The token each row takes this step (None for rows already done); marks rows that finish."""
        taken: list[int | None] = []
        for b, t in enumerate(tokens):
            if self.done[b]:
                taken.append(None)
                continue
            taken.append(t)
            if t in self.eos:
                self.done[b] = True
            elif self.stops:
                piece = self.decoders[b].push(t)
                if piece:
                    start = max(0, len(self.texts[b]) - self.longest_stop + 1)
                    self.texts[b] += piece
                    self.done[b] = any(s in self.texts[b][start:] for s in self.stops)
        return taken

    @property
    def all_done(self) -> bool:
        return all(self.done)


# ---- the loop -----------------------------------------------------------------------------------------------------
def _cache_mask(prompts: Prompts, max_len: int) -> torch.Tensor | None:
    """(B, S) over the whole cache: 0 at each row's left padding, 1 elsewhere (later positions are hidden by the
    causal mask until they are written)."""
    if prompts.mask is None:
        return None
    mask = torch.ones(prompts.ids.shape[0], max_len, dtype=torch.long, device=prompts.ids.device)
    mask[:, : prompts.length] = prompts.mask
    return mask


def _seen_mask(prompts: Prompts, vocab_size: int, params: SamplingParams) -> torch.Tensor | None:
    """bool (B, V): the tokens of each prompt (padding excluded), for the repetition penalty."""
    if not params.uses_penalty:
        return None
    seen = torch.zeros(len(prompts.rows), vocab_size, dtype=torch.bool, device=prompts.ids.device)
    ids = prompts.ids.masked_fill(prompts.mask == 0, vocab_size) if prompts.mask is not None else prompts.ids
    padded = torch.zeros(len(prompts.rows), vocab_size + 1, dtype=torch.bool, device=seen.device)
    padded.scatter_(1, ids, True)
    return padded[:, :vocab_size].contiguous()


@torch.inference_mode()
def _token_steps(
    model,
    ids: torch.Tensor,  # (B, T) the tokens to prefill (the prompt, or its part that is not cached)
    start: int,  # position of ids[:, 0]
    cache: KVCache,
    mask: torch.Tensor | None,  # (B, S) or None
    params: SamplingParams,
    seen: torch.Tensor | None,  # (B, V) bool, updated in place
    generator: torch.Generator | None,
    steps: int,
) -> Iterator[list[int]]:
    """Prefill once (logits of the last position only), then yield the chosen token of each row, one step at a time.
    The consumer stops the loop by closing the iterator; no forward pass runs after the last token."""
    T = ids.shape[1]
    step = decode_step(model)  # the model, or its compiled one-token step (compiled.py)
    pos = torch.arange(start, start + T + steps, device=ids.device)  # (T + steps,)
    logits = model(ids, input_pos=pos[:T], cache=cache, attention_mask=mask, last_only=True)[:, -1]  # (B, V)
    for i in range(steps):
        tok = next_token(logits, params, seen, generator)  # (B,)
        if seen is not None:
            seen.scatter_(1, tok[:, None], True)
        yield tok.tolist()  # the one host sync of the step
        if i + 1 < steps:
            p = T + i
            logits = step(tok[:, None], input_pos=pos[p : p + 1], cache=cache, attention_mask=mask, last_only=True)
            logits = logits[:, -1]


def make_generator(seed: int | None, device=None) -> torch.Generator | None:
    if seed is None:
        return None
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    return torch.Generator(device=device or "cpu").manual_seed(seed)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def generate(
    model,
    input_ids: TokenIds,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    eos_token_id: int | Sequence[int] | None = None,
    stop_strings: str | Sequence[str] | None = None,
    tokenizer=None,
    attention_mask: torch.Tensor | None = None,
    seed: int | None = None,
) -> list[list[int]]:
    """Generate up to `max_new_tokens` tokens after each prompt; return the new token ids of each, as a list of lists.

    `input_ids`: one prompt (a list of ints or a 1-D tensor), a list of prompts of any lengths, or a (B, T) tensor
    with an optional left-padding `attention_mask`. Prompts are left-padded here; each row's tokens equal what it
    would get alone. A sequence ends after an `eos_token_id` (included in its output, as in transformers), after the
    token that completes one of `stop_strings` (needs `tokenizer`; the token is included), or at `max_new_tokens`
    (fewer if the model's context `max_seq_len` runs out).

    Strategies: `temperature=0` is greedy; `temperature > 0` samples, after `top_k`, `top_p`, `min_p` (see
    sampling.py); `repetition_penalty` applies to both. `seed` makes sampling reproducible (a private
    torch.Generator). `num_beams > 1` is beam search, matching transformers' (score = sum of log-probs /
    new_length ** length_penalty; `early_stopping` False, True or "never" as there); it returns the best beam.
    Raises ValueError on bad input before any work."""
    params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty)
    _check_max_new_tokens(max_new_tokens)
    stops = _stop_list(stop_strings, tokenizer)
    if not isinstance(num_beams, int) or isinstance(num_beams, bool) or num_beams < 1:
        raise ValueError(f"num_beams must be an integer >= 1, got {num_beams!r}")
    if num_beams > 1 and not params.greedy:
        raise ValueError("beam search is deterministic here: use temperature=0 with num_beams > 1 (no beam sampling)")
    if num_beams > 1 and stops:
        raise ValueError("stop_strings are not supported with beam search; use eos_token_id")
    if model.config.family != "decoder":  # the other members: an encoder-decoder generates, the rest cannot
        return _generate_member(
            model, input_ids, max_new_tokens, params, num_beams, stops, eos_token_id, attention_mask, seed
        )
    device = _device(model)
    prompts = prepare_prompts(input_ids, attention_mask, device)
    check_token_ids(prompts, model.config.vocab_size)
    steps = token_budget(model, prompts.length, max_new_tokens)
    eos = _eos_set(eos_token_id)
    if num_beams > 1:
        return beam_search(
            model,
            prompts.ids,
            prompts.mask,
            steps,
            num_beams=num_beams,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
            eos=eos,
            seen=_seen_mask(prompts, model.config.vocab_size, params),
            params=params,
        )
    generator = make_generator(seed, device)
    # a sliding-window model keeps only its window per windowed layer: memory stays flat however long it generates
    cache_class = RollingKVCache if model.config.sliding_window else KVCache
    cache = cache_class.for_model(model, len(prompts.rows), prompts.length + steps - 1)
    rows = _Rows(len(prompts.rows), eos, stops, tokenizer)
    out: list[list[int]] = [[] for _ in prompts.rows]
    seen = _seen_mask(prompts, model.config.vocab_size, params)
    for tokens in _token_steps(
        model, prompts.ids, 0, cache, _cache_mask(prompts, cache.max_len), params, seen, generator, steps
    ):
        for b, t in enumerate(rows.update(tokens)):
            if t is not None:
                out[b].append(t)
        if rows.all_done:
            break
    return out


def _generate_member(model, input_ids, max_new_tokens, params, num_beams, stops, eos_token_id, attention_mask, seed):
    cfg = model.config
    if cfg.family != "seq2seq":
        use = {"encoder": "`modernlm embed` / `fill-mask` / `classify`", "vit": "`modernlm classify`"}[cfg.family]
        raise ValueError(
            f"generate needs a decoder or an encoder-decoder, but this model is an {cfg.family} "
            f"({cfg.extra.get('architecture', cfg.family)}): it has no decoder to write tokens with; use {use}, or "
            "give a decoder (the default smollm2-135m-instruct) or a T5 directory"
        )
    if num_beams > 1 or stops:
        raise ValueError("encoder-decoder generation supports greedy and sampling; drop num_beams / stop_strings")
    from .seq2seq import generate_seq2seq

    generator = make_generator(seed, model.embed.weight.device)
    return generate_seq2seq(model, input_ids, max_new_tokens, params, _eos_set(eos_token_id), attention_mask, generator)


def stream_generate(model, tokenizer, prompt: str | Sequence[int], max_new_tokens: int, **options) -> Iterator[str]:
    """Generate for one prompt (text, encoded with `tokenizer`, or token ids) and yield the text as it comes.

    The pieces joined equal `tokenizer.decode` of the ids `generate` returns, less a final EOS token. Options are
    those of `generate` except beams and batching."""
    yield from Session(model, tokenizer=tokenizer).stream(prompt, max_new_tokens, **options)


# ---- prefix reuse -------------------------------------------------------------------------------------------------
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
    overwritten). The cache grows in steps of `grow` positions up to the model's context."""

    model: torch.nn.Module
    tokenizer: object = None
    grow: int = 256
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
        eos = _eos_set(options.get("eos_token_id"))
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
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        stop_strings: str | Sequence[str] | None = None,
        seed: int | None = None,
    ) -> Iterator[tuple[int, int]]:
        """Validate everything, then yield (token, index) for each new token."""
        params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty)
        _check_max_new_tokens(max_new_tokens)
        stops = _stop_list(stop_strings, self.tokenizer)
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("the prompt is empty: give some text")
            prompt = self._need_tokenizer().encode(prompt)
        device = _device(self.model)
        prompts = prepare_prompts(prompt, None, device)
        if len(prompts.rows) != 1:
            raise ValueError(f"a Session holds one conversation: give one prompt, not {len(prompts.rows)}")
        ids = prompts.rows[0]
        check_token_ids(prompts, self.model.config.vocab_size)
        steps = token_budget(self.model, len(ids), max_new_tokens)
        return self._run(prompts, ids, steps, params, _eos_set(eos_token_id), stops, make_generator(seed, device))

    def _run(self, prompts, ids, steps, params, eos, stops, generator) -> Iterator[tuple[int, int]]:
        self._ensure_cache(len(ids) + steps - 1)
        reuse = _common_prefix(self.cached, ids, limit=len(ids) - 1)  # prefill at least one token for its logits
        self.cached = ids[:reuse]  # what stays valid if this call is interrupted
        self.stats = stats = TurnStats(prompt_tokens=len(ids), reused_tokens=reuse)
        seen = _seen_mask(prompts, self.model.config.vocab_size, params)
        rows = _Rows(1, eos, stops, self.tokenizer)
        tail = prompts.ids[:, reuse:]
        t0 = time.perf_counter()
        steps_iter = _token_steps(self.model, tail, reuse, self.cache, None, params, seen, generator, steps)
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
        new = KVCache.for_model(self.model, 1, size)
        if self.cache is not None and self.cached:
            n = len(self.cached)
            new.k[:, :, :, :n] = self.cache.k[:, :, :, :n]
            new.v[:, :, :, :n] = self.cache.v[:, :, :, :n]
        self.cache = new


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = 0
    for x, y in zip(a[:limit], b[:limit], strict=False):
        if x != y:
            break
        n += 1
    return n


# ---- the reference ------------------------------------------------------------------------------------------------
@torch.inference_mode()
def generate_naive(
    model,
    input_ids: TokenIds,
    max_new_tokens: int,
    *,
    eos_token_id: int | Sequence[int] | None = None,
    seed: int | None = None,
    **sampling,
) -> list[list[int]]:
    """The plain twin of `generate`: each prompt alone, the whole sequence recomputed for every new token, no cache,
    no padding. Same sampling options (no beams, no stop strings); the tests hold the fast path to it."""
    params = SamplingParams(**sampling)
    _check_max_new_tokens(max_new_tokens)
    eos = _eos_set(eos_token_id)
    device = _device(model)
    out = []
    for row in prepare_prompts(input_ids).rows:
        generator = make_generator(seed, device)
        seq, new = list(row), []
        for _ in range(token_budget(model, len(row), max_new_tokens)):
            logits = model(torch.tensor([seq], device=device))[:, -1]  # (1, V)
            seen = None
            if params.uses_penalty:
                seen = torch.zeros_like(logits, dtype=torch.bool)
                seen[0, torch.tensor(seq, device=device)] = True
            t = int(next_token(logits, params, seen, generator)[0])
            seq.append(t)
            new.append(t)
            if t in eos:
                break
        out.append(new)
    return out
