"""Shared against separate Q and K projections (ModelConfig.shared_qk, Reformer's shared-QK attention): with k = q the
raw scores q_i·q_j are symmetric, and each token's score with itself, |q_i|², is the largest of its row in expectation
(Cauchy-Schwarz), so attention piles onto the diagonal unless it is masked (Reformer masks it)."""

from __future__ import annotations

import math

import torch

from ..layers.attention import Attention
from ..layers.norm import RMSNorm
from . import Finding, experiment
from ._train import batch, corpus, one_thread, tiny_config, train


def _scores(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Scaled scores (B, H, T, T) from the layer's own projections (no positions, no mask)."""
    B, T, _ = x.shape
    q = attn.q_proj(x).view(B, T, attn.n_heads, attn.head_dim).transpose(1, 2)  # (B, H, T, Dh)
    proj = attn.q_proj if attn.k_proj is None else attn.k_proj
    k = proj(x).view(B, T, attn.n_kv_heads, attn.head_dim).transpose(1, 2)  # (B, K, T, Dh), K == H here
    return q @ k.transpose(-1, -2) / math.sqrt(attn.head_dim)  # (B, H, T, T)


def _stats(scores: torch.Tensor) -> dict[str, float]:
    """Asymmetry |S - S^T| / |S|, and the mean attention weight on the diagonal: bidirectional, and causal (rows
    after the first, whose only key is itself)."""
    T = scores.shape[-1]
    eye = torch.eye(T, dtype=torch.bool)
    causal = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    return dict(
        asymmetry=float((scores - scores.transpose(-1, -2)).norm() / scores.norm()),
        diagonal_mass=float(scores.softmax(-1)[..., eye].mean()),
        causal_diagonal_mass=float(causal[..., eye][..., 1:].mean()),
        uniform_causal=float(sum(1 / t for t in range(2, T + 1)) / (T - 1)),
    )


@one_thread()
def _measure(shared: bool, weight_std: float | None, trained_steps: int) -> dict[str, float]:
    """Statistics of layer 0: at init (N(0, weight_std) weights) on unit-RMS random inputs, or after a short training
    run on the normalised embeddings of real text."""
    cfg = tiny_config(shared_qk=shared, n_heads=4, d_model=64)
    g = torch.Generator().manual_seed(0)
    x = RMSNorm(cfg.d_model)(torch.randn(4, 64, cfg.d_model, generator=g))  # (B, T, D), as after the block's norm
    if trained_steps:  # the trained layer sees real text: its own normalised embeddings of held-out bytes
        model = train(cfg, trained_steps, seed=0).model
        attn, ids = model.blocks[0].attn, batch(corpus()[1], 4, 63, g)  # (B, T)
        x = model.blocks[0].attn_norm(model.embed(ids))  # (B, T, D)
    else:
        torch.manual_seed(0)
        attn = Attention(cfg)
        for p in attn.parameters():
            torch.nn.init.normal_(p, std=weight_std)
    with torch.no_grad():
        return _stats(_scores(attn, x))


@experiment(
    "shared-qk",
    "Sharing the Q and K projections makes the attention scores symmetric and concentrates each token's attention on "
    "itself (so shared-QK models mask the diagonal)",
    "Kitaev et al. 2020 (Reformer), section 2; study cards on attention variants",
)
def shared_qk(quick: bool) -> Finding:
    steps = 40 if quick else 400
    settings = {"init std 0.02": (0.02, 0), "init std 1/sqrt(D)": (1 / 8, 0), f"trained {steps} steps": (None, steps)}
    res = {
        label: {kind: _measure(kind == "shared", std, n) for kind in ("shared", "separate")}
        for label, (std, n) in settings.items()
    }
    symmetric = all(r["shared"]["asymmetry"] < 1e-6 < r["separate"]["asymmetry"] for r in res.values())
    ratios = {k: r["shared"]["diagonal_mass"] / r["separate"]["diagonal_mass"] for k, r in res.items()}
    piles = {k: v > 1.5 for k, v in ratios.items()}
    verdict = "confirmed" if symmetric and all(piles.values()) else "depends" if symmetric else "refuted"
    summary = (
        "Layer 0 of a 64-wide, 4-head model (B=4, T=64; uniform attention puts 1/64 = 0.016 on "
        "the diagonal). "
        + "; ".join(
            f"{k}: asymmetry |S-S^T|/|S| shared {r['shared']['asymmetry']:.1e} vs separate "
            f"{r['separate']['asymmetry']:.2f}, attention on the diagonal shared {r['shared']['diagonal_mass']:.3f} "
            f"vs separate {r['separate']['diagonal_mass']:.3f} ({ratios[k]:.1f}x; causal: "
            f"{r['shared']['causal_diagonal_mass']:.3f} vs {r['separate']['causal_diagonal_mass']:.3f}, uniform "
            f"{r['shared']['uniform_causal']:.3f})"
            for k, r in res.items()
        )
        + ". Symmetry is exact by construction. The pull to the diagonal grows with the size of q (|q_i|² against "
        "q_i·q_j): at the model's small init it is "
        + ("strong" if piles["init std 0.02"] else "weak")
        + ", at unit-variance projections "
        + ("strong" if piles["init std 1/sqrt(D)"] else "weak")
        + f", after {steps} training steps "
        + ("strong" if piles[f"trained {steps} steps"] else "weak")
        + " (strong: over 1.5x the separate projections' diagonal mass)."
    )

    def plot(fig):
        ax = fig.subplots(1, 1)
        labels = list(res)
        xs = list(range(len(labels)))
        for off, kind in ((-0.2, "shared"), (0.2, "separate")):
            ax.bar([x + off for x in xs], [res[k][kind]["diagonal_mass"] for k in labels], 0.4, label=kind)
        ax.axhline(1 / 64, color="gray", lw=0.8, label="uniform (1/T)")
        ax.set_xticks(xs, labels)
        ax.set_ylabel("mean attention weight on the diagonal")
        ax.legend()

    return Finding(verdict, summary, dict(settings=res, diagonal_ratio=ratios), plot)
