"""Shared against separate Q and K projections (ModelConfig.shared_qk, Reformer's shared-QK attention): with k = q the
raw scores q_i·q_j are symmetric, and each token's score with itself, |q_i|², is the largest of its row in expectation
(Cauchy-Schwarz), so attention piles onto the diagonal unless it is masked (Reformer masks it). The two init-time
settings are deterministic math on fixed random draws (one seed); the trained setting trains on each seed of the lab
(_seeds.py) and reports mean ± std over them."""

from __future__ import annotations

import math

import torch

from ..layers.attention import Attention
from ..layers.norm import RMSNorm
from . import Finding, experiment
from ._seeds import difference, mean_std, pm, rule, seeds
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
def _measure(shared: bool, weight_std: float | None, trained_steps: int, seed: int = 0) -> dict[str, float]:
    """Statistics of layer 0: at init (N(0, weight_std) weights) on unit-RMS random inputs, or after a short training
    run (with `seed`: the init, the batches and the held-out windows) on the normalised embeddings of real text."""
    cfg = tiny_config(shared_qk=shared, n_heads=4, d_model=64)
    g = torch.Generator().manual_seed(seed)
    x = RMSNorm(cfg.d_model)(torch.randn(4, 64, cfg.d_model, generator=g))  # (B, T, D), as after the block's norm
    if trained_steps:  # the trained layer sees real text: its own normalised embeddings of held-out bytes
        model = train(cfg, trained_steps, seed=seed).model
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
    steps, seed_list = 40 if quick else 400, seeds(quick)
    trained = f"trained {steps} steps"
    settings = {"init std 0.02": 0.02, "init std 1/sqrt(D)": 1 / 8}  # at init: one seed, deterministic math
    res = {label: {kind: _measure(kind == "shared", std, 0) for kind in KINDS} for label, std in settings.items()}
    per_seed = {kind: [_measure(kind == "shared", None, steps, s) for s in seed_list] for kind in KINDS}
    res[trained] = {kind: _mean_stats(runs) for kind, runs in per_seed.items()}
    symmetric = all(r["shared"]["asymmetry"] < 1e-6 < r["separate"]["asymmetry"] for r in res.values())
    ratios = {k: r["shared"]["diagonal_mass"] / r["separate"]["diagonal_mass"] for k, r in res.items() if k != trained}
    masses = {kind: [r["diagonal_mass"] for r in runs] for kind, runs in per_seed.items()}
    trained_ratios = [a / b for a, b in zip(masses["shared"], masses["separate"], strict=True)]
    ratios[trained] = mean_std(trained_ratios)[0]
    gap = difference(masses["shared"], masses["separate"])  # > 0: sharing piles more onto the diagonal
    piles = {k: v > 1.5 for k, v in ratios.items()}
    piles[trained] = piles[trained] and gap.sign > 0  # on the mean, and the paired gap counts under the rule
    verdict = "confirmed" if symmetric and all(piles.values()) else "depends" if symmetric else "refuted"
    summary = _summary(res, ratios, piles, trained, trained_ratios, masses, gap) + " " + rule(len(seed_list))

    def plot(fig):
        ax = fig.subplots(1, 1)
        labels = list(res)
        xs = list(range(len(labels)))
        for off, kind in ((-0.2, "shared"), (0.2, "separate")):
            heights = [res[k][kind]["diagonal_mass"] for k in labels]
            errs = [0.0] * (len(labels) - 1) + [mean_std(masses[kind])[1]]
            ax.bar([x + off for x in xs], heights, 0.4, yerr=errs, capsize=3, label=kind)
        ax.axhline(1 / 64, color="gray", lw=0.8, label="uniform (1/T)")
        ax.set_xticks(xs, labels)
        ax.set_ylabel(f"mean attention weight on the diagonal (trained: mean ± std, {len(seed_list)} seeds)")
        ax.legend()

    numbers = dict(settings=res, diagonal_ratio=ratios, seeds=seed_list, rule=rule(len(seed_list)))
    numbers.update(trained_per_seed=per_seed, trained_ratio_per_seed=trained_ratios, trained_gap=gap.to_dict())
    return Finding(verdict, summary, numbers, plot)


KINDS = ("shared", "separate")


def _mean_stats(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each statistic's mean over the seeds' runs, with its std as `<name>_std`."""
    out = {}
    for k in runs[0]:
        out[k], out[f"{k}_std"] = mean_std([r[k] for r in runs])
    return out


def _summary(res, ratios, piles, trained, trained_ratios, masses, gap) -> str:
    def setting(k: str, r: dict) -> str:
        mass = {kind: f"{r[kind]['diagonal_mass']:.3f}" for kind in KINDS}
        ratio = f"{ratios[k]:.1f}x"
        if k == trained:  # mean ± std over the seeds
            mass = {kind: pm(masses[kind]) for kind in KINDS}
            ratio = f"{pm(trained_ratios, '.2f')}x; shared minus separate, paired: {gap.text('attention weight')}"
        return (
            f"{k}: asymmetry |S-S^T|/|S| shared {r['shared']['asymmetry']:.1e} vs separate "
            f"{r['separate']['asymmetry']:.2f}, attention on the diagonal shared {mass['shared']} vs separate "
            f"{mass['separate']} ({ratio}; causal: {r['shared']['causal_diagonal_mass']:.3f} vs "
            f"{r['separate']['causal_diagonal_mass']:.3f}, uniform {r['shared']['uniform_causal']:.3f})"
        )

    strength = lambda k: "strong" if piles[k] else "weak"  # noqa: E731
    return (
        "Layer 0 of a 64-wide, 4-head model (B=4, T=64; uniform attention puts 1/64 = 0.016 on the diagonal); at init "
        "one seed (deterministic math on fixed draws), trained: mean over seeds. "
        + "; ".join(setting(k, r) for k, r in res.items())
        + ". Symmetry is exact by construction. The pull to the diagonal grows with the size of q (|q_i|² against "
        f"q_i·q_j): at the model's small init it is {strength('init std 0.02')}, at unit-variance projections "
        f"{strength('init std 1/sqrt(D)')}, after training {strength(trained)} (strong: over 1.5x the separate "
        "projections' diagonal mass; for the trained models the mean ratio over seeds, with the paired difference of "
        "the diagonal mass counting under the rule)."
    )
