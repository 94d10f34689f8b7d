"""RoPE's properties, measured with the library's own rotation (layers/rope.py):
1. the rotated q·k depends only on the offset between the two positions;
2. its long-range decay: the RoFormer bound on |q·k| for unit-norm content falls with the distance;
3. rotating V as well (or the residual stream) breaks shift invariance: the same tokens at other absolute positions
   give other attention outputs, which is what relative position encoding is meant to avoid.
"""

from __future__ import annotations

import torch

from ..layers.rope import apply_rope, inverse_frequencies, rope_cos_sin
from . import Finding, experiment


def _rotate(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """x (B, H, T, Dh) rotated at `positions` (T,), in float64."""
    inv_freq, factor = inverse_frequencies(x.shape[-1], theta, None)
    cos, sin = rope_cos_sin(positions, inv_freq.double(), factor, torch.float64)
    return apply_rope(x, cos, sin)


def _offset_invariance(dh: int, g: torch.Generator) -> float:
    """max |q_m·k_n - q_{m+s}·k_{n+s}| over random q, k, positions and shifts s."""
    q, k = torch.randn(1, 1, 1, dh, generator=g, dtype=torch.float64), torch.randn(1, 1, 1, dh, generator=g).double()
    worst = 0.0
    for m, n, s in torch.randint(0, 4000, (200, 3), generator=g).tolist():
        a = (_rotate(q, torch.tensor([m])) * _rotate(k, torch.tensor([n]))).sum()
        b = (_rotate(q, torch.tensor([m + s])) * _rotate(k, torch.tensor([n + s]))).sum()
        worst = max(worst, float((a - b).abs()))
    return worst


def _decay(dh: int, distances: list[int]) -> list[float]:
    """RoFormer's bound (section 3.4.3): (1/(d/2)) sum_j |S_j| with S_j the partial sums of e^{i r theta_i}."""
    inv_freq, _ = inverse_frequencies(dh, 10000.0, None)
    out = []
    for r in distances:
        terms = torch.polar(torch.ones(dh // 2, dtype=torch.float64), r * inv_freq.double())
        out.append(float(torch.cumsum(terms, 0).abs().mean()))
    return out


def _shift_effect(rotate_v: bool, g: torch.Generator, dh: int = 64, T: int = 16, shift: int = 500) -> float:
    """max |out(tokens at 0..T-1) - out(same tokens at shift..shift+T-1)| of causal attention."""
    q, k, v = (torch.randn(1, 2, T, dh, generator=g, dtype=torch.float64) for _ in range(3))
    outs = []
    for start in (0, shift):
        pos = torch.arange(start, start + T)
        qr, kr = _rotate(q, pos), _rotate(k, pos)
        vr = _rotate(v, pos) if rotate_v else v
        scores = (qr @ kr.transpose(-1, -2)) / dh**0.5  # (1, H, T, T)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        outs.append(scores.softmax(-1) @ vr)
    return float((outs[0] - outs[1]).abs().max())


@experiment(
    "rope",
    "RoPE makes q·k depend only on the offset between positions, with a long-range decay; it belongs on Q and K "
    "only: applied to V (or the residual stream) it breaks shift invariance",
    "RoFormer (Su et al. 2021); study cards on RoPE",
)
def rope(quick: bool) -> Finding:
    g = torch.Generator().manual_seed(0)
    invariance = _offset_invariance(64, g)
    distances = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024] + ([] if quick else [2048, 4096, 8192])
    bound = _decay(128, distances)
    qk_only, with_v = _shift_effect(False, g), _shift_effect(True, g)
    falls = bound[0] > bound[len(bound) // 2] > min(bound[len(bound) // 2 :])
    verdict = "confirmed" if invariance < 1e-9 and with_v > 1e-3 and qk_only < 1e-9 and falls else "refuted"
    summary = (
        f"Offset only: over 200 random (m, n, shift) triples in float64, max |q_m·k_n - q_(m+s)·k_(n+s)| = "
        f"{invariance:.1e}. Decay: the RoFormer bound on the relative score (head dim 128) is {bound[0]:.2f} at "
        f"distance 1, {bound[distances.index(64)]:.2f} at 64, {bound[distances.index(1024)]:.2f} at 1024 (it decays "
        f"on average but not monotonically: it oscillates). Rotating Q and K only: the same 16 tokens placed at "
        f"positions 0.. and 500.. give attention outputs that differ by at most {qk_only:.1e}; rotating V too, by "
        f"{with_v:.2f}: the output then depends on absolute position, so a model would have to undo the rotation, and "
        "prefix caching / shifted windows would change results."
    )

    def plot(fig):
        ax1, ax2 = fig.subplots(1, 2)
        ax1.plot(distances, bound, "o-")
        ax1.set_xscale("log")
        ax1.set_xlabel("relative distance")
        ax1.set_ylabel("RoFormer bound on |q·k| (head dim 128)")
        ax2.bar(["RoPE on Q, K", "RoPE on Q, K, V"], [max(qk_only, 1e-17), with_v])
        ax2.set_yscale("log")
        ax2.set_ylabel("max output change when shifted by 500")

    return Finding(verdict, summary, dict(offset_invariance=invariance, distances=distances, decay_bound=bound,
                                          shift_change_qk_only=qk_only, shift_change_with_v=with_v), plot)  # fmt: skip
