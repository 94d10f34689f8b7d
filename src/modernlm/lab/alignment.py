"""PPO's KL term, measured on the alignment task with a tiny model (modernlm.alignment): the coefficient's
trade-off between reward and distance from the reference, and what happens without it (the policy drifts, and with a
learned reward model its score can rise while the task's true reward does not)."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

from . import Finding, experiment


@functools.lru_cache(maxsize=2)
def _tiny(quick: bool) -> Path:
    """The tiny SFT model (and the task beside it), built once per process."""
    from ..alignment.tiny import build_tiny_sft_model

    root = Path(tempfile.mkdtemp(prefix="modernlm-lab-align-"))
    build_tiny_sft_model(root / "sft", steps=10 if quick else 300)
    return root


def _ppo(root: Path, out: Path, kl_coef: float, steps: int, reward_model: str | None = None) -> dict:
    quick = steps < 10  # a check that the experiment runs: small batches, no evaluation in between
    from ..alignment.config import AlignConfig
    from ..alignment.ppo import train_ppo

    data = root / "task"
    cfg = AlignConfig(
        method="ppo", base=str(root / "sft"), train_file=str(data / "train_prompts.jsonl"),
        heldout_file=str(data / "heldout_prompts.jsonl"), eval_file=str(data / "heldout_prompts.jsonl"),
        out_dir=str(out), steps=steps, lr=3e-3, batch_size=4 if quick else 16, kl_coef=kl_coef,
        max_new_tokens=6 if quick else 12, reward_model=reward_model, eval_interval=0 if quick else steps // 4,
        eval_prompts=2 if quick else 32,
    )  # fmt: skip
    result = train_ppo(cfg)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return dict(reward=result.after.reward, kl=result.after.kl, accuracy=result.after.accuracy,
                length=result.after.length, before=result.before.reward, records=records)  # fmt: skip


@experiment(
    "kl-tradeoff",
    "PPO's KL coefficient trades reward for closeness to the reference: the larger it is, the smaller the policy's "
    "KL to the reference, and the less reward it reaches",
    "Ziegler et al. 2019 (Fine-Tuning Language Models from Human Preferences); Ouyang et al. 2022 (InstructGPT)",
)
def kl_tradeoff(quick: bool) -> Finding:
    from ..alignment.tiny import one_thread

    coefs, steps = ([0.0, 1.0], 1) if quick else ([0.0, 0.02, 0.1, 0.5, 2.0], 40)
    with one_thread():
        root = _tiny(quick)
        runs = {c: _ppo(root, root / f"kl-{c}", c, steps) for c in coefs}
    kls, rewards = [runs[c]["kl"] for c in coefs], [runs[c]["reward"] for c in coefs]
    kl_falls = kls[-1] < kls[0]
    reward_falls = rewards[-1] <= rewards[0]
    verdict = "confirmed" if kl_falls and reward_falls else ("refuted" if not kl_falls else "depends")
    verdict = "depends" if quick else verdict  # one batch decides nothing: the quick run checks that it runs
    summary = (
        f"PPO on the arithmetic task (tiny model, task checker as reward, {steps} batches of 16 prompts, lr 3e-3), "
        f"one run per KL coefficient; held-out greedy answers before: reward {runs[coefs[0]]['before']:.3f}. After: "
        + "; ".join(
            f"kl_coef {c:g}: reward {runs[c]['reward']:.3f}, KL {runs[c]['kl']:.2f} nats, "
            f"length {runs[c]['length']:.1f}"
            for c in coefs
        )  # fmt: skip
        + f". The KL to the reference {'falls' if kl_falls else 'does not fall'} from the smallest to the largest "
        f"coefficient and the reward {'falls with it' if reward_falls else 'does not'}."
    )

    def plot(fig):
        ax1, ax2 = fig.subplots(1, 2)
        ax1.plot(kls, rewards, "o-")
        for c, k, r in zip(coefs, kls, rewards, strict=True):
            ax1.annotate(f"{c:g}", (k, r), fontsize=8)
        ax1.set(xlabel="KL to reference (nats / reply)", ylabel="held-out task reward", title="reward vs KL")
        for c in coefs:
            points = [(r["step"], r["kl"]) for r in runs[c]["records"] if "kl" in r]
            ax2.plot(*zip(*points, strict=True), label=f"kl_coef {c:g}", lw=0.8)
        ax2.set(xlabel="rollout batch", ylabel="KL of the sampled replies")
        ax2.legend(fontsize=7)

    numbers = {str(c): {k: v for k, v in runs[c].items() if k != "records"} for c in coefs}
    return Finding(verdict, summary, numbers | {"steps": steps}, plot)


@experiment(
    "ppo-needs-a-reference",
    "Without the KL penalty against a reference model, PPO drifts from it: the KL grows far beyond a penalised "
    "run's, and a learned reward model's score can rise while the task's true reward does not (reward hacking)",
    "Ziegler et al. 2019; Stiennon et al. 2020 (Learning to summarize from human feedback, over-optimisation)",
)
def ppo_needs_a_reference(quick: bool) -> Finding:
    from ..alignment.config import AlignConfig
    from ..alignment.reward import train_reward
    from ..alignment.tiny import one_thread

    steps = 1 if quick else 60
    with one_thread():
        root = _tiny(quick)
        data = root / "task"
        rm = train_reward(AlignConfig(
            method="reward", base=str(root / "sft"), train_file=str(data / "train_pairs.jsonl"),
            heldout_file=str(data / "heldout_pairs.jsonl"), out_dir=str(root / "rm"), steps=1 if quick else 30,
            lr=3e-3, batch_size=16, eval_interval=0,
        ))  # fmt: skip
        runs = {c: _ppo(root, root / f"ref-{c}", c, steps, str(rm.model_dir)) for c in (0.0, 1.0)}
    free, held = runs[0.0], runs[1.0]
    drifts = free["kl"] > 2 * held["kl"]
    first_rm = {c: next(r["reward"] for r in runs[c]["records"] if "reward" in r) for c in runs}
    last_rm = {c: [r["reward"] for r in runs[c]["records"] if "reward" in r][-1] for c in runs}
    hacked = last_rm[0.0] > first_rm[0.0] + 1 and free["reward"] <= free["before"]  # score up, true reward not
    verdict = "confirmed" if drifts and hacked else ("depends" if drifts or hacked else "refuted")
    verdict = "depends" if quick else verdict  # one batch decides nothing: the quick run checks that it runs
    summary = (
        f"PPO rewarded by a reward model trained on the task's pairs (held-out pair accuracy {rm.accuracy_after:.2f}), "
        f"{steps} batches, without a KL term and with kl_coef 1. Without: KL to the reference {free['kl']:.2f} "
        f"nats per reply, reward-model score of the rollouts {first_rm[0.0]:.2f} -> {last_rm[0.0]:.2f}, held-out "
        f"task reward {free['before']:.3f} -> {free['reward']:.3f} (accuracy {free['accuracy']:.3f}). With: KL "
        f"{held['kl']:.2f}, score {first_rm[1.0]:.2f} -> {last_rm[1.0]:.2f}, task reward {held['before']:.3f} -> "
        f"{held['reward']:.3f} (accuracy {held['accuracy']:.3f}). The unpenalised policy "
        f"{'drifts more than twice as far' if drifts else 'does not drift twice as far'}; its reward-model score "
        f"{'rises while the task reward does not (reward hacking)' if hacked else 'and the task reward move together'}."
    )

    def plot(fig):
        axes = fig.subplots(1, 3)
        for c, run in runs.items():
            for ax, key in zip(axes, ("reward", "kl", "eval_reward"), strict=True):
                points = [(r["step"], r[key]) for r in run["records"] if key in r]
                ax.plot(*zip(*points, strict=True), "o-" if key.startswith("eval") else "-", ms=3,
                        label=f"kl_coef {c:g}")  # fmt: skip
        for ax, title in zip(axes, ("reward-model score", "KL of rollouts", "held-out task reward"), strict=True):
            ax.set(xlabel="rollout batch", title=title)
            ax.legend(fontsize=7)

    numbers = {str(c): {k: v for k, v in run.items() if k != "records"} for c, run in runs.items()}
    return Finding(verdict, summary, numbers | {"rm_accuracy": rm.accuracy_after, "steps": steps}, plot)
