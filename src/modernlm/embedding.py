"""What an encoder is used for, from text: sentence embeddings (mean pooling, normalised, as sentence-transformers'
all-MiniLM-L6-v2 computes them) and fill-mask (the most likely tokens at each [MASK]).

A BERT input is `[CLS] text [SEP]`; texts longer than `max_len` tokens are cut (the text, never the special tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .encoder import mean_pool


class NotAnEncoderError(ValueError):
    """A model of another family given to an encoder's task; the message names the model and what to use."""


def require_encoder(model, task: str, head: str | None = None) -> None:
    cfg = model.config
    if cfg.family != "encoder":
        raise NotAnEncoderError(
            f"{task} needs an encoder (a BERT-like model), but this model is a {cfg.family} "
            f"({cfg.extra.get('architecture', 'no architecture recorded')}); give a BERT directory or "
            "--model all-minilm-l6-v2"
            + ("; a decoder writes text with `modernlm generate`" if cfg.family in ("decoder", "seq2seq") else "")
        )
    if head is not None and cfg.head != head:
        raise NotAnEncoderError(
            f"{task} needs an encoder with a {head!r} head, this one has {cfg.head!r}"
            + ("; load a BertForMaskedLM directory" if head == "mlm" else "")
        )


def batch_encode(tokenizer, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask), both (B, T) long, right-padded with [PAD] (or 0): `[CLS] text [SEP]` per text, or the
    bare text for a tokenizer without them (`modernlm train --objective mlm` trains on bare windows)."""
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if isinstance(texts, str) or not texts:
        raise ValueError("texts must be a non-empty list of strings")
    if cls is None or sep is None:
        rows = [tokenizer.encode(text)[:max_len] for text in texts]
    else:
        rows = [[cls, *tokenizer.encode(text)[: max_len - 2], sep] for text in texts]
    if any(not row for row in rows):
        raise ValueError("a text is empty: give every text at least one token")
    T = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id or 0
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = torch.tensor(row)
        mask[b, : len(row)] = 1
    return ids, mask


@torch.no_grad()
def embed(model, tokenizer, texts: Sequence[str], *, normalize: bool = True, max_len: int = 256, batch_size=32):
    """(N, D) float32 sentence embeddings: the mean of the final hidden states over each text's real tokens
    ([CLS] and [SEP] included, as sentence-transformers does), L2-normalised unless `normalize=False`."""
    require_encoder(model, "embed")
    if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 3:
        raise ValueError(f"max_len must be an integer >= 3 ([CLS], a token of text, [SEP]), got {max_len!r}")
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        ids, mask = batch_encode(
            tokenizer, list(texts[start : start + batch_size]), min(max_len, model.config.max_seq_len)
        )
        hidden = model.hidden_states(ids.to(device), mask.to(device))  # (B, T, D)
        pooled = mean_pool(hidden.float(), mask.to(device))  # (B, D)
        out.append(F.normalize(pooled, dim=-1) if normalize else pooled)
    return torch.cat(out).cpu()


@torch.no_grad()
def fill_mask(model, tokenizer, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """For each [MASK] in `text`, the `top_k` most likely tokens and their probabilities."""
    require_encoder(model, "fill-mask", head="mlm")
    mask_id = tokenizer.token_to_id("[MASK]")
    if mask_id is None:
        raise ValueError("the tokenizer has no [MASK] token: fill-mask needs a BERT tokenizer")
    ids, attention = batch_encode(tokenizer, [text], model.config.max_seq_len)
    where = (ids[0] == mask_id).nonzero().flatten()
    if len(where) == 0:
        raise ValueError(f"no [MASK] in {text!r}: write [MASK] where a word should be predicted")
    device = next(model.parameters()).device
    probs = model(ids.to(device), attention.to(device))[0, where].softmax(-1)  # (M, V)
    top = probs.topk(top_k, dim=-1)
    return [
        [(tokenizer.decode([i]).strip(), float(p)) for p, i in zip(ps.tolist(), ix.tolist(), strict=True)]
        for ps, ix in zip(top.values, top.indices, strict=True)
    ]
