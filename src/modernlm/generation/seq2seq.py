"""Generation for an encoder-decoder (T5): the encoder runs once, each decoder block projects the encoder output to
its cross-attention keys and values once, and the decoder's self-attention fills a static KV cache one token per
step. `use_cache=False` is the plain twin (the whole decoder sequence recomputed every step), kept for the tests.

Shapes: B sequences, S encoder tokens (right-padded), V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .sampling import SamplingParams, next_token


def encoder_inputs(input_ids, attention_mask=None, device=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, S) ids right-padded with 0 and the (B, S) mask (None when nothing is padded), from one list of ids, a
    list of lists, or a (B, S) tensor with an optional mask."""
    if isinstance(input_ids, torch.Tensor):
        ids = input_ids[None] if input_ids.dim() == 1 else input_ids
        if attention_mask is not None and attention_mask.dim() == 1:
            attention_mask = attention_mask[None]
        return ids.long().to(device), None if attention_mask is None else attention_mask.to(device)
    rows = [list(input_ids)] if input_ids and isinstance(input_ids[0], int) else [list(r) for r in input_ids]
    if not rows or any(not r for r in rows):
        raise ValueError("every seq2seq input needs at least one token")
    S = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), S, dtype=torch.long)
    mask = torch.zeros(len(rows), S, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, : len(row)], mask[b, : len(row)] = torch.tensor(row), 1
    return ids.to(device), mask.to(device) if bool((mask == 0).any()) else None


@torch.no_grad()
def generate_seq2seq(
    model,
    input_ids: torch.Tensor | Sequence[int] | Sequence[Sequence[int]],
    max_new_tokens: int,
    params: SamplingParams,
    eos: frozenset[int],
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> list[list[int]]:
    """The new decoder tokens of each input (the start token excluded, a final EOS included)."""
    device = model.embed.weight.device
    ids, mask = encoder_inputs(input_ids, attention_mask, device)
    B = ids.shape[0]
    memory = model.memory_kv(model.encode(ids, mask))  # once per input
    cache = model.new_cache(B, max_new_tokens) if use_cache else None
    tokens = torch.full((B, 1), model.config.decoder_start_token_id, dtype=torch.long, device=device)  # (B, 1)
    seen = (
        torch.zeros(B, model.config.vocab_size, dtype=torch.bool, device=device) if params.repetition_penalty else None
    )
    out: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    for step in range(max_new_tokens):
        if cache is not None:
            pos = torch.tensor([step], device=device)
            logits = model.decode(tokens[:, -1:], memory, mask, input_pos=pos, cache=cache, last_only=True)[:, -1]
        else:
            logits = model.decode(tokens, memory, mask)[:, -1]  # (B, V)
        chosen = next_token(logits, params, seen, generator)  # (B,)
        if seen is not None:
            seen[torch.arange(B), chosen] = True
        tokens = torch.cat([tokens, chosen[:, None]], 1)
        for b, t in enumerate(chosen.tolist()):
            if not done[b]:
                out[b].append(t)
                done[b] = t in eos
        if all(done):
            break
    return out
