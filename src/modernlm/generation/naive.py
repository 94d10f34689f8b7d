"""The reference generation (DESIGN rule 6): each prompt alone, the whole sequence recomputed for every new token,
no cache, no padding. The fast loop (generate.py) and the serving engine are held to it."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .inputs import TokenIds, check_max_new_tokens, device_of, eos_set, make_generator, prepare_prompts, token_budget
from .sampling import SamplingParams, next_token


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
    check_max_new_tokens(max_new_tokens)
    eos = eos_set(eos_token_id)
    device = device_of(model)
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
