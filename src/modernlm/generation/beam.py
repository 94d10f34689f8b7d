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

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..layers.kv_cache import KVCache, new_cache
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
    kv_cache: str = "auto",  # the cache's storage (layers/kv_cache.new_cache)
) -> list[list[int]]:
    """The best finished hypothesis of each prompt: its new token ids (ending with EOS if it stopped there)."""
    _check_early_stopping(early_stopping)
    if not isinstance(length_penalty, (int, float)) or isinstance(length_penalty, bool):
        raise ValueError(f"length_penalty must be a number, got {length_penalty!r}")
    B, P = ids.shape
    N, L, dev = num_beams, steps, ids.device
    K = max(2, 1 + len(eos)) * N
    eos_ids = torch.tensor(sorted(eos), dtype=torch.long, device=dev)
    pos = torch.arange(P + L, device=dev)
    logits, cache, cache_mask = _prefill(model, ids, mask, pos, N, L, kv_cache)  # (B*N, V)
    if seen is not None:
        seen = seen.repeat_interleave(N, dim=0)  # (B*N, V)
    beams = _Beams.start(B, N, L, dev)
    top_n = torch.arange(K, device=dev) < N  # (K,) the candidates that may finish
    offsets = torch.arange(B, device=dev)[:, None] * N  # (B, 1)

    for t in range(L):
        cand = _candidates(beams, logits, seen, params, K, t)
        ends = torch.isin(cand.tok, eos_ids) | (t == L - 1)  # (B, K)
        src_beam = beams.run_on(cand, ends)  # (B, N)
        beams.finish(cand, ends & top_n[None, :], t, length_penalty, early_stopping)
        if t == L - 1 or not beams.go_on(t, L, length_penalty, early_stopping, ends):
            break
        beam_idx = (src_beam + offsets).view(-1)  # (B*N,) the cache row each new beam continues
        step_pos = pos[P + t : P + t + 1]
        logits, seen = _next_logits(model, cache, cache_mask, beam_idx, beams.run_seqs[:, :, t], seen, step_pos)

    seqs, lens = beams.fin_seqs[:, 0].tolist(), beams.fin_lens[:, 0].tolist()
    return [s[:n] for s, n in zip(seqs, lens, strict=True)]


def _prefill(
    model, ids: torch.Tensor, mask: torch.Tensor | None, pos: torch.Tensor, N: int, L: int, kv: str = "auto"
) -> tuple[torch.Tensor, KVCache, torch.Tensor | None]:
    """Prefill each prompt once, then give every beam a copy of its cache: the logits of each prompt's last token
    (B*N, V), the beams' cache, and their attention mask over it ((B*N, P + L - 1); None when no padding)."""
    B, P = ids.shape
    small = new_cache(model, B, P + L - 1, kv, rolling=False)
    cache_mask = None
    if mask is not None:
        cache_mask = torch.ones(B, small.max_len, dtype=torch.long, device=ids.device)
        cache_mask[:, :P] = mask
    logits = model(ids, input_pos=pos[:P], cache=small, attention_mask=cache_mask, last_only=True)[:, -1]  # (B, V)
    cache = new_cache(model, B * N, small.max_len, kv, rolling=False)
    for buffer, prefilled in zip(cache.buffers(), small.buffers(), strict=True):
        buffer.copy_(prefilled.repeat_interleave(N, dim=1))
    del small
    logits = logits.repeat_interleave(N, dim=0)  # (B*N, V)
    if cache_mask is not None:
        cache_mask = cache_mask.repeat_interleave(N, dim=0)
    return logits, cache, cache_mask


class _Candidates(NamedTuple):
    """The top K continuations of a step over all beams of each prompt."""

    scores: torch.Tensor  # (B, K) summed log-probs
    beam: torch.Tensor  # (B, K) the beam each continues
    tok: torch.Tensor  # (B, K) its new token
    seqs: torch.Tensor  # (B, K, L) the beam's tokens with the new one at step t


def _candidates(
    beams: _Beams, logits: torch.Tensor, seen: torch.Tensor | None, params: SamplingParams, K: int, t: int
) -> _Candidates:
    """Scoring: each beam's log-probs of the next token (repetition-penalised) plus its running score; the best K."""
    logp = F.log_softmax(logits.float(), dim=-1)  # (B*N, V)
    if params.uses_penalty:
        logp = apply_repetition_penalty(logp, seen, params.repetition_penalty)
    B, N = beams.run_scores.shape
    V = logp.shape[-1]
    total = (logp.view(B, N, V) + beams.run_scores[:, :, None]).view(B, N * V)
    cand_scores, cand_idx = torch.topk(total, K)  # (B, K)
    cand_beam, cand_tok = cand_idx // V, cand_idx % V
    cand_seqs = _gather(beams.run_seqs, cand_beam).clone()  # (B, K, L)
    cand_seqs[:, :, t] = cand_tok
    return _Candidates(cand_scores, cand_beam, cand_tok, cand_seqs)


