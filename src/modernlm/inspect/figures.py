"""The pictures of `modernlm inspect`, drawn from `report.analyse`'s data with matplotlib (Agg, no display), each
written through files.atomic_path: the attention grid (layer x head), one head's map, the logit lens, the final
answer's probability by layer, residual-stream norms, attention entropy per head, and the head-ablation table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from ..files import atomic_path

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

ANNOTATE_UP_TO = 48  # tokens: the logit lens writes each cell's token up to this many positions


def label(token: str) -> str:
    """A token as an axis label: newlines, tabs and other control characters escaped, a leading space as a dot, an
    empty one as a sign."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in token)
    return ("·" + text[1:] if text.startswith(" ") else text) or "∅"


def _save(fig, path: str | os.PathLike) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def attention_grid(data: dict[str, Any], path, layers: list[int] | None = None) -> Path:
    """Every head's T x T map, one row per layer (all, or `layers`), one column per head, tiled into one image."""
    att = np.asarray(data["attentions"], dtype=np.float32)  # (L, H, T, T)
    layers = list(range(att.shape[0])) if layers is None else layers
    L, H, T = len(layers), att.shape[1], att.shape[2]
    tile = np.full((L * (T + 1), H * (T + 1)), np.nan, dtype=np.float32)  # a NaN line between tiles
    for r, layer in enumerate(layers):
        for h in range(H):
            tile[r * (T + 1) : r * (T + 1) + T, h * (T + 1) : h * (T + 1) + T] = att[layer, h]
    fig, ax = plt.subplots(figsize=(min(2 + 1.1 * H, 16), min(1.5 + 1.1 * L, 48)), dpi=90)
    ax.imshow(tile, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([h * (T + 1) + T / 2 for h in range(H)], [str(h) for h in range(H)])
    ax.set_yticks([r * (T + 1) + T / 2 for r in range(L)], [str(layer) for layer in layers])
    title = f"attention of every head (each tile: query rows x key columns, {T} tokens)"
    ax.set(xlabel="head", ylabel="layer", title=title)
    return _save(fig, path)


def attention_head(data: dict[str, Any], layer: int, head: int, path) -> Path:
    """One head's map with the tokens on both axes: row t is what token t attended to."""
    _check_head(data, layer, head)
    att = np.asarray(data["attentions"][layer][head], dtype=np.float32)  # (T, T)
    tokens = [label(t) for t in data["tokens"]]
    size = min(3 + 0.32 * len(tokens), 20)
    fig, ax = plt.subplots(figsize=(size + 1, size), dpi=100)
    im = ax.imshow(att, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=8)
    ax.set_yticks(range(len(tokens)), tokens, fontsize=8)
    ax.set(xlabel="key (attended to)", ylabel="query", title=f"layer {layer}, head {head}")
    fig.colorbar(im, ax=ax, fraction=0.046, label="probability")
    return _save(fig, path)


def _check_head(data: dict[str, Any], layer: int, head: int) -> None:
    if not 0 <= layer < data["layers"] or not 0 <= head < data["heads"]:
        raise ValueError(
            f"--layer {layer} --head {head} is no head of this model: layers 0..{data['layers'] - 1}, "
            f"heads 0..{data['heads'] - 1}"
        )


def logit_lens(data: dict[str, Any], path) -> Path:
    """Layer (rows, the embeddings at the bottom) x position: the top token each layer would predict, coloured by
    its probability."""
    lens = data["logit_lens"]
    probs = np.asarray(lens["top_probs"], dtype=np.float32)  # (L + 1, T)
    n_rows, T = probs.shape
    fig, ax = plt.subplots(figsize=(min(3 + 0.9 * T, 30), min(2 + 0.3 * n_rows, 30)), dpi=90)
    im = ax.imshow(probs, cmap="Blues", vmin=0, vmax=1, aspect="auto", origin="lower")
    if T <= ANNOTATE_UP_TO:
        for row in range(n_rows):
            for t in range(T):
                color = "white" if probs[row, t] > 0.6 else "black"
                text = label(lens["top_tokens"][row][t])[:8]
                ax.text(t, row, text, ha="center", va="center", fontsize=6, color=color)
    ax.set_xticks(range(T), [label(t) for t in data["tokens"]], rotation=90, fontsize=8)
    ax.set_yticks(range(n_rows), ["emb"] + [str(i) for i in range(n_rows - 1)], fontsize=6)
    ax.set(xlabel="position (its input token)", ylabel="layer", title="logit lens: the top next token at each layer")
    fig.colorbar(im, ax=ax, fraction=0.03, label="its probability")
    return _save(fig, path)


def answer_by_layer(data: dict[str, Any], path) -> Path:
    """The probability each layer gives the model's final answer at the last position, and the share of positions
    whose top token is already the final one."""
    lens = data["logit_lens"]
    x = np.arange(len(lens["answer_prob_by_layer"]))
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(x, lens["answer_prob_by_layer"], "o-", label=f"p({label(lens['answer'])}) at the last position")
    ax.plot(x, lens["agrees_with_final"], "s--", alpha=0.7, label="positions whose top token is the final one")
    ax.set(xlabel="layer (0: the embeddings)", ylabel="probability / share", ylim=(-0.02, 1.02),
           title="logit lens: the final answer by layer")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def residual_norms(data: dict[str, Any], path) -> Path:
    """The residual stream's norm by layer: the mean over positions, and each position faintly."""
    norms = np.asarray(data["residual_norms"], dtype=np.float32)  # (L + 1, T)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(norms, color="grey", alpha=0.25, linewidth=0.8)
    ax.plot(norms.mean(-1), "o-", color="C0", label="mean over positions")
    ax.set(xlabel="layer (0: the embeddings)", ylabel="L2 norm", yscale="log", title="residual-stream norm by layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def heat_table(values, row_labels: list[str], title: str, colorbar: str, path, cmap: str = "magma") -> Path:
    """A layer x head table as a heat map with each value written in its cell."""
    table = np.asarray(values, dtype=np.float32)  # (rows, H)
    fig, ax = plt.subplots(figsize=(min(2.5 + 0.7 * table.shape[1], 14), min(1.5 + 0.3 * table.shape[0], 24)), dpi=100)
    limit = float(np.abs(table).max()) or 1.0
    signed = table.min() < 0
    im = ax.imshow(table, cmap="RdBu_r" if signed else cmap, vmin=-limit if signed else 0, vmax=limit, aspect="auto")
    for (r, h), v in np.ndenumerate(table):
        ax.text(h, r, f"{v:.2f}", ha="center", va="center", fontsize=6, color="grey")
    ax.set_xticks(range(table.shape[1]))
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=7)
    ax.set(xlabel="head", ylabel="layer", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046, label=colorbar)
    return _save(fig, path)


def write_all(data: dict[str, Any], out: Path, head: tuple[int | None, int | None] = (None, None)) -> dict[str, Path]:
    """Every picture into `out`; `head` = (layer, head) adds that head's map, (layer, None) that layer's heads."""
    layer, one = head
    files = {
        "attention_grid": attention_grid(data, out / "attention_grid.png"),
        "logit_lens": logit_lens(data, out / "logit_lens.png"),
        "answer_by_layer": answer_by_layer(data, out / "answer_by_layer.png"),
        "residual_norms": residual_norms(data, out / "residual_norms.png"),
        "entropy": heat_table(data["entropy"], [str(i) for i in range(data["layers"])],
                              "attention entropy per head (nats; 0 = one key)", "entropy", out / "entropy.png"),
    }  # fmt: skip
    ablation = data["ablation"]
    if ablation["layers"]:
        files["ablation"] = heat_table(ablation["loss_change"], [str(i) for i in ablation["layers"]],
                                       f"loss change when one head is removed (base {ablation['base_loss']:.3f})",
                                       "Δ loss (nats)", out / "ablation.png")  # fmt: skip
    if layer is not None and one is not None:
        files[f"attention_L{layer}_H{one}"] = attention_head(data, layer, one, out / f"attention_L{layer}_H{one}.png")
    elif layer is not None:
        _check_head(data, layer, 0)
        files[f"attention_L{layer}"] = attention_grid(data, out / f"attention_L{layer}.png", layers=[layer])
    return files
