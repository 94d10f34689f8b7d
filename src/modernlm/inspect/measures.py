"""What one reads off the activations: the logit lens, residual-stream norms, attention entropy, previous-token and
induction scores, the distance between heads' patterns, and the loss change when a head is removed.

Shapes: L layers, B batch, T tokens (queries), S keys, H heads, D width, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .hooks import run_with_cache
from .interventions import ablate_heads


def _decoder(model: nn.Module) -> nn.Module:
    if not hasattr(model, "unembed"):
        raise ValueError(
            f"the logit lens reads a decoder's residual stream through its final norm and LM head; "
            f"{type(model).__name__} (family {model.config.family!r}) has no LM head over its blocks"
        )
    return model


def logit_lens(model: nn.Module, input_ids: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits each layer's residual stream would give through the final norm and the LM head (nostalgebraist's
    logit lens), (L + 1, B, T, V) float32: the embeddings first, the last row the model's logits; and the logits
    of the same run (B, T, V)."""
    n_layers = len(_decoder(model).blocks)
    names = ["blocks.0.resid_pre"] + [f"blocks.{i}.resid_post" for i in range(n_layers)]
    with torch.no_grad():
        logits, cache = run_with_cache(model, input_ids, names=names, **kwargs)
        stream = cache.residual_stream()  # (L + 1, B, T, D)
        return torch.stack([model.unembed(x) for x in stream]), logits


def residual_stream(model: nn.Module, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:  # (L + 1, B, T, D)
    """The stream before the first block and after each block (unnormed, unlike hidden_states[-1])."""
    names = ["blocks.0.resid_pre"] + [f"blocks.{i}.resid_post" for i in range(len(model.blocks))]
    with torch.no_grad():
        return run_with_cache(model, input_ids, names=names, **kwargs)[1].residual_stream()


def entropy(pattern: torch.Tensor) -> torch.Tensor:  # (..., S) -> (...) nats
    """Each row's entropy, 0 log 0 = 0: 0 for a row on one key, log(n) for a row spread evenly over n keys."""
    return -(pattern * pattern.clamp_min(1e-30).log()).sum(-1)


def head_entropies(attentions: tuple[torch.Tensor, ...]) -> torch.Tensor:  # L x (B, H, T, S) -> (L, H)
    """Each head's attention entropy (nats), averaged over the batch and the query positions."""
    return torch.stack([entropy(a.float()).mean((0, 2)) for a in attentions])


def prev_token_scores(attentions: tuple[torch.Tensor, ...]) -> torch.Tensor:  # L x (B, H, T, T) -> (L, H)
    """Each head's mean attention from a token to the one just before it (every query but the first)."""
    return torch.stack([a.diagonal(offset=-1, dim1=-2, dim2=-1).float().mean((0, 2)) for a in attentions])


def repeated_tokens(vocab_size: int, n: int, batch: int, seed: int, prefix: int | None = None, low: int = 0):
    """(B, n + n) random tokens in [low, vocab_size) repeated once, after one `prefix` token (a BOS) if given:
    the input an induction head is found on (Olsson et al. 2022)."""
    g = torch.Generator().manual_seed(seed)
    half = torch.randint(low, vocab_size, (batch, n), generator=g)  # (B, n)
    ids = torch.cat([half, half], dim=1)  # (B, 2n)
    return ids if prefix is None else torch.cat([torch.full((batch, 1), prefix), ids], dim=1)


def induction_scores(attentions: tuple[torch.Tensor, ...], n: int, offset: int = 0) -> torch.Tensor:  # (L, H)
    """On `repeated_tokens` (a half of n after `offset` tokens): each head's mean attention from a token of the
    repeat to the token that followed its first occurrence, n - 1 positions back; uniform attention scores ~1/T."""
    queries = torch.arange(offset + n, offset + 2 * n)  # (n,) the repeat's positions
    keys = queries - n + 1
    return torch.stack([a[:, :, queries, keys].float().mean((0, 2)) for a in attentions])


def pattern_distances(pattern: torch.Tensor) -> torch.Tensor:  # (B, H, T, S) -> (H, H)
    """Total-variation distance between each pair of heads' patterns, half the L1 distance of their rows, averaged
    over the batch and the queries: 0 for heads that attend alike, 1 for heads that never look at the same keys."""
    p = pattern.float()
    return 0.5 * (p[:, :, None] - p[:, None]).abs().sum(-1).mean((0, 3))  # (B, H, H, T) -> (H, H)


def next_token_loss(model: nn.Module, input_ids: torch.Tensor) -> float:
    """Mean cross-entropy of each next token of the input (B, T), T >= 2."""
    with torch.no_grad():
        logits = model(input_ids)  # (B, T, V)
    return float(F.cross_entropy(logits[:, :-1].flatten(0, 1), input_ids[:, 1:].flatten()))


def head_ablation(model: nn.Module, input_ids: torch.Tensor, layers: list[int] | None = None):
    """The loss with nothing removed, and the loss change when each head (zero-ablated alone) of `layers` (default
    every layer) is removed: (base, (len(layers), H) tensor)."""
    if input_ids.shape[1] < 2:
        raise ValueError("head ablation measures the next-token loss: give a prompt of at least 2 tokens")
    layers = list(range(len(model.blocks))) if layers is None else layers
    base = next_token_loss(model, input_ids)
    deltas = torch.zeros(len(layers), model.config.n_heads)
    for row, layer in enumerate(layers):
        for head in range(model.config.n_heads):
            with ablate_heads(model, [(layer, head)]):
                deltas[row, head] = next_token_loss(model, input_ids) - base
    return base, deltas
