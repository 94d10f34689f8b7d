"""GRPO (Shao et al. 2024, DeepSeekMath): for each prompt a group of sampled replies, scored by a programmatic
reward (the task's checker); each reply's advantage is its reward standardised within its group, so no critic is
needed. The loss is PPO's clipped surrogate on those advantages (token-level mean) plus kl_coef times the k3
estimate of KL(policy || reference). `token_mean`: "batch" averages over every response token of the batch
(DAPO's token-level mean), "sequence" over each reply's tokens then over the replies (the paper's eq. 3)."""

from __future__ import annotations

import torch

from .common import (
    AlignResult,
    Optimizer,
    advance,
    as_reference,
    data_files,
    eval_prompts,
    evaluate,
    load_policy,
    metrics_log,
    publish_policy,
    start_run,
    step_bar,
)
from .config import AlignConfig
from .data import batch_indices, read_prompts, sequence_logps, split_heldout
from .losses import group_advantages, kl_k3, ppo_policy_loss, response_mean
from .report import write_report
from .rollout import sample


def grpo_step(cfg: AlignConfig, policy, reference, tokenizer, records, opt: Optimizer, seed: int) -> dict:
    """One rollout batch and `ppo_epochs` optimizer steps on it; returns the step's metrics."""
    roll = sample(policy, tokenizer, records, cfg.group_size, cfg, seed)
    rewards = roll.task_rewards()
    advantages = group_advantages(rewards, cfg.group_size)[:, None]  # (N, 1): every token of a reply shares it
    with torch.no_grad():
        old = sequence_logps(policy, roll.ids, roll.mask)
        with as_reference(policy, reference) as ref:
            ref_logps = sequence_logps(ref, roll.ids, roll.mask)
    policy.train()
    for _ in range(cfg.ppo_epochs):
        logps = sequence_logps(policy, roll.ids, roll.mask)
        per_sequence = cfg.token_mean == "sequence"
        pg, clip_fraction = ppo_policy_loss(logps, old, advantages.expand_as(logps), roll.mask, cfg.clip, per_sequence)
        kl = response_mean(kl_k3(logps, ref_logps), roll.mask, per_sequence)
        opt.step(pg + cfg.kl_coef * kl)
    kl_per_reply = float(((old - ref_logps) * roll.mask).sum(1).mean())  # sampled estimate of KL per reply
    return dict(loss=(pg + cfg.kl_coef * kl).item(), reward=float(rewards.mean()), kl=kl_per_reply,
                clip_fraction=float(clip_fraction), length=float(roll.mask.sum(1).float().mean()))  # fmt: skip


def train_grpo(cfg: AlignConfig) -> AlignResult:
    run_dir = start_run(cfg)
    train_path, heldout_path = data_files(cfg, "prompts")
    tokenizer, policy, reference = load_policy(cfg)
    train = read_prompts(train_path, need_answer=True)
    heldout = read_prompts(heldout_path, need_answer=False) if heldout_path else None
    train, heldout = split_heldout(train, heldout, str(train_path))
    prompts = eval_prompts(cfg, heldout_path) if cfg.eval_file or cfg.train_file is None else heldout
    prompts = prompts[: cfg.eval_prompts]
    log, opt = metrics_log(run_dir), Optimizer([policy], cfg, cfg.steps * cfg.ppo_epochs)
    before = evaluate(policy, reference, tokenizer, prompts, cfg)
    log.write(dict(step=0) | (before.record() if before else {}))
    bar = step_bar(cfg)
    for step in range(1, cfg.steps + 1):
        records = [train[i] for i in batch_indices(len(train), cfg.batch_size, step - 1, cfg.seed)]
        record = dict(step=step) | grpo_step(cfg, policy, reference, tokenizer, records, opt, cfg.seed * 100_003 + step)
        if cfg.eval_interval and step % cfg.eval_interval == 0 and step < cfg.steps:
            middle = evaluate(policy, reference, tokenizer, prompts, cfg)
            record |= middle.record() if middle else {}
        log.write(record)
        advance(bar, record)
    bar.close()
    after = evaluate(policy, reference, tokenizer, prompts, cfg)
    log.write(dict(step=cfg.steps) | (after.record() if after else {}))
    extra = (
        f"{cfg.steps} rollout batches of {cfg.batch_size} prompts x {cfg.group_size} replies (temperature "
        f"{cfg.temperature:g}), {cfg.ppo_epochs} epochs each; {cfg.token_mean} token mean; clip {cfg.clip:g}, "
        f"kl_coef {cfg.kl_coef:g}; the reward "
        "is the task's checker."
    )
    summary = write_report(run_dir, cfg, prompts, before, after, log.read(), extra)
    model, model_dir = publish_policy(cfg, policy, tokenizer)
    return AlignResult(run_dir, before, after, summary, model, model_dir)
