"""DPO (Rafailov et al. 2023), and IPO / SimPO as loss options, on preference pairs: the policy's log-ratio to a
frozen reference, with the reference's log-probs computed once before training (with LoRA the reference is the base
without adapters, and before the first step the policy equals it)."""

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
    say,
    start_run,
    step_bar,
)
from .config import AlignConfig
from .data import EncodedPair, _pad_id, batch_indices, encode_pairs, pack, read_pairs, sequence_logps, split_heldout
from .losses import chosen_nll, dpo_loss
from .report import write_report


def pair_logps(model, pairs: list[EncodedPair], pad_id: int) -> tuple[torch.Tensor, ...]:
    """(chosen (B,), rejected (B,)) summed response log-probs and (chosen, rejected) response lengths (B,)."""
    prompts = [p.prompt for p in pairs] * 2
    ids, mask = pack(prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    sums, lengths = sequence_logps(model, ids, mask).sum(1), mask.sum(1)
    B = len(pairs)
    return sums[:B], sums[B:], lengths[:B], lengths[B:]


@torch.no_grad()
def reference_logps(
    policy, reference, pairs: list[EncodedPair], pad_id: int, needed: list[int] | None = None, batch_size: int = 16
) -> torch.Tensor:
    """(N, 2) summed log-probs of the chosen and rejected responses under the reference, computed once, before
    training; only for the pairs `needed` (default all; the others are NaN, so a stray use shows)."""
    needed = list(range(len(pairs))) if needed is None else needed
    out = torch.full((len(pairs), 2), float("nan"))
    with as_reference(policy, reference) as ref:
        for i in range(0, len(needed), batch_size):
            idx = needed[i : i + batch_size]
            c, r, _, _ = pair_logps(ref, [pairs[j] for j in idx], pad_id)
            out[idx] = torch.stack([c, r], dim=1).float().cpu()
    return out


def _loss(cfg: AlignConfig, policy, pairs, ref: torch.Tensor, pad_id: int):
    """(loss per pair (B,), implicit rewards of chosen and rejected (B,)); with `sft_weight` every pair also carries
    the batch's chosen-token NLL times the weight (so the batch mean is trl's combined loss)."""
    c, r, nc, nr = pair_logps(policy, pairs, pad_id)
    loss, rc, rr = dpo_loss(c, r, ref[:, 0], ref[:, 1], cfg.beta, cfg.loss_type, nc, nr, cfg.simpo_gamma)
    if cfg.sft_weight:
        loss = loss + cfg.sft_weight * chosen_nll(c, nc)
    return loss, rc, rr


@torch.no_grad()
def preference_accuracy(cfg: AlignConfig, policy, pairs, ref: torch.Tensor, pad_id: int) -> tuple[float, float]:
    """(mean loss, fraction of held-out pairs whose implicit reward ranks chosen above rejected)."""
    losses, wins = [], []
    for i in range(0, len(pairs), 16):
        loss, rc, rr = _loss(cfg, policy, pairs[i : i + 16], ref[i : i + 16], pad_id)
        losses.append(loss)
        wins.append(rc > rr)
    return float(torch.cat(losses).mean()), float(torch.cat(wins).float().mean())


def train_dpo(cfg: AlignConfig) -> AlignResult:
    run_dir = start_run(cfg)
    train_path, heldout_path = data_files(cfg, "pairs")
    tokenizer, policy, reference = load_policy(cfg)
    heldout_pairs = read_pairs(heldout_path) if heldout_path else None
    train = encode_pairs(tokenizer, read_pairs(train_path), str(train_path))
    heldout = encode_pairs(tokenizer, heldout_pairs, str(heldout_path)) if heldout_pairs else None
    train, heldout = split_heldout(train, heldout, str(train_path))
    prompts, heldout = eval_prompts(cfg, heldout_path, heldout_pairs), heldout[: cfg.eval_pairs]
    pad = _pad_id(tokenizer)
    used = sorted({i for step in range(cfg.steps) for i in batch_indices(len(train), cfg.batch_size, step, cfg.seed)})
    say(cfg, f"scoring {len(used)} training and {len(heldout)} held-out pairs with the reference")
    ref_train = reference_logps(policy, reference, train, pad, used)  # only the pairs the steps will see
    ref_heldout = reference_logps(policy, reference, heldout, pad)
    log, opt = metrics_log(run_dir), Optimizer([policy], cfg)
    before = evaluate(policy, reference, tokenizer, prompts, cfg)
    loss0, acc0 = preference_accuracy(cfg, policy, heldout, ref_heldout, pad)
    log.write(dict(step=0, pair_loss=loss0, pair_accuracy=acc0) | (before.record() if before else {}))
    bar = step_bar(cfg)
    for step in range(1, cfg.steps + 1):
        idx = batch_indices(len(train), cfg.batch_size, step - 1, cfg.seed)
        losses, rc, rr = _loss(cfg, policy, [train[i] for i in idx], ref_train[idx], pad)
        grad_norm = opt.step(losses.mean())
        record = dict(step=step, loss=losses.mean().item(), reward=float(rc.mean() - rr.mean()))
        record |= dict(accuracy=float((rc > rr).float().mean()), grad_norm=grad_norm)
        if cfg.eval_interval and step % cfg.eval_interval == 0 and step < cfg.steps:
            record["pair_loss"], record["pair_accuracy"] = preference_accuracy(cfg, policy, heldout, ref_heldout, pad)
        log.write(record)
        advance(bar, record)
    bar.close()
    after = evaluate(policy, reference, tokenizer, prompts, cfg)
    loss1, acc1 = preference_accuracy(cfg, policy, heldout, ref_heldout, pad)
    log.write(dict(step=cfg.steps, pair_loss=loss1, pair_accuracy=acc1) | (after.record() if after else {}))
    extra = (
        f"{cfg.loss_type} loss, beta={cfg.beta:g}"
        + (f" + {cfg.sft_weight:g} x the chosen replies' token NLL (RPO)" if cfg.sft_weight else "")
        + f"; {cfg.steps} steps of {cfg.batch_size} pairs. Held-out pairs "
        f"({len(heldout)}): loss {loss0:.4f} -> {loss1:.4f}, implicit-reward accuracy {acc0:.3f} -> {acc1:.3f} (ties "
        "count as wrong; at the start every pair ties)."
    )
    summary = write_report(run_dir, cfg, prompts, before, after, log.read(), extra)
    summary |= dict(pair_loss_before=loss0, pair_loss_after=loss1, pair_accuracy_before=acc0, pair_accuracy_after=acc1)
    model, model_dir = publish_policy(cfg, policy, tokenizer)
    return AlignResult(run_dir, before, after, summary, model, model_dir)
