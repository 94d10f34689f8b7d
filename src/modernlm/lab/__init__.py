"""The lab: each claim of the study material is an experiment that measures it on this machine and gives a verdict.

An experiment is a function registered with `@experiment(name, claim, source)`. It takes `quick` (a smaller run for
tests and impatient users) and returns a `Finding`: the verdict ("confirmed", "refuted" or "depends"), one paragraph
that says why with the measured numbers, the numbers themselves, and a function that draws the plot. `run(name, ...)`
writes `result.json`, `plot.png` and `verdict.md` into the output directory. Experiments use the library's own model,
trainer and analysis code, never private copies of them.
"""

from __future__ import annotations

import datetime
import importlib
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files import atomic_path, write_json, write_text

VERDICTS = ("confirmed", "refuted", "depends")
MODULES = (  # files of this package that hold experiments
    *("kv_cache", "rope", "precision"),
    *("attention_scale", "norm_speed", "prefix_reuse", "shared_qk", "causal_rank", "norm_placement", "formulas"),
    *("swiglu", "bias_tying", "mask_leak", "extrapolation", "blocks"),
    *("card_figures", "gqa_flops", "orthogonality", "qk_init", "decoding"),  # issue 16: the non-training claims
    # round two, training experiments (lab/_seeds.py: seeds and the verdict rule)
    *("activations", "heads", "regularisation", "stability", "depth_width", "lora", "block_effects"),
    *("postnorm_depth", "batchnorm", "positions_concat"),
    "long_context",  # issue 15: RoPE scalings and positions at 8x the training length
    *("alignment",),  # issue 17
    *("induction", "logit_lens", "head_diversity", "causal_zero"),  # issue 29: looking inside SmolLM2
)


@dataclass
class Finding:
    verdict: str
    summary: str  # one paragraph: what was measured and why the verdict follows
    numbers: dict[str, Any]
    plot: Callable[[Any], None] | None = None  # draws into a matplotlib Figure


@dataclass(frozen=True)
class Experiment:
    name: str
    claim: str
    source: str
    fn: Callable[[bool], Finding] = field(repr=False)


REGISTRY: dict[str, Experiment] = {}


def experiment(name: str, claim: str, source: str):
    """Register the decorated `fn(quick: bool) -> Finding` under `name`."""

    def register(fn: Callable[[bool], Finding]) -> Callable[[bool], Finding]:
        if name in REGISTRY:
            raise ValueError(f"lab experiment {name!r} is registered twice")
        REGISTRY[name] = Experiment(name, claim, source, fn)
        return fn

    return register


def experiments() -> dict[str, Experiment]:
    for module in MODULES:
        importlib.import_module(f"{__name__}.{module}")
    return dict(sorted(REGISTRY.items()))


def get(name: str) -> Experiment:
    known = experiments()
    if name not in known:
        raise ValueError(f"unknown lab experiment {name!r}; `modernlm lab list` shows them: {', '.join(known)}")
    return known[name]


def run(name: str, quick: bool = False, out: str | Path | None = None) -> tuple[Finding, Path]:
    """Run one experiment and write its result.json, plot.png and verdict.md into `out` (default lab/NAME)."""
    exp = get(name)
    out = Path(out) if out is not None else Path("lab") / name
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    finding = exp.fn(quick)
    seconds = time.perf_counter() - start
    if finding.verdict not in VERDICTS:
        raise RuntimeError(f"experiment {name} returned verdict {finding.verdict!r}, not one of {VERDICTS}")
    machine = describe_machine()
    record = dict(name=name, claim=exp.claim, source=exp.source, verdict=finding.verdict, summary=finding.summary,
                  numbers=finding.numbers, quick=quick, seconds=round(seconds, 1), machine=machine,
                  date=datetime.datetime.now(datetime.timezone.utc).date().isoformat())  # fmt: skip
    write_json(out / "result.json", record, default=float)
    if finding.plot is not None:
        _plot(finding, out / "plot.png", exp.claim)
    write_text(
        out / "verdict.md",
        f"# {name}: {finding.verdict}\n\n**Claim** ({exp.source}): {exp.claim}\n\n{finding.summary}\n\n"
        f"Run: {'quick' if quick else 'full'}, {seconds:.0f} s on {machine}.\n",
    )
    return finding, out


def describe_machine() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo) and core count, the GPU if torch sees one, and torch's version."""
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu} ({os.cpu_count()} cores){gpu}, torch {torch.__version__}"


def _plot(finding: Finding, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(10, 4))
    finding.plot(fig)
    fig.suptitle(title if len(title) < 100 else title[:97] + "...", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_report(root: str | Path, path: str | Path, note: str = "") -> Path:
    """LAB.md: one row per experiment found under `root` (the result.json files `run` wrote), with its plot."""
    root, path = Path(root), Path(path)
    records = [json.loads(p.read_text()) for p in sorted(root.glob("*/result.json"))]
    if not records:
        raise FileNotFoundError(f"no result.json under {root}; run the experiments first (modernlm lab run NAME)")
    lines = ["# The lab: the study material's claims, measured", "", note, "",
             "| experiment | claim | source | verdict | run |", "|---|---|---|---|---|"]  # fmt: skip
    for r in records:
        run_kind = f"{'quick' if r['quick'] else 'full'}, {r['seconds']:.0f} s, {r.get('date', 'before 2026-12-02')}"
        lines.append(
            f"| [{r['name']}](#{r['name']}) | {r['claim']} | {r['source']} | **{r['verdict']}** | {run_kind} |"
        )
    for r in records:
        directory = root / r["name"]
        lines += ["", f"## {r['name']}", "", f"**{r['verdict']}.** {r['summary']}", ""]
        if (directory / "plot.png").is_file():
            lines.append(f"![{r['name']}]({(directory / 'plot.png').relative_to(path.parent)})")
    write_text(path, "\n".join(lines) + "\n")
    return path
