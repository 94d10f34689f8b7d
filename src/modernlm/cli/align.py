"""`modernlm align reward|dpo|grpo|ppo`: the post-training stage after SFT (modernlm.alignment).

With no data flags each method uses the shipped arithmetic task (written into the run directory): `reward` trains a
reward model on its preference pairs, `dpo` aligns on the same pairs, `grpo` and `ppo` sample replies to its prompts
(PPO rewarded by `--reward-model DIR`, else by the task's checker). Each run writes before_after.md, curves.png,
metrics.jsonl, summary.json, and the model (reward_model/, or adapter/ and model/).
"""

from __future__ import annotations

import argparse

from . import positive_int
from .common import add_renamed, add_run_args, add_table, add_targets, given_values, targets

# flag -> (AlignConfig field, default text) for a flag of the shared table (common.SHARED), or (field, type, help)
# for one of alignment's own; a flag a method does not use is refused by AlignConfig.validate
FLAGS = {
    "--model": ("base", "smollm2-135m-instruct; the policy to align: an SFT model"),
    "--train": ("train_file", "the shipped task; pairs (reward, dpo) or prompts (grpo, ppo)"),
    "--heldout": ("heldout_file", str, "held-out pairs or prompts JSONL (default: the last tenth of --train)"),
    "--eval": ("eval_file", str, 'held-out {"prompt", "answer"} JSONL scored by the task\'s checker'),
    "--out": ("out_dir", "runs/align-METHOD"),
    "--reward-model": ("reward_model", str, "ppo: a directory written by `modernlm align reward`"),
    "--max-steps": ("steps", "40; grpo and ppo: rollout batches"),
    "--batch-size": ("batch_size", "8; grpo and ppo: prompts per rollout batch"),
    "--lr": ("lr", "5e-4"),
    "--r": ("r", "8"),
    "--alpha": ("alpha", "16"),
    "--seed": ("seed", "0"),
    "--beta": ("beta", float, "dpo: the KL strength beta (default 0.1)"),
    "--loss": ("loss_type", str, "dpo: sigmoid (DPO), ipo or simpo (default sigmoid)"),
    "--simpo-gamma": ("simpo_gamma", float, "dpo --loss simpo: the target margin (default 0.5)"),
    "--sft-weight": ("sft_weight", float, "dpo: add the chosen replies' token NLL times this (RPO; default 0)"),
    "--group-size": ("group_size", positive_int, "grpo: replies per prompt (default 4)"),
    "--token-mean": ("token_mean", str, "grpo: average the loss over the batch's tokens or per reply (batch|sequence)"),
    "--kl-coef": ("kl_coef", float, "grpo, ppo: the KL penalty coefficient (default 0.05)"),
    "--target-kl": ("target_kl", float, "ppo: adapt the KL coefficient towards this KL per reply (default fixed)"),
    "--ppo-epochs": ("ppo_epochs", positive_int, "grpo, ppo: passes over each rollout batch (default 2)"),
    "--clip": ("clip", float, "grpo, ppo: the ratio clip epsilon (default 0.2)"),
    "--vf-coef": ("vf_coef", float, "ppo: the value loss weight (default 0.5)"),
    "--temperature": ("temperature", float, "sampling temperature of rollouts and --eval-samples (default 1)"),
    "--max-new-tokens": ("max_new_tokens", "16; the longest reply sampled or answered"),
    "--eval-prompts": ("eval_prompts", int, "held-out prompts answered before and after (default 32)"),
    "--eval-samples": ("eval_samples", int, "and this many replies sampled per prompt, scored (default 0)"),
    "--eval-pairs": ("eval_pairs", int, "reward, dpo: held-out pairs scored before and after (default 96)"),
    "--eval-interval": ("eval_interval", "10; 0 for none"),
    "--num-threads": ("num_threads", "torch's"),
}


def add_parser(sub) -> None:
    p = sub.add_parser("align", help="align a model: reward model, DPO, GRPO or PPO (no data flags: the shipped task)")
    p.add_argument(
        "method",
        choices=["task", "reward", "dpo", "grpo", "ppo"],
        help="what to train; `task` only writes the shipped task's files (its sft.jsonl makes the SFT model)",
    )
    p.add_argument("--full", action="store_true", help="train every weight instead of LoRA adapters")
    add_targets(p)
    add_table(p, FLAGS)
    add_renamed(p, "--steps", "max_steps", positive_int)
    add_run_args(p, "AlignConfig", resume=False)
    p.add_argument("--no-progress", action="store_true", help="no progress bar or phase lines on stderr")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    from ..alignment.config import AlignConfig

    values = AlignConfig.from_json(args.config).to_dict() if args.config else {}
    values["method"] = args.method
    values.update(given_values(args, FLAGS))
    if args.full:
        values["lora"] = False
    if args.no_progress:
        values["progress"] = False
    if args.targets is not None:
        values["targets"] = targets(args.targets)
    return AlignConfig.from_dict(values).validate()


def write_task_files(args: argparse.Namespace) -> int:
    """`modernlm align task [--out DIR] [--seed S]`: the shipped task's files, nothing trained."""
    from ..alignment import task

    given = [flag for flag in FLAGS if flag not in ("--out", "--seed") and getattr(args, flag[2:].replace("-", "_"))]
    if given or args.full or args.targets or args.config or args.print_config or args.no_progress:
        raise ValueError(f"`align task` writes files only; it takes --out and --seed, not {', '.join(given) or 'that'}")
    paths = task.write_task(args.out or "runs/align-task", seed=args.seed or 0)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    print(f"note: one sft.jsonl reply in five is deliberately wrong (a model that sometimes errs, for alignment to "
          f"fix); see {paths['readme']}")  # fmt: skip
    print(f"next: modernlm finetune --train {paths['sft']} --out runs/sft   (the SFT model the methods align)")
    return 0


def run(args: argparse.Namespace) -> int:
    from ..alignment import run_method

    if args.method == "task":
        return write_task_files(args)
    cfg = build_config(args)
    if args.print_config:
        print(cfg.to_json())
        return 0
    result = run_method(cfg)
    out = cfg.run_dir
    if cfg.method == "reward":
        print(f"held-out pairs: Bradley-Terry loss {result.loss_before:.4f} -> {result.loss_after:.4f}, "
              f"accuracy {result.accuracy_before:.3f} -> {result.accuracy_after:.3f}")  # fmt: skip
        print(f"wrote {result.model_dir} (AutoModelForSequenceClassification loads it) and {out / 'curves.png'}")
        return 0
    for name, e in (("before", result.before), ("after", result.after)):
        if e is not None:
            fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
            sampled = f"  sampled reward {fmt(e.sampled_reward)}" if e.sampled_reward is not None else ""
            print(f"{name:6} reward {fmt(e.reward)}  accuracy {fmt(e.accuracy)}  KL {e.kl:.3f}  length {e.length:.1f}"
                  + sampled)  # fmt: skip
    print(f"wrote {out / 'before_after.md'}, {out / 'curves.png'} and {result.model_dir}")
    return 0
