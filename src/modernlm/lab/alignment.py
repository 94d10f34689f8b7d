"""PPO's KL term, measured on the alignment task with a tiny model (modernlm.alignment): the coefficient's
trade-off between reward and distance from the reference, and what happens without it (the policy drifts, and with a
learned reward model its score can rise while the task's true reward does not). Every configuration runs on each seed
of the lab (_seeds.py): seed s sets the PPO run's adapter and critic init, its prompt batches and its sampling (and the
reward model's training, in ppo-needs-a-reference); the tiny SFT model they all start from is one (seed 0)."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

from . import Finding, experiment
from ._seeds import difference, mean_std, pm, rule, seeds

MEASURES = ("reward", "kl", "accuracy", "length", "before")  # held-out, after PPO (before: the SFT model's reward)


@functools.lru_cache(maxsize=2)
def _tiny(quick: bool) -> Path:
    """The tiny SFT model (and the task beside it), built once per process."""
    from ..alignment.tiny import build_tiny_sft_model

    root = Path(tempfile.mkdtemp(prefix="modernlm-lab-align-"))
    build_tiny_sft_model(root / "sft", steps=10 if quick else 300)
    return root


def _ppo(root: Path, out: Path, kl_coef: float, steps: int, seed: int, reward_model: str | None = None) -> dict:
    quick = steps < 10  # a check that the experiment runs: small batches, no evaluation in between
    from ..alignment.config import AlignConfig
    from ..alignment.ppo import train_ppo

    data = root / "task"
    cfg = AlignConfig(
        method="ppo", base=str(root / "sft"), train_file=str(data / "train_prompts.jsonl"),
        heldout_file=str(data / "heldout_prompts.jsonl"), eval_file=str(data / "heldout_prompts.jsonl"),
        out_dir=str(out), steps=steps, lr=3e-3, batch_size=4 if quick else 16, kl_coef=kl_coef,
        max_new_tokens=6 if quick else 12, reward_model=reward_model, eval_interval=0 if quick else steps // 4,
        eval_prompts=2 if quick else 32, seed=seed,
    )  # fmt: skip
    result = train_ppo(cfg)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return dict(reward=result.after.reward, kl=result.after.kl, accuracy=result.after.accuracy,
                length=result.after.length, before=result.before.reward, records=records)  # fmt: skip


def _over_seeds(runs: list[dict]) -> dict:
    """One configuration's runs (one per seed) -> the mean of each measure, its std, the per-seed values, and the
    per-seed metrics records."""
    out = {}
    for k in MEASURES:
        values = [r[k] for r in runs]
        out[k], out[f"{k}_std"] = mean_std(values)
        out[f"{k}_per_seed"] = values
    return out | {"records": [r["records"] for r in runs]}


def _mean_curve(records: list[list[dict]], key: str) -> tuple[list[int], list[float]]:
    """(steps, mean over seeds of `key` at each step where every seed's metrics record it)."""
    per_seed = [{r["step"]: r[key] for r in rs if key in r} for rs in records]
    steps = sorted(set.intersection(*(set(d) for d in per_seed)))
    return steps, [mean_std([d[s] for d in per_seed])[0] for s in steps]


def _numbers(runs: dict[float, dict]) -> dict:
    return {str(c): {k: v for k, v in run.items() if k != "records"} for c, run in runs.items()}


@experiment(
    "kl-tradeoff",
    "PPO's KL coefficient trades reward for closeness to the reference: the larger it is, the smaller the policy's "
    "KL to the reference, and the less reward it reaches",
    "Ziegler et al. 2019 (Fine-Tuning Language Models from Human Preferences); Ouyang et al. 2022 (InstructGPT)",
)
def kl_tradeoff(quick: bool) -> Finding:
    from ..threads import one_thread

    coefs, steps = ([0.0, 1.0], 1) if quick else ([0.0, 0.02, 0.1, 0.5, 2.0], 40)
    seed_list = seeds(quick)
    with one_thread():
        root = _tiny(quick)
        runs = {c: _over_seeds([_ppo(root, root / f"kl-{c}-{s}", c, steps, s) for s in seed_list]) for c in coefs}
    lo, hi = runs[coefs[0]], runs[coefs[-1]]
    d_kl = difference(hi["kl_per_seed"], lo["kl_per_seed"])  # < 0: the largest coefficient keeps the policy closer
    d_reward = difference(hi["reward_per_seed"], lo["reward_per_seed"])  # < 0: and costs reward
    kl_falls, reward_falls = d_kl.sign < 0, d_reward.sign < 0
    verdict = (
        "confirmed" if kl_falls and reward_falls else "refuted" if not kl_falls or d_reward.sign > 0 else "depends"
    )
    verdict = "depends" if quick else verdict  # one batch decides nothing: the quick run checks that it runs
    summary = (
        f"PPO on the arithmetic task (tiny model, task checker as reward, {steps} batches of "
        f"{4 if quick else 16} prompts, lr 3e-3), each KL coefficient on {len(seed_list)} seeds; held-out greedy "
        f"answers before: reward {lo['before']:.3f}. After (mean ± std over seeds): "
        + "; ".join(
            f"kl_coef {c:g}: reward {pm(runs[c]['reward_per_seed'])}, KL {pm(runs[c]['kl_per_seed'], '.2f')} nats, "
            f"length {runs[c]['length']:.1f}"
            for c in coefs
        )  # fmt: skip
        + f". Largest minus smallest coefficient (paired by seed): KL {d_kl.text('nats')}, reward "
        f"{d_reward.text('reward')}. The KL to the reference {'falls' if kl_falls else 'does not fall'} from the "
        f"smallest to the largest coefficient and the reward {'falls with it' if reward_falls else 'does not'}. "
        + rule(len(seed_list))
    )

    def plot(fig):
        ax1, ax2 = fig.subplots(1, 2)
        kls, rewards = [runs[c]["kl"] for c in coefs], [runs[c]["reward"] for c in coefs]
        ax1.errorbar(kls, rewards, xerr=[runs[c]["kl_std"] for c in coefs],
                     yerr=[runs[c]["reward_std"] for c in coefs], fmt="o-", capsize=3)  # fmt: skip
        for c, k, r in zip(coefs, kls, rewards, strict=True):
            ax1.annotate(f"{c:g}", (k, r), fontsize=8)
        ax1.set(xlabel="KL to reference (nats / reply)", ylabel="held-out task reward", title="mean ± std over seeds")
        for c in coefs:
            ax2.plot(*_mean_curve(runs[c]["records"], "kl"), label=f"kl_coef {c:g}", lw=0.8)
        ax2.set(xlabel="rollout batch", ylabel="KL of the sampled replies (mean over seeds)")
        ax2.legend(fontsize=7)

    numbers = _numbers(runs) | {"steps": steps, "seeds": seed_list, "rule": rule(len(seed_list))}
    numbers["largest_minus_smallest"] = dict(kl=d_kl.to_dict(), reward=d_reward.to_dict())
    return Finding(verdict, summary, numbers, plot)


@experiment(
    "ppo-needs-a-reference",
    "Without the KL penalty against a reference model, PPO drifts from it: the KL grows far beyond a penalised "
    "run's, and a learned reward model's score can rise while the task's true reward does not (reward hacking)",
    "Ziegler et al. 2019; Stiennon et al. 2020 (Learning to summarize from human feedback, over-optimisation)",
)
def ppo_needs_a_reference(quick: bool) -> Finding:
    from ..threads import one_thread

    steps, seed_list = 1 if quick else 60, seeds(quick)
    with one_thread():
        root = _tiny(quick)
        per_seed = [_reference_runs(root, steps, s, quick) for s in seed_list]  # [(rm accuracy, {coef: run})]
    rm_acc = [acc for acc, _ in per_seed]
    runs = {c: _over_seeds([r[c] for _, r in per_seed]) for c in (0.0, 1.0)}
    free, held = runs[0.0], runs[1.0]
    for run in runs.values():  # the reward model's score of the rollouts: first and last batch, per seed
        scores = [[r["reward"] for r in rs if "reward" in r] for rs in run["records"]]
        run["rm_first_per_seed"], run["rm_last_per_seed"] = [v[0] for v in scores], [v[-1] for v in scores]
    drift = difference(free["kl_per_seed"], [2 * k for k in held["kl_per_seed"]])  # > 0: over twice as far
    rm_rise = difference(free["rm_last_per_seed"], [f + 1 for f in free["rm_first_per_seed"]])  # > 0: score up 1+
    true_rise = difference(free["reward_per_seed"], free["before_per_seed"])  # > 0: the task reward rose
    drifts, hacked = drift.sign > 0, rm_rise.sign > 0 and true_rise.sign <= 0
    verdict = "confirmed" if drifts and hacked else ("depends" if drifts or hacked else "refuted")
    verdict = "depends" if quick else verdict  # one batch decides nothing: the quick run checks that it runs
    summary = (
        f"PPO rewarded by a reward model trained on the task's pairs (one per seed; held-out pair accuracy "
        f"{pm(rm_acc, '.2f')}), {steps} batches, without a KL term and with kl_coef 1, {len(seed_list)} seeds (mean "
        f"± std). Without: KL to the reference {pm(free['kl_per_seed'], '.2f')} nats per reply, reward-model score "
        f"of the rollouts {pm(free['rm_first_per_seed'], '.2f')} -> {pm(free['rm_last_per_seed'], '.2f')}, held-out "
        f"task reward {free['before']:.3f} -> {pm(free['reward_per_seed'])} (accuracy {free['accuracy']:.3f}). "
        f"With: KL {pm(held['kl_per_seed'], '.2f')}, score {pm(held['rm_first_per_seed'], '.2f')} -> "
        f"{pm(held['rm_last_per_seed'], '.2f')}, task reward {held['before']:.3f} -> {pm(held['reward_per_seed'])} "
        f"(accuracy {held['accuracy']:.3f}). Paired by seed: KL without minus twice KL with {drift.text('nats')}; "
        f"score rise minus 1 {rm_rise.text('score')}; task reward after minus before {true_rise.text('reward')}. The "
        f"unpenalised policy {'drifts more than twice as far' if drifts else 'does not drift twice as far'}; its "
        "reward-model score "
        + (
            "rises by over 1 while the task reward does not (reward hacking)"
            if hacked
            else "does not rise by over 1 while the task reward stays (no reward hacking shown)"
        )
        + ". "
        + rule(len(seed_list))
    )

    def plot(fig):
        axes = fig.subplots(1, 3)
        for c, run in runs.items():
            for ax, key in zip(axes, ("reward", "kl", "eval_reward"), strict=True):
                ax.plot(*_mean_curve(run["records"], key), "o-" if key.startswith("eval") else "-", ms=3,
                        label=f"kl_coef {c:g}")  # fmt: skip
        for ax, title in zip(axes, ("reward-model score", "KL of rollouts", "held-out task reward"), strict=True):
            ax.set(xlabel="rollout batch", title=f"{title} (mean over seeds)")
            ax.legend(fontsize=7)

    numbers = _numbers(runs) | {"rm_accuracy": mean_std(rm_acc)[0], "rm_accuracy_per_seed": rm_acc, "steps": steps}
    numbers |= dict(seeds=seed_list, rule=rule(len(seed_list)), free_kl_minus_twice_held=drift.to_dict())
    numbers |= dict(free_rm_rise_minus_1=rm_rise.to_dict(), free_task_reward_rise=true_rise.to_dict())
    return Finding(verdict, summary, numbers, plot)


def _reference_runs(root: Path, steps: int, seed: int, quick: bool) -> tuple[float, dict[float, dict]]:
    """One seed of ppo-needs-a-reference: a reward model trained with `seed`, then PPO against it without and with
    the KL term (both with `seed`): (the reward model's held-out pair accuracy, {kl_coef: run})."""
    from ..alignment.config import AlignConfig
    from ..alignment.reward import train_reward

    data = root / "task"
    rm = train_reward(AlignConfig(
        method="reward", base=str(root / "sft"), train_file=str(data / "train_pairs.jsonl"),
        heldout_file=str(data / "heldout_pairs.jsonl"), out_dir=str(root / f"rm-{seed}"), steps=1 if quick else 30,
        lr=3e-3, batch_size=16, eval_interval=0, seed=seed,
    ))  # fmt: skip
    runs = {c: _ppo(root, root / f"ref-{c}-{seed}", c, steps, seed, str(rm.model_dir)) for c in (0.0, 1.0)}
    return rm.accuracy_after, runs
