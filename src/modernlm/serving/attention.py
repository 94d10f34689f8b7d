"""`"return_attentions"` on /v1/chat/completions (an extension, not streamed): for each generated token, the
attention row of the step that chose it, i.e. what the model looked at to produce it, for the chosen layers and heads.

Request: `"return_attentions": true` (every layer and head), or `{"layer": L or [L, ...], "head": H or [H, ...],
"encoding": "float" | "uint8"}` (a missing layer or head: all of them). Each choice then carries
    "attentions": {"layers": [...], "heads": [...], "prompt_tokens": P, "tokens": [the text of every token, prompt
                   and reply], "encoding": ..., "rows": [one per generated token]}
where rows[j] covers the keys 0 .. P + j - 1 (the prompt and the reply before token j) for each layer and head:
"float": nested lists [layer][head][key] of probabilities rounded to 3 decimals; "uint8": base64 of the bytes of
round(255 p) in that order, 1.33 bytes a value (the chat page's form).

The rows come from one forward pass over the prompt and the reply with the explicit softmax, run after the reply is
done, beside the engine (recording is per thread, so the engine's own steps stay on SDPA); causal attention over the
same tokens is what the steps computed (tests/test_outputs.py checks a cached step against the full recompute).
"""

from __future__ import annotations

import base64
import dataclasses

import torch

from ..layers.attention import recording
from .params import bad

ENCODINGS = ("float", "uint8")
FIELD = "return_attentions"


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    layers: list[int]
    heads: list[int]
    encoding: str = "float"


def _indices(value, name: str, count: int) -> list[int]:
    """An index or a list of them in [0, count); None: all of them."""
    if value is None:
        return list(range(count))
    values = value if isinstance(value, list) else [value]
    if not values or any(not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < count for v in values):
        raise bad(FIELD, f"'{FIELD}.{name}' must be an integer or a list of integers in 0..{count - 1}, got {value!r}")
    return sorted(set(values))


def parse_spec(value, config, stream: bool) -> AttentionSpec | None:
    """The checked request field (see the module's doc); None when not asked."""
    if value is None or value is False:
        return None
    if stream:
        raise bad(FIELD, f"'{FIELD}' needs a whole response: set 'stream' to false")
    if getattr(config, "family", "decoder") != "decoder":
        raise bad(FIELD, f"'{FIELD}' reads a decoder's attention; this model is a {config.family!r} member")
    value = {} if value is True else value
    if not isinstance(value, dict):
        raise bad(FIELD, f"'{FIELD}' must be true or an object {{layer, head, encoding}}, got {type(value).__name__}")
    unknown = sorted(set(value) - {"layer", "head", "encoding"})
    if unknown:
        raise bad(FIELD, f"'{FIELD}' has no field {unknown[0]!r}; its fields are layer, head and encoding")
    encoding = value.get("encoding", "float")
    if encoding not in ENCODINGS:
        raise bad(FIELD, f"'{FIELD}.encoding' must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    layers = _indices(value.get("layer"), "layer", config.n_layers)
    return AttentionSpec(layers, _indices(value.get("head"), "head", config.n_heads), encoding)


def _encode(row: torch.Tensor, encoding: str):  # (layers, heads, keys)
    if encoding == "uint8":
        return base64.b64encode((row.float() * 255).round().to(torch.uint8).cpu().numpy().tobytes()).decode("ascii")
    return torch.round(row.float(), decimals=3).tolist()


def attention_rows(model, token_text, prompt: list[int], generated: list[int], spec: AttentionSpec) -> dict:
    """The "attentions" of one choice (see the module's doc). `token_text(id) -> str`."""
    P, ids = len(prompt), prompt + generated[:-1]  # the last token chosen was never fed back
    device = next(model.parameters()).device
    with torch.inference_mode(), recording([model.blocks[i].attn for i in spec.layers]) as logs:
        model(torch.tensor([ids], device=device))
    heads = torch.tensor(spec.heads, device=device)
    att = torch.stack([log[-1][0].index_select(0, heads) for log in logs])  # (layers, heads, T, T)
    rows = [_encode(att[:, :, P - 1 + j, : P + j], spec.encoding) for j in range(len(generated))]
    return {"layers": spec.layers, "heads": spec.heads, "prompt_tokens": P,
            "tokens": [token_text(t) for t in prompt + generated], "encoding": spec.encoding, "rows": rows}  # fmt: skip
