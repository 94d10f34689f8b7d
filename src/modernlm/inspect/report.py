"""One prompt through a decoder, everything `modernlm inspect` shows, as plain data (the JSON it writes): the
attention probabilities of every layer and head, the logit lens (each layer's top token at each position, and the
probability of the final answer by layer), residual-stream norms, attention entropy per head, and the loss change
when each head is removed.

Shapes in the data: L layers, H heads, T prompt tokens; lists of lists, rounded to 4 decimals.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .measures import head_ablation, head_entropies, logit_lens, residual_stream

ABLATE_ALL_UP_TO = 320  # heads: models up to this many are ablated head by head in full; larger ones: ABLATE_LAYERS
ABLATE_LAYERS = 8


def ablation_layers(n_layers: int, n_heads: int, ablate: int | None) -> list[int]:
    """Which layers' heads to ablate: `ablate` of them evenly spaced from the first to the last (0: none; None: all
    on a model of at most ABLATE_ALL_UP_TO heads, else ABLATE_LAYERS)."""
    if ablate is None:
        ablate = n_layers if n_layers * n_heads <= ABLATE_ALL_UP_TO else ABLATE_LAYERS
    if ablate < 0:
        raise ValueError(f"--ablate takes a number of layers >= 0, got {ablate}")
    ablate = min(ablate, n_layers)
    if ablate == 0:
        return []
    if ablate == 1:
        return [n_layers - 1]
    return sorted({round(i * (n_layers - 1) / (ablate - 1)) for i in range(ablate)})


def _rounded(t: torch.Tensor) -> list:
    return torch.round(t.float(), decimals=4).tolist()


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """Each token as text, on its own (what a learner reads under a heat map's axis)."""
    return [tokenizer.decode([i]) for i in ids]


def analyse(model: nn.Module, tokenizer, prompt: str, ablate: int | None = None) -> dict[str, Any]:
    """The whole report of one prompt (see the module's doc)."""
    if getattr(model.config, "family", "decoder") != "decoder" or not hasattr(model, "unembed"):
        raise ValueError(
            f"inspect reads a decoder's logits layer by layer; this model is a {model.config.family!r} member: "
            "use its forward's output_attentions=True / output_hidden_states=True, or modernlm.inspect.run_with_cache"
        )
    ids = tokenizer.encode(prompt)
    if len(ids) < 2:
        raise ValueError(f"the prompt {prompt!r} is {len(ids)} token(s); give at least 2 (the loss reads next tokens)")
    if len(ids) > model.config.max_seq_len:
        raise ValueError(f"the prompt is {len(ids)} tokens, more than the model's {model.config.max_seq_len}")
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)  # (1, T)
    with torch.no_grad():
        out = model(x, output_attentions=True)
    attentions = torch.stack([a[0] for a in out.attentions]).cpu()  # (L, H, T, T)
    layers = ablation_layers(*attentions.shape[:2], ablate)
    base, deltas = head_ablation(model, x, layers)
    return {
        "prompt": prompt,
        "ids": ids,
        "tokens": token_texts(tokenizer, ids),
        "layers": attentions.shape[0],
        "heads": attentions.shape[1],
        "attentions": _rounded(attentions),
        "logit_lens": lens_summary(model, tokenizer, x),
        "entropy": _rounded(head_entropies(out.attentions)),
        "ablation": {"layers": layers, "base_loss": round(base, 6), "loss_change": _rounded(deltas)},
        **residual_summary(model, x),
    }


def lens_summary(model: nn.Module, tokenizer, x: torch.Tensor) -> dict[str, Any]:
    """Each layer's top token and its probability at each position, and the probability of the model's final
    answer (its top token at the last position) by layer."""
    lens, logits = logit_lens(model, x)  # (L + 1, 1, T, V), (1, T, V)
    probs = lens[:, 0].softmax(-1)  # (L + 1, T, V)
    top_p, top = probs.max(-1)  # (L + 1, T)
    answer = int(logits[0, -1].argmax())
    return {
        "top_tokens": [token_texts(tokenizer, row) for row in top.tolist()],
        "top_probs": _rounded(top_p),
        "answer": tokenizer.decode([answer]),
        "answer_id": answer,
        "answer_prob_by_layer": _rounded(probs[:, -1, answer]),
        "agrees_with_final": _rounded((top == top[-1]).float().mean(-1)),  # (L + 1,) the share of positions
    }


def residual_summary(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """The residual stream's L2 norm before the first block and after each one, per position and on average."""
    norms = residual_stream(model, x)[:, 0].float().norm(dim=-1)  # (L + 1, T)
    return {"residual_norms": _rounded(norms), "residual_norm_mean": _rounded(norms.mean(-1))}
