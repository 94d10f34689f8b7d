"""Logit filters and the sampler: what turns a row of logits into the next token.

The definitions follow Hugging Face `transformers` (its logits processors), applied in the same order:
repetition penalty -> temperature -> top-k -> top-p -> min-p -> sample (or argmax when temperature is 0).
- repetition penalty (Keskar et al. 2019, CTRL): a token already in the sequence (prompt or generated) has its
  logit divided by the penalty when positive and multiplied by it when negative.
- top-k: keep the k largest logits (and any tied with the k-th).
- top-p (nucleus, Holtzman et al. 2019): keep the smallest set of most probable tokens whose probability sums to at
  least p; computed as transformers does, by dropping the tail whose ascending cumulative probability is <= 1 - p.
- min-p (Nguyen et al. 2024): keep tokens whose probability is at least min_p times the top token's probability.
Every filter keeps at least one token. Filtered logits are -inf.

Shapes: B rows (sequences), V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NEG_INF = float("-inf")


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. `temperature == 0` is greedy (argmax); the filters then do not matter."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None

    def __post_init__(self) -> None:
        t = self.temperature
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature must be a number >= 0 and finite (0 means greedy), got {t!r}")
        bad_k = not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 1
        if self.top_k is not None and bad_k:
            raise ValueError(f"top_k must be a positive integer or None, got {self.top_k!r}")
        if self.top_p is not None and not (isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1] (1 keeps every token), got {self.top_p!r}")
        if self.min_p is not None and not (isinstance(self.min_p, (int, float)) and 0.0 <= self.min_p <= 1.0):
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p!r}")
        r = self.repetition_penalty
        if r is not None and not (isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r < math.inf):
            raise ValueError(f"repetition_penalty must be > 0 and finite (1: none; > 1 penalises repeats), got {r!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def uses_penalty(self) -> bool:
        return self.repetition_penalty is not None and self.repetition_penalty != 1.0


# ---- the filters (each: (B, V) logits -> (B, V) logits) -----------------------------------------------------------
def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """`seen`: bool (B, V), True where the token occurs in the sequence so far."""
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=False)  # (B, V) ascending
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= (1 - p)
    drop_sorted[..., -1:] = False  # the most probable token always stays
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    probs = logits.softmax(dim=-1)
    drop = probs < min_p * probs.amax(dim=-1, keepdim=True)
    drop.scatter_(-1, probs.argmax(dim=-1, keepdim=True), False)
    return logits.masked_fill(drop, NEG_INF)


def process_logits(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None = None) -> torch.Tensor:
    """Penalty, temperature and the filters, in transformers' order: the logits the next token is sampled from."""
    if params.uses_penalty:
        if seen is None:
            raise ValueError("a repetition penalty needs `seen`, the (B, V) mask of tokens in each sequence")
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.greedy:
        return logits
    if params.temperature != 1.0:
        logits = logits / params.temperature
    if params.top_k is not None:
        logits = top_k_filter(logits, params.top_k)
    if params.top_p is not None:
        logits = top_p_filter(logits, params.top_p)
    if params.min_p is not None:
        logits = min_p_filter(logits, params.min_p)
    return logits


def sample_from_logits(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row from softmax(logits): (B, V) -> (B,) long.

    The exponential race: argmax_i p_i / E_i with E_i ~ Exp(1) picks i with probability p_i (the Gumbel-max trick in
    another form). It stays on the device (no host sync) and is reproducible under a seeded `generator`."""
    probs = logits.float().softmax(dim=-1)
    race = torch.empty_like(probs).exponential_(1.0, generator=generator).clamp_min_(torch.finfo(probs.dtype).tiny)
    return (probs / race).argmax(dim=-1)


def next_token(
    logits: torch.Tensor,  # (B, V) float logits of the last position
    params: SamplingParams,
    seen: torch.Tensor | None = None,  # bool (B, V), for the repetition penalty
    generator: torch.Generator | None = None,
) -> torch.Tensor:  # (B,) long
    logits = process_logits(logits, params, seen)
    if params.greedy:
        return logits.argmax(dim=-1)
    return sample_from_logits(logits, generator)