@dataclass
class _Beams:
    """The search's state: N running beams of each prompt and its N best finished hypotheses."""

    run_seqs: torch.Tensor  # (B, N, L)
    run_scores: torch.Tensor  # (B, N) summed log-probs
    fin_seqs: torch.Tensor  # (B, N, L)
    fin_scores: torch.Tensor  # (B, N) sum_logprobs / new_length ** length_penalty; _BIG where none yet
    fin_lens: torch.Tensor  # (B, N)
    fin_done: torch.Tensor  # (B, N) a finished hypothesis holds the slot
    improvable: torch.Tensor  # (B, 1) a running beam may still beat the worst finished one

    @classmethod
    def start(cls, B: int, N: int, L: int, dev: torch.device) -> _Beams:
        run_scores = torch.zeros(B, N, device=dev)
        run_scores[:, 1:] = _BIG  # only the first beam's continuations at step one: the beams start identical
        return cls(
            run_seqs=torch.zeros(B, N, L, dtype=torch.long, device=dev),
            run_scores=run_scores,
            fin_seqs=torch.zeros(B, N, L, dtype=torch.long, device=dev),
            fin_scores=torch.full((B, N), _BIG, device=dev),
            fin_lens=torch.zeros(B, N, dtype=torch.long, device=dev),
            fin_done=torch.zeros(B, N, dtype=torch.bool, device=dev),
            improvable=torch.ones(B, 1, dtype=torch.bool, device=dev),
        )

    def run_on(self, cand: _Candidates, ends: torch.Tensor) -> torch.Tensor:
        """Selection: the unfinished continuations with the best scores run on. Returns the beam each continues."""
        N = self.run_scores.shape[1]
        run_cand = cand.scores + ends.float() * _BIG
        keep = torch.topk(run_cand, N).indices  # (B, N)
        self.run_seqs, self.run_scores = _gather(cand.seqs, keep), _gather(run_cand, keep)
        return _gather(cand.beam, keep)

    def finish(
        self, cand: _Candidates, just_done: torch.Tensor, t: int, length_penalty: float, early_stopping: bool | str
    ) -> None:
        """The continuations that end now (`just_done`, (B, K)) join the finished hypotheses if they beat them."""
        N = self.fin_scores.shape[1]
        scored = cand.scores / ((t + 1) ** length_penalty)
        scored = scored + (self.fin_done.all(-1, keepdim=True) & (early_stopping is True)).float() * _BIG
        scored = scored + (~self.improvable).float() * _BIG
        scored = scored + (~just_done) * _BIG
        merged = torch.topk(torch.cat((self.fin_scores, scored), dim=1), N).indices
        self.fin_seqs = _gather(torch.cat((self.fin_seqs, cand.seqs), dim=1), merged)
        self.fin_scores = _gather(torch.cat((self.fin_scores, scored), dim=1), merged)
        self.fin_lens = _gather(torch.cat((self.fin_lens, torch.full_like(cand.tok, t + 1)), dim=1), merged)
        self.fin_done = _gather(torch.cat((self.fin_done, just_done), dim=1), merged)

    def go_on(self, t: int, L: int, length_penalty: float, early_stopping: bool | str, ends: torch.Tensor) -> bool:
        """Whether another step can change the result: a running beam can still beat the worst finished one
        (transformers' heuristic), a prompt still has room under early_stopping=True, and not every candidate ended."""
        best_len = L if early_stopping == "never" and length_penalty > 0 else t + 1
        best_possible = self.run_scores[:, :1] / (best_len**length_penalty)
        worst = torch.where(self.fin_done, self.fin_scores.min(dim=1, keepdim=True).values, _BIG)
        self.improvable = self.improvable & (best_possible > worst).any(dim=-1, keepdim=True)
        open_beams = not (bool(self.fin_done.all()) and early_stopping is True)
        return bool(self.improvable.any()) and open_beams and not bool(ends.all())


def _next_logits(
    model,
    cache: KVCache,
    cache_mask: torch.Tensor | None,  # (B*N, P + L - 1)
    beam_idx: torch.Tensor,  # (B*N,) the cache row each running beam continues
    last: torch.Tensor,  # (B, N) each running beam's newest token
    seen: torch.Tensor | None,  # (B*N, V)
    input_pos: torch.Tensor,  # (1,)
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Move the cache rows (and the seen tokens) to the beams that run on and feed each its newest token: the next
    logits (B*N, V) and the seen tokens with the new ones."""
    for buffer in cache.buffers():  # keys, values (and an int8 cache's scales): (L, B*N, ...)
        buffer.copy_(buffer.index_select(1, beam_idx))
    last = last.reshape(-1, 1)  # (B*N, 1)
    if seen is not None:
        seen = seen.index_select(0, beam_idx)
        seen.scatter_(1, last, True)
    logits = model(last, input_pos=input_pos, cache=cache, attention_mask=cache_mask, last_only=True)[:, -1]
    return logits, seen
