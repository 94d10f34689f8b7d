"""Alignment losses against independent references: trl's DPO trainer (its own loss code, called on fixed per-token
log-probs), and float64 formulas written out from the papers."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from modernlm.alignment.losses import (
    KLController,
    bradley_terry_loss,
    chosen_nll,
    dpo_loss,
    gae,
    group_advantages,
    kl_k3,
    kl_rewards,
    ppo_policy_loss,
    ppo_value_loss,
    token_logps,
)


def _trl_dpo(per_token: torch.Tensor, mask: torch.Tensor, ref_c, ref_r, beta: float, loss_type: str, sft: float = 0):
    """trl 1.16's DPOTrainer._compute_loss on a model stub whose forward returns the given per-token log-probs
    (rows: the chosen then the rejected responses). Returns (loss, rewards/chosen, rewards/rejected) as trl logs."""
    from trl.trainer.dpo_trainer import DPOTrainer

    trainer = DPOTrainer.__new__(DPOTrainer)  # no model, datasets or accelerate setup: only the loss's attributes
    gather = lambda x: x  # noqa: E731  (one process)
    n = per_token.shape[1]
    outputs = SimpleNamespace(
        log_probs=per_token,
        entropy=torch.zeros_like(per_token),
        mean_logits=torch.zeros_like(per_token),
        is_top1=torch.zeros_like(per_token, dtype=torch.bool),
    )
    model = lambda **kw: outputs  # noqa: E731
    trainer.__dict__.update(
        model=SimpleNamespace(training=True),
        accelerator=SimpleNamespace(device="cpu", gather_for_metrics=gather, gather=gather),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=[loss_type] + ["sft"] * bool(sft), loss_weights=[1.0] + [sft] * bool(sft), beta=beta,
        use_weighting=False, label_smoothing=0.0,
        _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip
    completion = torch.cat([torch.zeros(mask.shape[0], 1, dtype=torch.long), mask.long()], dim=1)  # (2B, n + 1)
    inputs = dict(
        input_ids=torch.zeros(mask.shape[0], n + 1, dtype=torch.long),
        attention_mask=torch.ones(mask.shape[0], n + 1, dtype=torch.long),
        completion_mask=completion,
        ref_chosen_logps=ref_c,
        ref_rejected_logps=ref_r,
    )
    loss = trainer._compute_loss(model, inputs, return_outputs=False)
    metrics = trainer._metrics["train"]
    return loss, metrics["rewards/chosen"][0], metrics["rewards/rejected"][0]


def _fixed_logps(B: int = 4, T: int = 6):
    g = torch.Generator().manual_seed(0)
    per_token = -torch.rand(2 * B, T, generator=g) * 3  # (2B, T): chosen rows, then rejected rows
    lengths = torch.tensor([6, 3, 5, 1, 2, 6, 4, 3])
    mask = torch.arange(T)[None] < lengths[:, None]  # (2B, T)
    per_token = per_token * mask  # trl's stub log-probs are zero off the completion (its fused head masks them)
    ref_c, ref_r = -torch.rand(B, generator=g) * 10, -torch.rand(B, generator=g) * 10
    return per_token, mask, ref_c, ref_r, lengths


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_loss_equals_trl(loss_type):
    per_token, mask, ref_c, ref_r, lengths = _fixed_logps()
    pi = per_token.sum(1)
    B = len(ref_c)
    loss, rc, rr = dpo_loss(pi[:B], pi[B:], ref_c, ref_r, 0.1, loss_type, lengths[:B], lengths[B:])
    trl_loss, trl_rc, trl_rr = _trl_dpo(per_token, mask, ref_c, ref_r, 0.1, loss_type)
    torch.testing.assert_close(loss.mean(), trl_loss)
    assert rc.mean().item() == pytest.approx(trl_rc, rel=1e-6)
    assert rr.mean().item() == pytest.approx(trl_rr, rel=1e-6)


def test_dpo_with_an_sft_term_equals_trl():
    """RPO: DPO plus the chosen replies' token NLL, trl's loss_type ["sigmoid", "sft"] with loss_weights [1, w]."""
    per_token, mask, ref_c, ref_r, lengths = _fixed_logps()
    pi = per_token.sum(1)
    B = len(ref_c)
    loss, _, _ = dpo_loss(pi[:B], pi[B:], ref_c, ref_r, 0.1, "sigmoid")
    ours = loss.mean() + 0.7 * chosen_nll(pi[:B], lengths[:B])
    torch.testing.assert_close(ours, _trl_dpo(per_token, mask, ref_c, ref_r, 0.1, "sigmoid", sft=0.7)[0])
    by_hand = -per_token[:B][mask[:B]].double().mean()  # float64: the mean over every chosen token of the batch
    assert chosen_nll(pi[:B], lengths[:B]).item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_dpo_loss_equals_the_formula_in_float64():
    per_token, _, ref_c, ref_r, lengths = _fixed_logps()
    pi = per_token.double().sum(1)
    B, beta = len(ref_c), 0.3
    loss, rc, rr = dpo_loss(pi[:B], pi[B:], ref_c.double(), ref_r.double(), beta)
    for i in range(B):
        margin = beta * ((pi[i] - ref_c[i].double()) - (pi[B + i] - ref_r[i].double()))
        assert loss[i].item() == pytest.approx(math.log1p(math.exp(-margin.item())), rel=1e-12)
        assert rc[i].item() == pytest.approx(beta * (pi[i] - ref_c[i].double()).item(), rel=1e-12)
    # SimPO (Meng et al. 2024, eq. 6): no reference, per-token averages, a target margin gamma
    loss, _, _ = dpo_loss(pi[:B], pi[B:], None, None, 2.0, "simpo", lengths[:B], lengths[B:], gamma=0.5)
    for i in range(B):
        z = 2.0 * (pi[i] / lengths[i] - pi[B + i] / lengths[B + i]).item() - 0.5
        assert loss[i].item() == pytest.approx(math.log1p(math.exp(-z)), rel=1e-12)


def test_dpo_loss_refuses_unknown_kinds_and_missing_lengths():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="unknown preference loss"):
        dpo_loss(x, x, x, x, 0.1, "kto")
    with pytest.raises(ValueError, match="chosen_tokens"):
        dpo_loss(x, x, x, x, 0.1, "ipo")


def test_bradley_terry_and_token_logps():
    c, r = torch.tensor([2.0, -1.0], dtype=torch.float64), torch.tensor([0.5, 1.0], dtype=torch.float64)
    expected = [-math.log(1 / (1 + math.exp(-(a - b)))) for a, b in zip(c.tolist(), r.tolist(), strict=True)]
    torch.testing.assert_close(bradley_terry_loss(c, r), torch.tensor(expected, dtype=torch.float64))
    logits = torch.randn(2, 3, 7)
    targets = torch.randint(0, 7, (2, 3))
    expected = torch.log_softmax(logits.double(), -1).gather(-1, targets[..., None])[..., 0].float()
    torch.testing.assert_close(token_logps(logits, targets), expected)


def _gae_reference(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """Advantages of one trajectory, float64, by the definition: A_t = sum_l (gamma lam)^l delta_{t+l}."""
    T = len(rewards)
    v = values + [0.0]  # the state after the last token is terminal
    deltas = [rewards[t] + gamma * v[t + 1] - v[t] for t in range(T)]
    return [sum((gamma * lam) ** k * deltas[t + k] for k in range(T - t)) for t in range(T)]


def test_gae_equals_a_float64_reference_on_hand_built_trajectories():
    # two rows in the target frame: prompt positions (masked), the response, then padding (masked)
    rewards = torch.tensor([[9.0, 0.1, -0.2, 0.3, 1.0, 7.0], [5.0, 5.0, 0.5, 2.0, 0.0, 0.0]], dtype=torch.float64)
    values = torch.tensor([[3.0, 0.2, 0.4, -0.1, 0.6, 8.0], [1.0, 1.0, 0.3, -0.7, 4.0, 4.0]], dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0]], dtype=torch.bool)
    for gamma, lam in [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)]:
        adv, ret = gae(rewards, values, mask, gamma, lam)
        for b in range(2):
            idx = mask[b].nonzero()[:, 0].tolist()
            expected = _gae_reference(rewards[b, idx].tolist(), values[b, idx].tolist(), gamma, lam)
            torch.testing.assert_close(adv[b, idx], torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
            torch.testing.assert_close(ret[b, idx], adv[b, idx] + values[b, idx])
        assert (adv[~mask] == 0).all() and (ret[~mask] == 0).all()


def test_ppo_clipped_objective_has_zero_gradient_outside_the_clip():
    old = torch.zeros(1, 6, dtype=torch.float64)
    # ratios 0.5, 0.9, 1.1, 1.5, 0.5, 1.5 with advantages +, +, -, +, -, -
    logps = torch.log(torch.tensor([[0.5, 0.9, 1.1, 1.5, 0.5, 1.5]], dtype=torch.float64)).requires_grad_(True)
    adv = torch.tensor([[1.0, 2.0, -1.0, 3.0, -2.0, -1.0]], dtype=torch.float64)
    mask = torch.ones(1, 6, dtype=torch.bool)
    loss, clip_fraction = ppo_policy_loss(logps, old, adv, mask, clip=0.2)
    loss.backward()
    grad = logps.grad[0]
    # inside the clip, or outside on the side where min() keeps the unclipped term: d/dlogp = -A * ratio / n
    ratio = torch.exp(logps.detach()[0])
    for i, clipped in enumerate([False, False, False, True, True, False]):
        if clipped:  # ratio 1.5 > 1.2 with A > 0; ratio 0.5 < 0.8 with A < 0: the objective is flat there
            assert grad[i] == 0
        else:
            assert grad[i].item() == pytest.approx((-adv[0, i] * ratio[i] / 6).item(), rel=1e-12)
    assert clip_fraction.item() == pytest.approx(2 / 6)


def test_grpo_per_sequence_mean_is_the_papers_double_average():
    """Shao et al. 2024, eq. 3: 1/G sum_i 1/|o_i| sum_t min(rho A, clip(rho) A), written out in float64 loops."""
    g = torch.Generator().manual_seed(3)
    old = -torch.rand(3, 5, generator=g, dtype=torch.float64)
    logps = old + 0.4 * torch.randn(3, 5, generator=g, dtype=torch.float64)
    adv = torch.randn(3, 1, generator=g, dtype=torch.float64).expand(3, 5)
    mask = torch.tensor([[0, 1, 1, 1, 1], [0, 0, 1, 0, 0], [0, 1, 1, 0, 0]], dtype=torch.bool)
    total = 0.0
    for i in range(3):
        tokens = [t for t in range(5) if mask[i, t]]
        terms = []
        for t in tokens:
            rho = math.exp(logps[i, t].item() - old[i, t].item())
            terms.append(min(rho * adv[i, t].item(), min(max(rho, 0.8), 1.2) * adv[i, t].item()))
        total += sum(terms) / len(tokens)
    loss, _ = ppo_policy_loss(logps, old, adv, mask, 0.2, per_sequence=True)
    assert loss.item() == pytest.approx(-total / 3, rel=1e-12)
    batch, _ = ppo_policy_loss(logps, old, adv, mask, 0.2)
    assert batch.item() != pytest.approx(loss.item())  # the token-level mean weighs the long reply more


def test_ppo_value_loss_takes_the_larger_of_clipped_and_unclipped():
    v, old, ret = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.1]])
    loss = ppo_value_loss(v, old, ret, torch.ones(1, 2), clip=0.2)
    assert loss.item() == pytest.approx(0.5 * ((0.2 - 2.0) ** 2 + 0.1**2) / 2)


def test_kl_rewards_put_the_score_on_the_last_response_token():
    logps = torch.tensor([[0.0, -1.0, -2.0, 0.0], [0.0, -0.5, 0.0, 0.0]])
    ref = torch.tensor([[0.0, -1.5, -1.0, 0.0], [0.0, -0.25, 0.0, 0.0]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0]], dtype=torch.bool)
    rewards, kl = kl_rewards(torch.tensor([1.0, 2.0]), logps, ref, mask, kl_coef=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.0, 0.5, -1.0, 0.0], [0.0, -0.25, 0.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[0.0, -0.05, 1.1, 0.0], [0.0, 2.025, 0.0, 0.0]]))


def test_group_advantages_and_kl_estimator():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5], dtype=torch.float64)
    adv = group_advantages(r, 4)
    first = r[:4]
    expected = (first - first.mean()) / (math.sqrt(((first - first.mean()) ** 2).sum().item() / 3) + 1e-4)
    torch.testing.assert_close(adv[:4], expected)
    assert (adv[4:] == 0).all()  # a group whose rewards are all equal teaches nothing
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(r, 3)
    p, q = torch.tensor([0.7, 0.3], dtype=torch.float64), torch.tensor([0.4, 0.6], dtype=torch.float64)
    exact = (p * (p / q).log()).sum()  # KL(p || q); the k3 estimator's expectation under p equals it
    assert (p * kl_k3(p.log(), q.log())).sum().item() == pytest.approx(exact.item(), rel=1e-12)


def test_adaptive_kl_controller():
    fixed = KLController(0.1)
    fixed.update(5.0, 8)
    assert fixed.value == 0.1
    adaptive = KLController(0.1, target=1.0, horizon=100)
    adaptive.update(5.0, 10)  # far above the target: the error clips at +0.2
    assert adaptive.value == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    adaptive.update(0.9, 10)
    assert adaptive.value == pytest.approx(0.1 * 1.02 * (1 - 0.1 * 10 / 100))


def test_ppo_memory_counts_two_frozen_bases_and_adapters_against_four_models():
    from modernlm.alignment.memory import ppo_memory
    from modernlm.analysis.params import adapter_parameters, parameter_counts
    from modernlm.config import preset

    cfg = preset("llama-tiny")
    adapters = {"q_proj": 8, "v_proj": 8}
    report = ppo_memory(cfg, 2, 32, adapters, precision="fp32")
    full, shared = report["four full models"], report["shared frozen bases + LoRA"]
    n, a = parameter_counts(cfg)["total"], adapter_parameters(cfg, adapters) + cfg.d_model  # + the value head
    assert full["weights"] == 4 * 4 * n and full["gradients"] == 2 * 4 * n and full["optimizer_states"] == 2 * 8 * n
    assert shared["weights"] == 2 * 4 * n + 2 * 4 * a and shared["gradients"] == 2 * 4 * a
    assert shared["optimizer_states"] == 2 * 8 * a and shared["total"] < full["total"]
