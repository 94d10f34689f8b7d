"""Why attention divides the scores by sqrt(d): with q, k ~ N(0, 1) the dot product q·k has variance d, so without
the scale the softmax saturates as d grows (entropy -> 0, one key takes all the weight) and its gradient vanishes;
with it the scores keep unit variance at every d."""

from __future__ import annotations

import math

import torch

from . import Finding, experiment


def _measure(d: int, scaled: bool, g: torch.Generator, rows: int, keys: int) -> dict[str, float]:
    """Softmax statistics of `rows` queries over `keys` keys, q, k ~ N(0, 1) of width d, in float64."""
    q = torch.randn(rows, d, generator=g, dtype=torch.float64).requires_grad_()
    k = torch.randn(keys, d, generator=g, dtype=torch.float64)
    scores = q @ k.T / (math.sqrt(d) if scaled else 1.0)  # (rows, keys)
    scores.retain_grad()
    p = scores.softmax(-1)  # (rows, keys)
    upstream = torch.randn(rows, keys, generator=g, dtype=torch.float64)  # a random loss L = sum(p * upstream)
    (p * upstream).sum().backward()
    p = p.detach()
    entropy = -(p * p.clamp_min(1e-300).log()).sum(-1)  # (rows,)
    return dict(
        score_std=float(scores.detach().std()),
        entropy=float(entropy.mean()),
        max_weight=float(p.max(-1).values.mean()),
        grad_scores=float(scores.grad.norm(dim=-1).median()),  # median over queries of |dL/dscores|
        grad_q=float(q.grad.norm(dim=-1).median()),  # median of |dL/dq|
    )


@experiment(
    "attention-scale",
    "Without the 1/sqrt(d) scale, q·k has variance d, so the softmax saturates as d grows: its entropy collapses and "
    "its gradients vanish; with the scale both stay put",
    "Vaswani et al. 2017, section 3.2.1 (footnote 4); study cards on scaled dot-product attention",
)
def attention_scale(quick: bool) -> Finding:
    g = torch.Generator().manual_seed(0)
    dims = [16, 64, 256, 1024] if quick else [16, 32, 64, 128, 256, 512, 1024]
    rows, keys = (64, 128) if quick else (512, 512)
    res = {mode: [_measure(d, mode == "scaled", g, rows, keys) for d in dims] for mode in ("scaled", "unscaled")}
    s, u = res["scaled"], res["unscaled"]
    uniform = math.log(keys)
    scaled_flat = max(x["entropy"] for x in s) / min(x["entropy"] for x in s) < 1.2
    collapses = u[-1]["entropy"] < 0.1 * uniform and all(a["entropy"] < b["entropy"] for a, b in zip(u, s, strict=True))
    vanishes = u[-1]["grad_scores"] < 0.1 * s[-1]["grad_scores"]
    verdict = "confirmed" if scaled_flat and collapses and vanishes else "refuted"
    stds = ", ".join(f"d={d}: {x['score_std']:.1f}" for d, x in zip(dims, u, strict=True))
    roots = ", ".join(f"{math.sqrt(d):.1f}" for d in dims)
    summary = (
        f"q, k ~ N(0, 1), {rows} queries over {keys} keys (uniform attention has entropy ln {keys} = {uniform:.2f} "
        f"nats). Score std without the scale: {stds} (sqrt(d) = {roots}); with it: {s[0]['score_std']:.2f} to "
        f"{s[-1]['score_std']:.2f}. Softmax entropy with the scale stays {min(x['entropy'] for x in s):.2f}-"
        f"{max(x['entropy'] for x in s):.2f} nats; without it it falls from {u[0]['entropy']:.2f} (d={dims[0]}) to "
        f"{u[-1]['entropy']:.3f} (d={dims[-1]}), where the largest weight averages {u[-1]['max_weight']:.2f}. "
        f"Median over queries of the gradient of a random loss w.r.t. the scores at d={dims[-1]}: "
        f"{s[-1]['grad_scores']:.3g} scaled vs "
        f"{u[-1]['grad_scores']:.3g} unscaled ({s[-1]['grad_scores'] / max(u[-1]['grad_scores'], 1e-300):.0f}x "
        f"smaller); w.r.t. q: {s[-1]['grad_q']:.3g} vs {u[-1]['grad_q']:.3g}."
    )

    def plot(fig):
        ax1, ax2 = fig.subplots(1, 2)
        for mode, style in (("scaled", "o-"), ("unscaled", "s--")):
            ax1.plot(dims, [x["entropy"] for x in res[mode]], style, label=mode)
            ax2.plot(dims, [x["grad_scores"] for x in res[mode]], style, label=mode)
        ax1.axhline(uniform, color="gray", lw=0.8, label="uniform")
        for ax, label in ((ax1, "softmax entropy (nats)"), (ax2, "|dL/dscores| per query")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("head dim d")
            ax.set_ylabel(label)
            ax.legend()
        ax2.set_yscale("log")

    return Finding(verdict, summary, dict(dims=dims, rows=rows, keys=keys, **res), plot)
