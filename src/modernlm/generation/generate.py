"""Generation: prefill the prompt once into a static KV cache, then decode one token per step.

- `generate(model, input_ids, max_new_tokens, ...)`: greedy, sampling (temperature, top-k, top-p, min-p, repetition
  penalty) or beam search; batched prompts of different lengths are left-padded with an attention mask.
- `token_steps`: the loop itself (prefill, then one token a step), which `Session` (session.py: prefix reuse across
  calls, `stream_generate`) shares. Inputs are checked in inputs.py; stop strings and streamed text live in stops.py;
  the reference that recomputes everything (DESIGN rule 6) in naive.py.

Every token costs one host sync (`.tolist()` of the chosen tokens), needed to test EOS and stop strings.
Shapes: B sequences, P prompt length (after left padding), S cache length, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from ..checkpoints.limits import check_memory, kv_bytes
from ..layers.kv_cache import KVCache, new_cache
from .beam import beam_search
from .compiled import decode_step
from .inputs import (
    Prompts,
    TokenIds,
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
from .sampling import SamplingParams, next_token
from .stops import FinishedRows


# ---- the loop -----------------------------------------------------------------------------------------------------
def cache_mask(prompts: Prompts, max_len: int) -> torch.Tensor | None:
    """(B, S) over the whole cache: 0 at each row's left padding, 1 elsewhere (later positions are hidden by the
    causal mask until they are written)."""
    if prompts.mask is None:
        return None
    mask = torch.ones(prompts.ids.shape[0], max_len, dtype=torch.long, device=prompts.ids.device)
    mask[:, : prompts.length] = prompts.mask
    return mask


def seen_mask(prompts: Prompts, vocab_size: int, params: SamplingParams) -> torch.Tensor | None:
    """bool (B, V): the tokens of each prompt (padding excluded), for the repetition penalty."""
    if not params.uses_penalty:
        return None
    seen = torch.zeros(len(prompts.rows), vocab_size, dtype=torch.bool, device=prompts.ids.device)
    ids = prompts.ids.masked_fill(prompts.mask == 0, vocab_size) if prompts.mask is not None else prompts.ids
    padded = torch.zeros(len(prompts.rows), vocab_size + 1, dtype=torch.bool, device=seen.device)
    padded.scatter_(1, ids, True)
    return padded[:, :vocab_size].contiguous()


@torch.inference_mode()
def token_steps(
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


def generate(
    model,
    input_ids: TokenIds,
    max_new_tokens: int,
    *,
    temperature: float | None = None,
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
    kv_cache: str = "auto",
) -> list[list[int]]:
    """Generate up to `max_new_tokens` tokens after each prompt; return the new token ids of each, as a list of lists.

    `input_ids`: one prompt (a list of ints or a 1-D tensor), a list of prompts of any lengths, or a (B, T) tensor
    with an optional left-padding `attention_mask`. Prompts are left-padded here; each row's tokens equal what it
    would get alone. A sequence ends after an `eos_token_id` (included in its output, as in transformers), after the
    token that completes one of `stop_strings` (needs `tokenizer`; the token is included), or at `max_new_tokens`
    (fewer if the model's context `max_seq_len` runs out).

    Strategies: `temperature=0` is greedy; `temperature > 0` samples, after `top_k`, `top_p`, `min_p` (see
    sampling.py); `repetition_penalty` applies to both. With none of these five given, the model's own defaults
    apply (`model.generation_config`: its generation_config.json, or the fallback temperature 0.7 / top-p 0.9 for a
    loaded source without one; greedy for a model built in Python); with any given, exactly those (temperature 0
    when not given). `seed` makes sampling reproducible (a private torch.Generator). `num_beams > 1` is beam search,
    matching transformers' (score = sum of log-probs / new_length ** length_penalty; `early_stopping` False, True or
    "never" as there); it returns the best beam. `kv_cache`: the cache's storage, "auto" (the model's dtype),
    "bfloat16", "float16", "float32" or "int8" (layers/kv_cache.py). Raises ValueError on bad input before any work."""
    if num_beams != 1 and temperature is None:
        temperature = 0.0  # beams are greedy here, whatever the model's sampling defaults
    params = model_sampling(model, temperature, top_k, top_p, min_p, repetition_penalty)
    check_max_new_tokens(max_new_tokens)
    stops = stop_list(stop_strings, tokenizer)
    _check_beams(num_beams, params, stops)
    if model.config.family != "decoder":  # the other members: an encoder-decoder generates, the rest cannot
        return _generate_member(
            model, input_ids, max_new_tokens, params, num_beams, stops, eos_token_id, attention_mask, seed
        )
    device = device_of(model)
    prompts = prepare_prompts(input_ids, attention_mask, device)
    check_token_ids(prompts, model.config.vocab_size)
    steps = token_budget(model, prompts.length, max_new_tokens)
    eos = eos_set(eos_token_id)
    if num_beams > 1:
        check_beam_room(model, num_beams, len(prompts.rows), prompts.length + steps, length_penalty)
        seen = seen_mask(prompts, model.config.vocab_size, params)
        return beam_search(
            model, prompts.ids, prompts.mask, steps, num_beams=num_beams, length_penalty=length_penalty,
            early_stopping=early_stopping, eos=eos, seen=seen, params=params, kv_cache=kv_cache,
        )  # fmt: skip
    cache = new_cache(model, len(prompts.rows), prompts.length + steps - 1, kv_cache)
    return _decode_loop(model, prompts, steps, params, eos, stops, tokenizer, make_generator(seed, device), cache)


def check_beam_room(model, num_beams: int, batch: int, length: int, length_penalty) -> None:
    """Refuse, before anything is allocated, more beams than the vocabulary has tokens or than memory holds (each
    beam is a row of the KV cache and of the logits), and a length penalty that is not a finite number."""
    if not isinstance(length_penalty, (int, float)) or isinstance(length_penalty, bool) or not math.isfinite(
        length_penalty
    ):
        raise ValueError(f"length_penalty must be a finite number (1: none), got {length_penalty!r}")
    config = model.config
    if num_beams > config.vocab_size:
        raise ValueError(
            f"num_beams {num_beams} is more than this model's vocabulary of {config.vocab_size} tokens; beam search "
            "gains little past a few dozen beams: use e.g. 4"
        )
    rows = batch * num_beams
    need = kv_bytes(config, rows, length, next(model.parameters()).element_size()) + rows * config.vocab_size * 16
    check_memory(need, f"beam search with {num_beams} beams (their KV caches and logits)",
                 "use fewer beams (e.g. 4) or fewer new tokens", device_of(model))  # fmt: skip


def _check_beams(num_beams, params: SamplingParams, stops: list[str]) -> None:
    """Beam search's arguments: a whole number of beams, and with more than one, greedy choices and no stop strings."""
    if not isinstance(num_beams, int) or isinstance(num_beams, bool) or num_beams < 1:
        raise ValueError(f"num_beams must be an integer >= 1, got {num_beams!r}")
    if num_beams > 1 and not params.greedy:
        raise ValueError("beam search is deterministic here: use temperature=0 with num_beams > 1 (no beam sampling)")
    if num_beams > 1 and stops:
        raise ValueError("stop_strings are not supported with beam search; use eos_token_id")


def _decode_loop(
    model,
    prompts: Prompts,
    steps: int,
    params: SamplingParams,
    eos: frozenset[int],
    stops: list[str],
    tokenizer,
    generator: torch.Generator | None,
    cache: KVCache,
) -> list[list[int]]:
    """The loop over token_steps for greedy or sampled decoding: the new tokens of each row, up to `steps`, each row
    ending at its EOS or stop string. `cache` (new_cache): a sliding-window model's keeps only its window per windowed
    layer, so memory stays flat however long it generates."""
    rows = FinishedRows(len(prompts.rows), eos, stops, tokenizer)
    out: list[list[int]] = [[] for _ in prompts.rows]
    seen = seen_mask(prompts, model.config.vocab_size, params)
    for tokens in token_steps(
        model, prompts.ids, 0, cache, cache_mask(prompts, cache.max_len), params, seen, generator, steps
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
    return generate_seq2seq(model, input_ids, max_new_tokens, params, eos_set(eos_token_id), attention_mask, generator)
