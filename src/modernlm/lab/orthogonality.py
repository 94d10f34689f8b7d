"""Random vectors in high dimension are nearly orthogonal: the cosine of two independent Gaussian vectors in d
dimensions has mean 0 and standard deviation 1/sqrt(d) (its square is Beta(1/2, (d-1)/2)), so at d = 768 almost every
pair is within a few degrees of 90. This is why adding a position vector to a token vector loses little: the sum
still points at its token."""

from __future__ import annotations

import math

import numpy as np
import torch

from . import Finding, experiment

THRESHOLD = 0.1  # |cos| above this: "not nearly orthogonal" (about 84 degrees)


def cosine_tail(d: int, t: float, points: int = 200_001) -> float:
    """P(|cos| > t) (d >= 4) for two independent Gaussian vectors in d dimensions, from the exact density of the cosine,
    f(u) = Γ(d/2) / (√π Γ((d-1)/2)) (1 - u²)^((d-3)/2) on [-1, 1], integrated numerically in float64."""
    u = np.linspace(t, 1.0, points)
    log_c = math.lgamma(d / 2) - 0.5 * math.log(math.pi) - math.lgamma((d - 1) / 2)
    with np.errstate(divide="ignore"):  # u = 1: (1 - u²) = 0, a density of 0 for d > 3
        density = np.exp(log_c + (d - 3) / 2 * np.log1p(-u * u))
    return float(2 * np.sum((density[1:] + density[:-1]) / 2 * np.diff(u)))


def _cosines(d: int, n: int, g: torch.Generator) -> torch.Tensor:
    """The n(n-1)/2 pairwise cosines of n random Gaussian vectors of width d, in float64."""
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    cos = x @ x.T  # (n, n)
    i, j = torch.triu_indices(n, n, offset=1)
    return cos[i, j]


def _recovery(d: int, vocab: int, positions: int, g: torch.Generator) -> float:
    """Share of (token, position) pairs whose sum token + position is nearest (by cosine) to its own token among
    `vocab` random token vectors; both tables random with the same scale, as at initialisation."""
    tokens = torch.randn(vocab, d, generator=g, dtype=torch.float64)  # (V, d)
    pos = torch.randn(positions, d, generator=g, dtype=torch.float64)  # (P, d)
    ids = torch.randint(0, vocab, (positions,), generator=g)
    x = tokens[ids] + pos  # (P, d): one token at each position
    scores = (x / x.norm(dim=1, keepdim=True)) @ (tokens / tokens.norm(dim=1, keepdim=True)).T  # (P, V)
    return float((scores.argmax(1) == ids).double().mean())


@experiment(
    "random-orthogonality",
    "Random vectors in 768 dimensions are nearly orthogonal (cosine about 0, spread 1/sqrt(d)), so a token "
    "embedding plus a position embedding still points at its token",
    "study cards on embeddings (adding vs concatenating positions); the concentration of measure on the sphere",
)
def random_orthogonality(quick: bool) -> Finding:
    g = torch.Generator().manual_seed(0)
    dims = [16, 64, 768] if quick else [4, 16, 64, 256, 768, 3072]
    n, vocab, positions = (300, 300, 128) if quick else (2000, 5000, 1024)
    stats = {}
    for d in dims:
        cos = _cosines(d, n, g)
        stats[d] = dict(
            mean=float(cos.mean()),
            std=float(cos.std()),
            closed_form_std=1 / math.sqrt(d),
            max_abs=float(cos.abs().max()),
            tail=float((cos.abs() > THRESHOLD).double().mean()),
            closed_form_tail=cosine_tail(d, THRESHOLD),
            recovery=_recovery(d, vocab, positions, g),
        )
    s = stats[768]
    follows = all(abs(v["std"] / v["closed_form_std"] - 1) < 0.1 for v in stats.values())
    verdict = "confirmed" if follows and s["tail"] < 0.01 and s["recovery"] > 0.99 else "refuted"
    summary = (
        f"Pairwise cosines of {n} random Gaussian vectors ({n * (n - 1) // 2:,} pairs), float64: "
        + "; ".join(
            f"d={d}: std {v['std']:.4f} (1/sqrt(d) = {v['closed_form_std']:.4f}), |cos| > {THRESHOLD} for "
            f"{100 * v['tail']:.2f}% (exact density: {100 * v['closed_form_tail']:.2f}%), largest {v['max_abs']:.3f}"
            for d, v in stats.items()
        )
        + f". At 768 dimensions the typical angle is 90 ± {math.degrees(math.asin(s['std'])):.1f} degrees and the "
        f"largest of {n * (n - 1) // 2:,} cosines is {s['max_abs']:.3f} ({math.degrees(math.acos(s['max_abs'])):.0f}"
        f" degrees). A random token vector plus a random position vector of the same scale is nearest to its own "
        f"token among {vocab:,} for "
        + ", ".join(f"{100 * v['recovery']:.1f}% (d={d})" for d, v in stats.items())
        + " of positions: adding positions costs a token its identity only in low dimension."
    )

    def plot(fig):
        ax1, ax2 = fig.subplots(1, 2)
        ax1.plot(dims, [stats[d]["std"] for d in dims], "o", label="measured std of cos")
        ax1.plot(dims, [1 / math.sqrt(d) for d in dims], "-", label="1/sqrt(d)")
        ax1.plot(dims, [stats[d]["max_abs"] for d in dims], "s--", label=f"largest |cos| of {n} vectors")
        ax1.set_xscale("log", base=2)
        ax1.set_yscale("log", base=2)
        ax1.set_xlabel("dimension d")
        ax1.legend(fontsize=8)
        ax2.plot(dims, [100 * stats[d]["recovery"] for d in dims], "o-")
        ax2.set_xscale("log", base=2)
        ax2.set_xlabel("dimension d")
        ax2.set_ylabel(f"% of token + position nearest its token\n(among {vocab} tokens)")

    return Finding(verdict, summary, dict(stats={str(d): v for d, v in stats.items()}, n=n, threshold=THRESHOLD,
                                          vocab=vocab, positions=positions), plot)  # fmt: skip
