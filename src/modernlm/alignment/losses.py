"""The losses and estimators of alignment as pure functions of tensors (no model inside), each tested against an
independent reference (trl's DPO trainer, float64 formulas from the papers).

Shapes: B sequences (or pairs), T token positions of the "target frame": position t holds the log-prob of token t + 1
given tokens 0..t, so a (B, T) `mask` marks the response tokens (contiguous in each row, right after the prompt).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_LOSSES = ("sigmoid", "ipo", "simpo")


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) of each position: logits (B, T, V), targets (B, T) -> (B, T), in float32 at least."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked - torch.logsumexp(logits, dim=-1)  # (B, T)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def response_mean(x: torch.Tensor, mask: torch.Tensor, per_sequence: bool = False) -> torch.Tensor:
    """The mean of (B, T) `x` over the response tokens of the batch, or over each response's tokens and then over the
    responses (GRPO's 1/G sum_i 1/|o_i| sum_t)."""
    return masked_mean(x, mask, dim=1).mean() if per_sequence else masked_mean(x, mask)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked entries (the unbiased variance), as PPO normalises its advantages."""
    mean = masked_mean(x, mask)
    n = mask.sum().clamp(min=2)
    var = (((x - mean) * mask) ** 2).sum() / (n - 1)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean


# ---- preferences ---------------------------------------------------------------------------------------------------
def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r_chosen - r_rejected) per pair (B,): the negative log-likelihood of the preference under the
    Bradley-Terry model P(chosen > rejected) = sigmoid(r_c - r_r)."""
    return -F.logsigmoid(chosen - rejected)


def dpo_loss(
    policy_chosen: torch.Tensor,  # (B,) summed log-probs of the chosen responses under the policy
    policy_rejected: torch.Tensor,  # (B,)
    ref_chosen: torch.Tensor,  # (B,) under the reference
    ref_rejected: torch.Tensor,  # (B,)
    beta: float,
    loss_type: str = "sigmoid",
    chosen_tokens: torch.Tensor | None = None,  # (B,) response lengths: IPO and SimPO average per token
    rejected_tokens: torch.Tensor | None = None,
    gamma: float = 0.0,  # SimPO's target margin
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss per pair (B,), implicit reward of chosen (B,), of rejected (B,)).

    sigmoid (DPO, Rafailov et al. 2023): -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))); the implicit
    rewards are beta * (pi - ref). ipo (Azar et al. 2023): (h - 1 / (2 beta))^2 with h the difference of the per-token
    averaged log-ratios (trl's normalisation). simpo (Meng et al. 2024): -log sigmoid(beta * (avg pi_c - avg pi_r) -
    gamma), no reference (its rewards are beta * the average log-prob)."""
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"unknown preference loss {loss_type!r}; choose one of {', '.join(DPO_LOSSES)}")
    if loss_type == "simpo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("SimPO averages log-probs per token: give chosen_tokens and rejected_tokens")
        chosen = beta * policy_chosen / chosen_tokens.clamp(min=1)
        rejected = beta * policy_rejected / rejected_tokens.clamp(min=1)
        return -F.logsigmoid(chosen - rejected - gamma), chosen.detach(), rejected.detach()
    chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    if loss_type == "sigmoid":
        loss = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    else:
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("IPO averages the log-ratios per token: give chosen_tokens and rejected_tokens")
        h = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        loss = (h - 1 / (2 * beta)) ** 2
    return loss, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def chosen_nll(policy_chosen: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """The chosen responses' negative log-likelihood per token over the whole batch (a scalar): the SFT term that
    RPO (Pang et al. 2024) adds to DPO so that the chosen replies' likelihood rises instead of only the margin
    (trl's loss_type [..., "sft"] with loss_weights [1, w]). `policy_chosen` (B,) summed log-probs, `chosen_tokens`
    (B,) their lengths."""
    return -policy_chosen.sum() / chosen_tokens.sum().clamp(min=1)


# ---- policy gradients ----------------------------------------------------------------------------------------------
def kl_rewards(
    score: torch.Tensor,  # (B,) the reward of each whole response
    logps: torch.Tensor,  # (B, T) the actor's log-probs of the sampled tokens
    ref_logps: torch.Tensor,  # (B, T) the reference's
    mask: torch.Tensor,  # (B, T) response tokens
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's per-token rewards (Ziegler et al. 2019, InstructGPT): -kl_coef * (log pi - log pi_ref) at every response
    token, plus the score at the last one. Returns (rewards (B, T), per-token KL estimate (B, T)), zero off the mask."""
    mask = mask.to(logps.dtype)
    kl = (logps - ref_logps) * mask  # (B, T)
    rewards = -kl_coef * kl
    last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(dim=1)  # (B,) index of the last token
    rewards[torch.arange(len(score)), last] += score.to(rewards.dtype)
    return rewards, kl


def gae(
    rewards: torch.Tensor,  # (B, T)
    values: torch.Tensor,  # (B, T) the critic's V(s_t)
    mask: torch.Tensor,  # (B, T) response tokens, contiguous; the state after the last one is terminal
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016): delta_t = r_t + gamma V(s_t+1) - V(s_t),
    A_t = delta_t + gamma lam A_t+1, with V = 0 and A = 0 past the end. Returns (advantages, returns = A + V), zero
    off the mask."""
    mask = mask.to(values.dtype)
    B, T = rewards.shape
    advantages = torch.zeros_like(values)
    next_value = torch.zeros(B, dtype=values.dtype, device=values.device)
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        advantages[:, t] = adv * mask[:, t]
        next_value, next_adv = values[:, t] * mask[:, t], advantages[:, t]
    return advantages, (advantages + values) * mask


def ppo_policy_loss(
    logps: torch.Tensor,  # (B, T) current policy
    old_logps: torch.Tensor,  # (B, T) the policy that sampled the rollout
    advantages: torch.Tensor,  # (B, T)
    mask: torch.Tensor,  # (B, T)
    clip: float = 0.2,
    per_sequence: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (Schulman et al. 2017): -min(rho A, clip(rho, 1-eps, 1+eps) A), rho = pi / pi_old,
    averaged over the response tokens of the batch, or with `per_sequence` over each response's tokens and then over
    the responses (GRPO's 1/G sum_i 1/|o_i| sum_t, Shao et al. 2024, eq. 3: a short reply's tokens weigh more). Its
    gradient is zero where the clipped term is the smaller one. Returns (loss, fraction of tokens clipped)."""
    ratio = torch.exp(logps - old_logps)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip, 1 + clip) * advantages
    surrogate = -torch.minimum(unclipped, clipped)  # (B, T)
    loss = response_mean(surrogate, mask, per_sequence)
    clip_fraction = masked_mean((clipped < unclipped).float(), mask)
    return loss, clip_fraction.detach()


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> torch.Tensor:
    """0.5 * max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2), averaged over the response tokens."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """GRPO (Shao et al. 2024): each response's reward minus its group's mean, over the group's standard deviation
    (unbiased, + eps). rewards (N * G,), the G responses of each prompt adjacent -> (N * G,)."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.view(-1, group_size)  # (N, G)
    std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped[:, :1])
    return ((grouped - grouped.mean(dim=1, keepdim=True)) / (std + eps)).view(-1)  # (N * G,)


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Schulman's unbiased, non-negative per-token estimator of KL(pi || pi_ref) on samples of pi:
    exp(ref - logp) - (ref - logp) - 1 (GRPO's KL term)."""
    d = ref_logps - logps
    return torch.exp(d) - d - 1


class KLController:
    """The KL coefficient: fixed, or adaptive (Ziegler et al. 2019): after each batch with mean KL `kl`, the
    coefficient is multiplied by 1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon."""

    def __init__(self, coef: float, target: float | None = None, horizon: int = 10000) -> None:
        self.value, self.target, self.horizon = coef, target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.target is not None:
            error = min(max(kl / self.target - 1, -0.2), 0.2)
            self.value *= 1 + error * n / self.horizon
