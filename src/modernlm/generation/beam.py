"""Beam search, step for step the algorithm of Hugging Face `transformers` (its vectorised `_beam_search`).

Each step: log-softmax of the logits (+ the repetition penalty on log-probs, as transformers applies its processors
there), add each beam's running score, take the top K = max(2, 1 + #eos) * beams continuations over all beams of a
prompt. Continuations that end (an EOS token, or the last allowed step) and rank among the first `num_beams` become
finished hypotheses scored sum_logprobs / new_length ** length_penalty; the best `num_beams` unfinished ones run on.
Early stopping as in transformers: False (the heuristic that compares with the current length), True (stop once
`num_beams` hypotheses are finished), "never" (with length_penalty > 0, compare with the longest possible length).

Shapes: B prompts, N beams, K candidates per prompt, V vocabulary, L new tokens at most.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layers.kv_cache import KVCache
from .sampling import SamplingParams, apply_repetition_penalty

_BIG = -1.0e9  # transformers' "minus infinity" for scores; kept identical so ties break the same way


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, M, ...) picked along dim 1 by index (B, N) -> (B, N, ...)."""
    while index.dim() < x.dim():
        index = index.unsqueeze(-1)
    return x.gather(1, index.expand(*index.shape[:2], *x.shape[2:]))


def _check_early_stopping(early_stopping) -> None:
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")


@torch.inference_mode()
def beam_search(
    model,
    ids: torch.Tensor,  # (B, P) left-padded prompts
    mask: torch.Tensor | None,  # (B, P) 1 = real token; None when no padding
    steps: int,  # new tokens at most (L)
    *,
    num_beams: int,
    length_penalty: float,
    early_stopping: bool | str,
    eos: frozenset[int],
    seen: torch.Tensor | None,  # (B, V) prompt tokens, for the repetition penalty
    params: SamplingParams,
) -> list[list[int]]:
    """The best finished hypothesis of each prompt: its new token ids (ending with EOS if it stopped there)."""
    _check_early_stopping(early_stopping)
    if not isinstance(length_penalty, (int, float)) or isinstance(length_penalty, bool):
        raise ValueError(f"length_penalty must be a number, got {length_penalty!r}")
    B, P = ids.shape
    N, L, dev = num_beams, steps, ids.device
    K = max(2, 1 + len(eos)) * N
    eos_ids = torch.tensor(sorted(eos), dtype=torch.long, device=dev)

    # Prefill each prompt once, then give every beam a copy of its cache.
    small = KVCache.for_model(model, B, P + L - 1)
    cache_mask = None
    if mask is not None:
        cache_mask = torch.ones(B, small.max_len, dtype=torch.long, device=dev)
        cache_mask[:, :P] = mask
    pos = torch.arange(P + L, device=dev)
    logits = model(ids, input_pos=pos[:P], cache=small, attention_mask=cache_mask, last_only=True)[:, -1]  # (B, V)
    cache = KVCache.for_model(model, B * N, small.max_len)
    cache.k.copy_(small.k.repeat_interleave(N, dim=1))
    cache.v.copy_(small.v.repeat_interleave(N, dim=1))
    del small
    logits = logits.repeat_interleave(N, dim=0)  # (B*N, V)
    if cache_mask is not None:
        cache_mask = cache_mask.repeat_interleave(N, dim=0)
    if seen is not None:
        seen = seen.repeat_interleave(N, dim=0)  # (B*N, V)

    run_seqs = torch.zeros(B, N, L, dtype=torch.long, device=dev)
    run_scores = torch.zeros(B, N, device=dev)
    run_scores[:, 1:] = _BIG  # only the first beam's continuations at step one: the beams start identical
    fin_seqs = torch.zeros(B, N, L, dtype=torch.long, device=dev)
    fin_scores = torch.full((B, N), _BIG, device=dev)
    fin_lens = torch.zeros(B, N, dtype=torch.long, device=dev)
    fin_done = torch.zeros(B, N, dtype=torch.bool, device=dev)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=dev)
    top_n = torch.arange(K, device=dev) < N  # (K,) the candidates that may finish
    offsets = torch.arange(B, device=dev)[:, None] * N  # (B, 1)

    for t in range(L):
        logp = F.log_softmax(logits.float(), dim=-1)  # (B*N, V)
        if params.uses_penalty:
            logp = apply_repetition_penalty(logp, seen, params.repetition_penalty)
        V = logp.shape[-1]
        total = (logp.view(B, N, V) + run_scores[:, :, None]).view(B, N * V)
        cand_scores, cand_idx = torch.topk(total, K)  # (B, K)
        cand_beam, cand_tok = cand_idx // V, cand_idx % V
        cand_seqs = _gather(run_seqs, cand_beam).clone()  # (B, K, L)
        cand_seqs[:, :, t] = cand_tok
        ends = torch.isin(cand_tok, eos_ids) | (t == L - 1)  # (B, K)

        # the unfinished continuations with the best scores run on
        run_cand = cand_scores + ends.float() * _BIG
        keep = torch.topk(run_cand, N).indices  # (B, N)
        run_seqs, run_scores = _gather(cand_seqs, keep), _gather(run_cand, keep)
        src_beam = _gather(cand_beam, keep)

        # the continuations that end now join the finished hypotheses if they beat them
        just_done = ends & top_n[None, :]
        scored = cand_scores / ((t + 1) ** length_penalty)
        scored = scored + (fin_done.all(-1, keepdim=True) & (early_stopping is True)).float() * _BIG
        scored = scored + (~improvable).float() * _BIG
        scored = scored + (~just_done) * _BIG
        merged = torch.topk(torch.cat((fin_scores, scored), dim=1), N).indices
        fin_seqs = _gather(torch.cat((fin_seqs, cand_seqs), dim=1), merged)
        fin_scores = _gather(torch.cat((fin_scores, scored), dim=1), merged)
        fin_lens = _gather(torch.cat((fin_lens, torch.full_like(cand_tok, t + 1)), dim=1), merged)
        fin_done = _gather(torch.cat((fin_done, just_done), dim=1), merged)
        if t == L - 1:
            break

        # can a running beam still beat the worst finished one? (transformers' heuristic)
        best_len = L if early_stopping == "never" and length_penalty > 0 else t + 1
        best_possible = run_scores[:, :1] / (best_len**length_penalty)
        worst = torch.where(fin_done, fin_scores.min(dim=1, keepdim=True).values, _BIG)
        improvable = improvable & (best_possible > worst).any(dim=-1, keepdim=True)
        open_beams = not (bool(fin_done.all()) and early_stopping is True)
        if not (bool(improvable.any()) and open_beams and not bool(ends.all())):
            break

        beam_idx = (src_beam + offsets).view(-1)  # (B*N,) the cache row each new beam continues
        cache.k.copy_(cache.k.index_select(1, beam_idx))
        cache.v.copy_(cache.v.index_select(1, beam_idx))
        last = run_seqs[:, :, t].reshape(-1, 1)  # (B*N, 1)
        if seen is not None:
            seen = seen.index_select(0, beam_idx)
            seen.scatter_(1, last, True)
        logits = model(last, input_pos=pos[P + t : P + t + 1], cache=cache, attention_mask=cache_mask, last_only=True)[
            :, -1
        ]

    seqs, lens = fin_seqs[:, 0].tolist(), fin_lens[:, 0].tolist()
    return [s[:n] for s, n in zip(seqs, lens, strict=True)]
