"""Seeds and the verdict rule every training experiment of the lab applies.

A training run's loss moves with its seed (the initial weights and the order of the batches), so one run proves
nothing about a gap of a few hundredths of a nat. Each comparison trains every configuration on the same seeds: seed s
gives all of them the same data order, so the per-seed differences are paired, and their spread is the noise that
matters. The rule:

    A difference counts when the mean of the per-seed differences exceeds twice their standard deviation (sample std,
    n - 1) in size; otherwise the two are within noise ("no difference").

With 3 seeds that is a strict rule (a paired t of 2·sqrt(3) = 3.5); with the 2 seeds of a quick run it is a rough one.
A claim that something costs "nothing" holds when the difference does not count, or counts but stays under the
tolerance the claim allows (say 0.02 nats), so a tiny but real difference does not refute it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

SEEDS = (0, 1, 2)  # full runs
QUICK_SEEDS = (0, 1)  # quick runs (tests): two seeds give a spread, three would double nothing but the time
RULE = (
    "Verdict rule: every configuration trains on the same {n} seeds (seed s: the same batches for all); a difference "
    "counts when the mean of the per-seed differences exceeds twice their standard deviation, otherwise it is within "
    "noise."
)


def seeds(quick: bool) -> tuple[int, ...]:
    return QUICK_SEEDS if quick else SEEDS


def rule(n: int) -> str:
    """The rule as printed in each verdict, for n seeds."""
    return RULE.format(n=n)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value); nan if any value is nan (a diverged run)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_std needs at least one value")
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var)


@dataclass(frozen=True)
class Difference:
    """a - b over paired seeds: mean, spread (std of the per-seed differences), and whether it counts."""

    mean: float
    std: float
    n: int
    counts: bool  # |mean| > 2 std (and n >= 2)

    @property
    def sign(self) -> int:
        """+1: a is larger, -1: b is larger, 0: within noise."""
        return 0 if not self.counts else (1 if self.mean > 0 else -1)

    def negligible(self, tolerance: float) -> bool:
        """The claim 'a costs nothing against b' holds: within noise, or real but under `tolerance` in size."""
        return not math.isnan(self.mean) and (not self.counts or abs(self.mean) < tolerance)

    def text(self, unit: str = "nats") -> str:
        if math.isnan(self.mean):
            return "n/a (a run diverged)"
        verdict = "counts" if self.counts else "within noise"
        return f"{self.mean:+.3f} ± {self.std:.3f} {unit} ({verdict})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def difference(a: Sequence[float], b: Sequence[float]) -> Difference:
    """The paired difference a - b (a[i] and b[i] from the same seed) under the rule."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired differences need two equally long, non-empty lists, got {len(a)} and {len(b)}")
    mean, std = mean_std([x - y for x, y in zip(a, b, strict=True)])
    counts = len(a) >= 2 and not math.isnan(mean) and abs(mean) > 2 * std
    return Difference(mean, std, len(a), counts)


def over_seeds(fn: Callable[[int], dict[str, Any]], seed_list: Sequence[int]) -> dict[str, Any]:
    """Call fn(seed) -> {key: number} for each seed; return {key: [values in seed order]}."""
    out: dict[str, list] = {}
    for s in seed_list:
        for k, v in fn(s).items():
            out.setdefault(k, []).append(v)
    return out


def pm(values: Sequence[float], fmt: str = ".3f") -> str:
    """'2.345 ± 0.012' (mean ± std over seeds)."""
    mean, std = mean_std(values)
    return "diverged" if math.isnan(mean) else f"{mean:{fmt}} ± {std:{fmt}}"


def plot_curves(ax, results: dict[str, dict], ylabel: str = "training loss (mean over seeds)", **legend) -> None:
    """Each configuration's training-loss curve ({label: {"losses": [...]}}) on one axis, as the lab's plots draw."""
    for label, r in results.items():
        ax.plot(r["losses"], label=label, lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend(**legend)
