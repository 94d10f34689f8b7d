"""`modernlm inspect --html`: one self-contained page (every picture inlined as base64, no script, no link out) with
the prompt's tokens, what each picture shows, and the heads whose removal costs the most."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

CAPTIONS = {
    "attention_grid": "Attention of every head: row = layer, column = head; in each tile, row t is what token t "
    "attended to (the causal mask leaves the upper triangle at exactly zero).",
    "logit_lens": "The logit lens: the residual stream after each layer read through the final norm and the LM head; "
    "each cell is the token that layer would predict next, its colour that token's probability.",
    "answer_by_layer": "The probability of the model's final answer by layer, and the share of positions whose top "
    "token is already the final one.",
    "residual_norms": "The residual stream's norm by layer: each block adds its output to it.",
    "entropy": "Attention entropy per head: low = the head looks at few tokens, high = it spreads its attention.",
    "ablation": "The loss change when one head is removed (its output zeroed): the heads this prompt leans on.",
}

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
img{max-width:100%;border:1px solid #ddd}figure{margin:2em 0}figcaption{color:#555;margin:.4em 0}
.tok{display:inline-block;background:#eef;border-radius:3px;padding:1px 4px;margin:2px;font-family:monospace}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"""


def _image(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _top_heads(data: dict[str, Any], n: int = 10) -> str:
    ablation = data["ablation"]
    cells = [
        (delta, layer, head)
        for layer, row in zip(ablation["layers"], ablation["loss_change"], strict=True)
        for head, delta in enumerate(row)
    ]
    rows = "".join(f"<tr><td>{layer}</td><td>{head}</td><td>{delta:+.4f}</td></tr>"
                   for delta, layer, head in sorted(cells, reverse=True)[:n])  # fmt: skip
    return (f"<h2>Heads this prompt leans on</h2><p>loss with every head: {ablation['base_loss']:.4f} nats</p>"
            f"<table><tr><th>layer</th><th>head</th><th>Δ loss</th></tr>{rows}</table>") if rows else ""  # fmt: skip


def html_page(data: dict[str, Any], files: dict[str, Path], model: str = "") -> str:
    """The page's text: tokens, the final answer, every picture with its caption, the top heads by ablation."""
    tokens = "".join(f'<span class="tok">{html.escape(t)}</span>' for t in data["tokens"])
    lens = data["logit_lens"]
    figures = "".join(
        f'<figure><img alt="{html.escape(name)}" src="{_image(path)}">'
        f"<figcaption>{html.escape(CAPTIONS.get(name, name.replace('_', ' ')))}</figcaption></figure>"
        for name, path in files.items()
    )
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>modernlm inspect</title><style>{STYLE}</style>'
        f"</head><body><h1>Inside {html.escape(model or 'the model')}</h1>"
        f"<p>{data['layers']} layers x {data['heads']} heads; the prompt's {len(data['tokens'])} tokens:</p>"
        f"<p>{tokens}</p><p>Next token: <b>{html.escape(lens['answer'])!r}</b></p>"
        f"{figures}{_top_heads(data)}</body></html>"
    )
