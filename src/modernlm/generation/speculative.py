"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a cheap draft proposes k tokens, the target
scores all of them in one forward, and a rule keeps a prefix, so each target forward yields 1 to k + 1 tokens.

The rule keeps the target's distribution exactly. With p_i the target's (filtered) distribution at draft position i
and q_i the draft's, draft token d_i is accepted with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection
the token is drawn from the residual max(0, p_i - q_i) normalised, and the round ends; if all k are accepted, one
more token is drawn from p_{k+1}. Greedy (temperature 0) is the limit: accept while d_i is the target's argmax, and
the output equals plain greedy token for token.

Drafts:
- `"ngram"` (prompt lookup, Saxena 2023): the tokens that followed the latest earlier occurrence of the last n
  tokens (n from NGRAM down to 1) in the prompt and the output so far; no second model. A deterministic proposal is
  a one-hot q.
- `"int4"` (self-speculative): the target itself quantized to int4, with its own KV cache.
- any model with the same vocabulary.
Both caches are static; positions past the accepted tokens are stale but invisible to later queries (the causal mask
hides keys past each query's position until they are overwritten), so a rejection costs no cache copy.
Batch 1; no repetition penalty or stop strings (they would make p depend on the draft's own tokens).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..layers.kv_cache import new_cache
from .compiled import compile_decode, decode_step
from .inputs import check_max_new_tokens, device_of, eos_set, make_generator, prepare_prompts, token_budget
from .sampling import SamplingParams, process_logits

NGRAM = 3
DRAFTS = ("ngram", "int4")


@dataclass
class SpecStats:
    rounds: int = 0  # target forwards after the prompt
    proposed: int = 0
    accepted: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


# ---- drafts -------------------------------------------------------------------------------------------------------
class NgramDraft:
    """Prompt lookup: propose what followed the last occurrence of the context's last n tokens."""

    def __init__(self, n: int = NGRAM) -> None:
        self.n = n

    def propose(self, context: list[int], k: int, params, generator) -> tuple[list[int], torch.Tensor | None]:
        for n in range(min(self.n, len(context) - 1), 0, -1):
            tail = context[-n:]
            for start in range(len(context) - n - 1, -1, -1):  # latest match first, not the tail itself
                if context[start : start + n] == tail:
                    return context[start + n : start + n + k], None
        return [], None

    def accepted(self, context_len: int) -> None:
        pass


class ModelDraft:
    """A draft model with its own static KV cache; `fed` positions of it hold the current context."""

    def __init__(self, model, max_len: int) -> None:
        self.model = model
        self.cache = new_cache(model, 1, max_len, rolling=False)
        self.fed = 0
        self.pending = 0

    def _forward(self, ids: list[int], start: int) -> torch.Tensor:  # -> (V,) logits of the last position
        device = device_of(self.model)
        x = torch.tensor([ids], device=device)
        pos = torch.arange(start, start + len(ids), device=device)
        step = decode_step(self.model) if len(ids) == 1 else self.model  # compiled, if compile_decode(draft) ran
        return step(x, input_pos=pos, cache=self.cache, last_only=True)[0, -1]

    def propose(self, context: list[int], k: int, params, generator) -> tuple[list[int], torch.Tensor | None]:
        logits = self._forward(context[self.fed :], self.fed)  # catch up on what the target accepted
        self.fed = len(context)
        tokens, qs = [], []
        for i in range(k):
            q = _probs(logits[None], params)[0]  # (V,)
            t = int(q.argmax()) if params.greedy else int(torch.multinomial(q, 1, generator=generator))
            tokens.append(t)
            qs.append(q)
            if i + 1 < k:
                logits = self._forward([t], len(context) + i)
        self.pending = len(context) + k - 1  # positions with valid keys if every fed draft token is accepted
        return tokens, torch.stack(qs)  # (k, V)

    def accepted(self, context_len: int) -> None:
        """The context now has `context_len` tokens; draft keys are valid up to the accepted ones it fed."""
        self.fed = min(context_len - 1, self.pending)


def make_draft(target, draft, max_len: int):
    """ "ngram", "int4" (the target quantized), or a model; checks the vocabulary before any work."""
    if isinstance(draft, str):
        if draft == "ngram":
            return NgramDraft()
        if draft == "int4":
            from ..quant import is_quantized, quantize

            if is_quantized(target):
                raise ValueError(
                    "the int4 draft is the target quantized, and this target is quantized already (no faster "
                    "draft of it); use --speculative ngram, or load the target in float"
                )
            compiled = target.__dict__.pop("_decode_step", None)  # a compiled step is not copied, it is remade
            try:
                draft_model = quantize(copy.deepcopy(target), "int4")
            finally:
                if compiled is not None:
                    target.__dict__["_decode_step"] = compiled
            if compiled is not None:
                compile_decode(draft_model)
            return ModelDraft(draft_model, max_len)
        raise ValueError(f"unknown draft {draft!r}; choose one of {', '.join(DRAFTS)}, or pass a draft model")
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(
            f"the draft model has a vocabulary of {draft.config.vocab_size} tokens and the target "
            f"{target.config.vocab_size}; a draft must share the target's tokenizer (use a smaller model of the same "
            "family, or --speculative ngram / int4)"
        )
    return ModelDraft(draft, max_len)


# ---- the rule -----------------------------------------------------------------------------------------------------
def _probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """(n, V) logits -> (n, V) float probabilities after temperature and the filters (one-hot argmax if greedy)."""
    if params.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    return process_logits(logits.float(), params).softmax(-1)


def verify(
    p: torch.Tensor,  # (m + 1, V) target probabilities at the m draft positions and the one after
    drafts: Sequence[int],  # (m,) draft tokens
    q: torch.Tensor | None,  # (m, V) draft probabilities, None for a deterministic (one-hot) draft
    generator: torch.Generator | None,
) -> list[int]:
    """The accept / resample rule: the accepted drafts, then one token from the residual or from p[m]."""
    out = []
    for i, d in enumerate(drafts):
        q_d = 1.0 if q is None else float(q[i, d])
        u = float(torch.rand((), generator=generator))
        if u * q_d < float(p[i, d]):  # accept with probability min(1, p / q)
            out.append(d)
            continue
        residual = p[i].clone()
        if q is None:
            residual[d] = 0.0
        else:
            residual = (residual - q[i]).clamp_min_(0)
        total = float(residual.sum())
        dist = residual / total if total > 0 else p[i]
        return out + [int(torch.multinomial(dist, 1, generator=generator))]
    return out + [int(torch.multinomial(p[len(drafts)], 1, generator=generator))]


def _verify_greedy(p_argmax: list[int], drafts: Sequence[int]) -> list[int]:
    out = []
    for i, d in enumerate(drafts):
        if d != p_argmax[i]:
            return out + [p_argmax[i]]
        out.append(d)
    return out + [p_argmax[len(drafts)]]


# ---- the loop -----------------------------------------------------------------------------------------------------
@torch.inference_mode()
def speculative_generate(
    model,
    input_ids: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    *,
    draft="ngram",
    num_draft_tokens: int = 4,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    seed: int | None = None,
    stats: SpecStats | None = None,
    kv_cache: str = "auto",
) -> list[int]:
    """The new token ids for one prompt, decoded speculatively with `draft` proposing `num_draft_tokens` per round.
    Greedy output equals `generate`'s; sampled output has its distribution. `kv_cache`: the target's cache storage."""
    params = SamplingParams(temperature, top_k, top_p, min_p)
    check_max_new_tokens(max_new_tokens)
    if not isinstance(num_draft_tokens, int) or isinstance(num_draft_tokens, bool) or num_draft_tokens < 1:
        raise ValueError(f"num_draft_tokens must be an integer >= 1, got {num_draft_tokens!r}")
    prompts = prepare_prompts(input_ids)
    if len(prompts.rows) != 1:
        raise ValueError(f"speculative decoding runs one prompt at a time, got {len(prompts.rows)}")
    context = list(prompts.rows[0])
    steps = token_budget(model, len(context), max_new_tokens)
    max_len = min(model.config.max_seq_len, len(context) + steps + num_draft_tokens)
    drafter = make_draft(model, draft, max_len)
    device = device_of(model)
    generator = make_generator(seed if seed is not None else int(torch.randint(2**62, ())), device)
    stats = stats if stats is not None else SpecStats()
    cache = new_cache(model, 1, max_len, kv_cache, rolling=False)  # rejections rewind: every position kept
    eos, new = eos_set(eos_token_id), []
    feed, start = context, 0  # tokens the target has not seen yet, and the position of the first
    while len(new) < steps:
        room = min(num_draft_tokens, steps - len(new) - 1, max_len - len(context) - 1)
        drafts, q = drafter.propose(context, room, params, generator) if room > 0 else ([], None)
        drafts = drafts[: max(room, 0)]
        q = q[: len(drafts)] if q is not None else None
        ids = torch.tensor([feed + drafts], device=device)
        pos = torch.arange(start, start + ids.shape[1], device=device)
        logits = model(ids, input_pos=pos, cache=cache)[0, len(feed) - 1 :]  # (m + 1, V)
        if params.greedy:
            taken = _verify_greedy(logits.argmax(-1).tolist(), drafts)
        else:
            taken = verify(_probs(logits, params), drafts, q, generator)
        stats.rounds += 1
        stats.proposed += len(drafts)
        stats.accepted += len(taken) - 1
        start = len(context) + len(taken) - 1  # the last taken token is fed next round
        for t in taken[: steps - len(new)]:
            new.append(t)
            if t in eos:
                return new
        context += taken
        drafter.accepted(len(context))
        feed = taken[-1:]
    return new
