"""Perplexity: exp of the mean negative log-likelihood of each token given the ones before it.

The text is cut into windows of `window` tokens, each starting `stride` tokens after the last (at least one token
before the first one it has to score); each window scores only the tokens no earlier window scored, so every token
but the first is scored once, with at least `window - stride` tokens of context where the text has them (Hugging
Face's sliding-window perplexity).

`text_perplexity` is the one definition every figure uses (`modernlm eval perplexity`, benchmarks/quantize.py and
the tables in docs/compress.md): the text encoded with BOS first (the first word is scored given BOS, as a model
sees a document start), windows of `WINDOW` = 512 tokens moved by `STRIDE` = 256 (the model's context if shorter),
and the count of scored tokens = the text's tokens.

`heldout_text()` is the English text shipped beside this file (heldout.txt): ~900 words of original prose (a train
journey, a bread recipe, maps, a letter, an explanation, meeting minutes, music practice, an island ferry) written for
this package, so it is in neither modernlm's training corpus (the Python standard library) nor, verbatim, any
model's. Small, so the figure is a comparison between variants of one model (fp32 against int4...), not a benchmark
score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

HELDOUT = Path(__file__).with_name("heldout.txt")
WINDOW, STRIDE = 512, 256  # the definition's window and its step (the overlap is context)


def heldout_text() -> str:
    return HELDOUT.read_text(encoding="utf-8")


@dataclass
class Perplexity:
    perplexity: float
    nll: float  # mean negative log-likelihood per scored token (nats)
    tokens: int  # tokens scored


@torch.inference_mode()
def perplexity(model, ids: list[int], window: int = 512, stride: int | None = None) -> Perplexity:
    """Perplexity of `model` on the token ids `ids` (at least 2), in windows of `window` tokens moved by `stride`
    (default: window, no overlap)."""
    stride = window if stride is None else stride
    if not isinstance(window, int) or window < 2:
        raise ValueError(f"window must be an integer >= 2, got {window!r}")
    if not isinstance(stride, int) or not 1 <= stride <= window:
        raise ValueError(f"stride must be an integer in [1, window={window}], got {stride!r}")
    if len(ids) < 2:
        raise ValueError(f"perplexity needs at least 2 tokens, got {len(ids)}")
    window = min(window, model.config.max_seq_len)
    device = next(model.parameters()).device
    total, count, scored_to = 0.0, 0, 1  # tokens before scored_to are scored (or are the first token)
    start = 0
    while scored_to < len(ids):
        end = min(start + window, len(ids))
        x = torch.tensor([ids[start:end]], device=device)  # (1, T)
        logits = model(x)[0, :-1].float()  # (T - 1, V): predictions of tokens start + 1 .. end - 1
        targets = x[0, 1:]
        first = scored_to - start - 1  # index in targets of the first token not scored yet
        nll = F.cross_entropy(logits[first:], targets[first:], reduction="sum")
        total += float(nll)
        count += end - scored_to
        scored_to = end
        start = min(start + stride, end - 1)  # the next token to score needs one before it in its window
    return Perplexity(math.exp(total / count), total / count, count)


def text_ids(tokenizer, text: str, max_tokens: int | None = None) -> list[int]:
    """The ids `text_perplexity` scores: BOS (when the tokenizer has one) and the text's first `max_tokens` tokens."""
    ids = tokenizer.encode(text)[:max_tokens]
    bos = getattr(tokenizer, "bos_token_id", None)
    return [bos, *ids] if bos is not None and ids[:1] != [bos] else ids


def text_perplexity(
    model, tokenizer, text: str | None = None, window: int = WINDOW, stride: int = STRIDE, max_tokens: int | None = None
) -> Perplexity:
    """The perplexity every figure of modernlm's uses: `text` (default: the shipped held-out English) as `text_ids`
    gives it, in windows of `window` tokens moved by `stride`."""
    return perplexity(model, text_ids(tokenizer, heldout_text() if text is None else text, max_tokens), window, stride)
