"""RLHF with PPO and its four models (Ziegler et al. 2019; Ouyang et al. 2022):

- actor: the policy (LoRA adapters over the frozen base), samples the rollouts and is trained;
- reference: the same base with the adapters off (no memory of its own), the KL baseline;
- reward model: scores each whole reply (frozen; `modernlm align reward` trains one), or the task's checker;
- critic: a second set of LoRA adapters over the reward model's own frozen weights (shared, not copied) and a value
  head initialised from the reward model's score head; it predicts the return at every token.

Each batch: sample a reply per prompt, score it, per-token rewards = -kl_coef * (log pi - log pi_ref) with the score
added at the last token, values from the critic, GAE, whitened advantages; then `ppo_epochs` passes of the clipped
policy loss + vf_coef * the clipped value loss over the whole batch. The KL coefficient is fixed, or adaptive towards
`target_kl` (KL per reply).
"""

from __future__ import annotations

import copy

import torch

from ..finetune.lora import apply_lora
from ..loading import load_tokenizer
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
    shared_view,
    start_run,
    step_bar,
    weight_bytes,
)
from .config import AlignConfig
from .data import batch_indices, check_same_vocabulary, read_prompts, sequence_logps, split_heldout
from .losses import KLController, gae, kl_rewards, masked_whiten, ppo_policy_loss, ppo_value_loss
from .report import write_report
from .reward import RewardModel, load_reward_model
from .rollout import Rollout, sample


def build_models(cfg: AlignConfig):
    """(tokenizer, actor, reference or None, reward model or None, critic); see the module docstring."""
    tokenizer, actor, reference = load_policy(cfg)
    reward_model = None
    if cfg.reward_model is not None:
        check_same_vocabulary(tokenizer, load_tokenizer(cfg.reward_model), "reward model")
        reward_model = load_reward_model(cfg.reward_model).requires_grad_(False)
        body, head = reward_model.body, copy.deepcopy(reward_model.score)
    else:  # the task's checker rewards; the critic starts from the actor's base and a fresh head
        body, head = actor, None
    if cfg.lora:
        critic_body = apply_lora(shared_view(body), cfg.lora_config())
    else:
        critic_body = copy.deepcopy(body).requires_grad_(True)
    critic = RewardModel(critic_body, reward_model.pad_id if reward_model else 0, head)
    critic.score.requires_grad_(True)
    return tokenizer, actor, reference, reward_model, critic


def repad(ids: torch.Tensor, mask: torch.Tensor, pad_id: int) -> torch.Tensor:
    """ids (B, L) with every position after the last response token set to `pad_id` (the reward model's pad)."""
    last = (mask * torch.arange(mask.shape[1])).argmax(1) + 1  # (B,) index of the last real token in ids
    return ids.masked_fill(torch.arange(ids.shape[1])[None] > last[:, None], pad_id)


@torch.no_grad()
def score(reward_model: RewardModel | None, roll: Rollout) -> torch.Tensor:
    if reward_model is None:
        return roll.task_rewards()
    return reward_model(repad(roll.ids, roll.mask, reward_model.pad_id)).float()


def ppo_step(cfg, models, records, opt: Optimizer, kl_ctl: KLController, seed: int) -> dict:
    tokenizer, actor, reference, reward_model, critic = models
    roll = sample(actor, tokenizer, records, 1, cfg, seed)
    ids, mask = roll.ids, roll.mask
    with torch.no_grad():
        old = sequence_logps(actor, ids, mask)
        with as_reference(actor, reference) as ref:
            ref_logps = sequence_logps(ref, ids, mask)
        scores = score(reward_model, roll)
        old_values = critic.values(ids[:, :-1]) * mask  # (B, L - 1): V of the state before each target token
        rewards, kl = kl_rewards(scores, old, ref_logps, mask, kl_ctl.value)
        advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, mask) * mask
    actor.train()
    for _ in range(cfg.ppo_epochs):
        logps = sequence_logps(actor, ids, mask)
        values = critic.values(ids[:, :-1])
        pg, clip_fraction = ppo_policy_loss(logps, old, advantages, mask, cfg.clip)
        vf = ppo_value_loss(values, old_values, returns, mask, cfg.value_clip)
        opt.step(pg + cfg.vf_coef * vf)
    kl_per_reply = float(kl.sum(1).mean())
    record = dict(loss=pg.item(), value_loss=vf.item(), reward=float(scores.mean()), kl=kl_per_reply)
    record |= dict(kl_coef=kl_ctl.value, clip_fraction=float(clip_fraction), length=float(mask.sum(1).float().mean()))
    if reward_model is not None and all(a is not None for a in roll.answers):
        record["task_reward"] = float(roll.task_rewards().mean())
    kl_ctl.update(kl_per_reply, len(records))
    return record


def train_ppo(cfg: AlignConfig) -> AlignResult:
    run_dir = start_run(cfg)
    train_path, heldout_path = data_files(cfg, "prompts")
    models = build_models(cfg)
    tokenizer, actor, reference, reward_model, critic = models
    train = read_prompts(train_path, need_answer=reward_model is None)
    heldout = read_prompts(heldout_path, need_answer=False) if heldout_path else None
    train, heldout = split_heldout(train, heldout, str(train_path))
    prompts = eval_prompts(cfg, heldout_path) if cfg.eval_file or cfg.train_file is None else heldout
    prompts = prompts[: cfg.eval_prompts]
    log, opt = metrics_log(run_dir), Optimizer([actor, critic], cfg, cfg.steps * cfg.ppo_epochs)
    kl_ctl = KLController(cfg.kl_coef, cfg.target_kl, horizon=max(cfg.steps * cfg.batch_size, 1))
    before = evaluate(actor, reference, tokenizer, prompts, cfg)
    log.write(dict(step=0) | (before.record() if before else {}))
    bar = step_bar(cfg)
    for step in range(1, cfg.steps + 1):
        records = [train[i] for i in batch_indices(len(train), cfg.batch_size, step - 1, cfg.seed)]
        record = dict(step=step) | ppo_step(cfg, models, records, opt, kl_ctl, cfg.seed * 100_003 + step)
        if cfg.eval_interval and step % cfg.eval_interval == 0 and step < cfg.steps:
            middle = evaluate(actor, reference, tokenizer, prompts, cfg)
            record |= middle.record() if middle else {}
        log.write(record)
        advance(bar, record)
    bar.close()
    after = evaluate(actor, reference, tokenizer, prompts, cfg)
    log.write(dict(step=cfg.steps) | (after.record() if after else {}))
    shared = weight_bytes([m for m in (actor, reference, reward_model, critic) if m is not None])
    rewarder = f"the reward model {cfg.reward_model}" if reward_model else "the task's checker"
    kl_kind = f"adaptive towards {cfg.target_kl:g} per reply" if cfg.target_kl else "fixed"
    extra = (
        f"{cfg.steps} rollout batches of {cfg.batch_size} prompts (temperature {cfg.temperature:g}), "
        f"{cfg.ppo_epochs} epochs each; rewards from {rewarder}; KL coefficient {cfg.kl_coef:g} ({kl_kind}, final "
        f"{kl_ctl.value:.4g}). Weights in memory for the four models: {shared / 2**20:.1f} MiB."
    )
    summary = write_report(run_dir, cfg, prompts, before, after, log.read(), extra)
    summary |= dict(weight_bytes=shared, final_kl_coef=kl_ctl.value)
    model, model_dir = publish_policy(cfg, actor, tokenizer)
    return AlignResult(run_dir, before, after, summary, model, model_dir)
