"""The inputs of generation, checked before any work: prompts (one, a batch of any lengths, or a left-padded
tensor) left-padded into a batch, token ids inside the vocabulary, EOS ids and stop strings, the token budget the
model's context leaves, and the seeded generator of a sampling run."""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .sampling import SamplingParams

TokenIds = torch.Tensor | Sequence[int] | Sequence[Sequence[int]]


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
        bad = next((t for t in row if not 0 <= t < 2**62), None)  # before a tensor overflows on it
        if bad is not None:
            raise ValueError(f"prompt {b} holds the token id {bad}, outside any vocabulary; encode with the model's "
                             "own tokenizer")  # fmt: skip
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


def eos_set(eos_token_id: int | Sequence[int] | None) -> frozenset[int]:
    """The end-of-sequence ids: None, one id, or a list of ids (ints >= 0; the string '12' is not the id 12)."""
    if eos_token_id is None:
        return frozenset()
    ids = [eos_token_id] if _is_id(eos_token_id) else eos_token_id
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, set, frozenset)) or not all(map(_is_id, ids)):
        raise TypeError(
            f"eos_token_id must be a token id (an int), a list of them, or None; got {eos_token_id!r:.60}: "
            "pass tokenizer.eos_token_id"
        )
    if any(t < 0 for t in ids):
        raise ValueError(f"eos_token_id must hold ids >= 0, got {eos_token_id!r:.60}")
    return frozenset(int(t) for t in ids)


def _is_id(value) -> bool:
    """An int, a numpy integer or a 0-d integer tensor; not a bool, a float or a string."""
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not value.is_floating_point() and value.dtype != torch.bool
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def stop_list(stop_strings: str | Sequence[str] | None, tokenizer) -> list[str]:
    if stop_strings is None:
        return []
    stops = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)
    for s in stops:
        if not isinstance(s, str) or not s:
            raise ValueError(f"stop strings must be non-empty strings, got {s!r}")
    if stops and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer (pass tokenizer=...) to turn the tokens into text")
    if stops and not callable(getattr(tokenizer, "decode", None)):
        raise TypeError(f"tokenizer must be a tokenizer (with decode), got {type(tokenizer).__name__}")
    return stops


def check_max_new_tokens(max_new_tokens) -> None:
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


def make_generator(seed: int | None, device=None) -> torch.Generator | None:
    if seed is None:
        return None
    if not isinstance(seed, int) or isinstance(seed, bool) or not -(2**63) <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [-2**63, 2**64) (torch's range), got {seed!r}")
    return torch.Generator(device=device or "cpu").manual_seed(seed)


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def encode_prompt(tokenizer, text: str, chat: bool = False) -> list[int]:
    """Ids of a prompt, BOS first when the tokenizer says prompts start with it (transformers' `tokenizer(text)`);
    a rendered chat template (`chat`) carries its own BOS or none, as `apply_chat_template(tokenize=True)` gives.
    The one rule for `generate`, `chat`, the server and the evaluations."""
    ids = tokenizer.encode(text)
    bos = getattr(tokenizer, "bos_token_id", None)
    if not chat and getattr(tokenizer, "add_bos_token", False) and bos is not None and ids[:1] != [bos]:
        ids = [bos, *ids]
    return ids


def model_sampling(model, temperature=None, top_k=None, top_p=None, min_p=None, repetition_penalty=None):
    """The SamplingParams of a call: with none of the five given, the model's own defaults (`model.generation_config`,
    set by the loader from generation_config.json or its fallback; greedy for a model built in Python); with any
    given, exactly those (temperature 0, greedy, when it is not given; the filters not given are off)."""
    given = (temperature, top_k, top_p, min_p, repetition_penalty)
    if all(v is None for v in given):
        defaults = getattr(model, "generation_config", None)
        return SamplingParams(**defaults.sampling()) if defaults is not None else SamplingParams()
    return SamplingParams(0.0 if temperature is None else temperature, top_k, top_p, min_p, repetition_penalty)
