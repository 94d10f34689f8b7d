"""What an alignment run leaves besides its model: before_after.md (held-out reward, accuracy, KL to the reference,
reply length before and after, and answers side by side), curves.png (loss, reward, KL against the step), and
summary.json."""

from __future__ import annotations

from pathlib import Path

from ..files import atomic_path, write_json, write_text
from .common import Evaluation
from .config import AlignConfig
from .data import PromptRecord

CURVES = ("loss", "reward", "kl", "accuracy", "pair_loss", "pair_accuracy", "eval_reward", "eval_kl", "eval_accuracy",
          "eval_sampled_reward")  # fmt: skip


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def render(cfg: AlignConfig, prompts: list[PromptRecord], before: Evaluation, after: Evaluation, extra: str) -> str:
    sampled = before.sampled_reward is not None and after.sampled_reward is not None
    lines = [
        f"# Before and after {cfg.method} on {cfg.base}",
        "",
        extra,
        "",
        f"Held-out prompts: {len(prompts)}, answered greedily (up to {cfg.max_new_tokens} tokens)"
        + (f"; and {cfg.eval_samples} replies each sampled at temperature {cfg.temperature:g}." if sampled else "."),
        "",
        "| | reward | accuracy | KL to reference (nats / reply) | length (tokens) |"
        + (" sampled reward | sampled accuracy |" if sampled else ""),
        "|---|---|---|---|---|" + ("---|---|" if sampled else ""),
    ]
    for name, e in (("before", before), ("after", after)):
        row = f"| {name} | {_fmt(e.reward)} | {_fmt(e.accuracy)} | {e.kl:.3f} | {e.length:.1f} |"
        lines.append(row + (f" {_fmt(e.sampled_reward)} | {_fmt(e.sampled_accuracy)} |" if sampled else ""))
    for i, p in enumerate(prompts[: cfg.compare], 1):
        lines += ["", f"## {i}. {p.prompt[-1]['content']}", ""]
        if p.answer is not None:
            lines.append(f"- answer: {p.answer}")
        lines += [f"- before: {before.answers[i - 1]!r}", f"- after: {after.answers[i - 1]!r}"]
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path, cfg: AlignConfig, prompts, before, after, records: list[dict], extra: str) -> dict:
    """before_after.md, curves.png and summary.json in `run_dir`; returns the summary."""
    summary = {"method": cfg.method, "base": cfg.base, "steps": cfg.steps}
    if before is not None and after is not None:
        write_text(run_dir / "before_after.md", render(cfg, prompts, before, after, extra))
        summary |= {"before": before.record(), "after": after.record()}
    plot_curves(records, run_dir / "curves.png", f"{cfg.method} on {cfg.base}")
    write_json(run_dir / "summary.json", summary)
    return summary


def plot_curves(records: list[dict], path: Path, title: str) -> Path | None:
    series = {k: [(r["step"], r[k]) for r in records if k in r] for k in CURVES}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(series), 4)  # a grid, at most 4 panels a row: eight curves are 2 x 4, not 2560 x 320 pixels
    rows = -(-len(series) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), dpi=100, squeeze=False)
    for ax, (name, points) in zip(axes.flat, series.items(), strict=False):
        ax.plot(*zip(*points, strict=True), "o-" if name.startswith("eval") else "-", markersize=3)
        ax.set(xlabel="step", title=name)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(series) :]:
        ax.axis("off")  # the grid's empty places
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
