"""The causal-mask leak: a language model trained without the causal mask sees the token it must predict, so its
training loss collapses toward zero; at generation the future does not exist yet, so what it learned (copy the next
token) is useless: its loss at the last position of a window, where no future is visible, and its text show it."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from . import Finding, experiment
from ._seeds import difference, pm, rule, seeds
from ._train import corpus, one_thread, smooth, tiny_config, train


@one_thread()
@torch.no_grad()
def _last_position_loss(model, T: int, windows: int = 32) -> float:
    """Mean loss of predicting the byte after each of `windows` held-out windows of T bytes (no future visible)."""
    model.eval()
    data = corpus()[1]
    starts = torch.linspace(0, len(data) - T - 2, windows).long().tolist()
    ids = torch.stack([data[s : s + T + 1] for s in starts])  # (W, T + 1)
    return float(F.cross_entropy(model(ids[:, :-1])[:, -1], ids[:, -1]))


@one_thread()
@torch.no_grad()
def _greedy(model, prompt: bytes, n: int) -> str:
    """n greedy bytes by full recomputation (the model's own mask, leaky or not, applies)."""
    model.eval()
    ids = torch.tensor([list(prompt)])  # (1, T)
    for _ in range(n):
        ids = torch.cat([ids, model(ids)[:, -1:].argmax(-1)], dim=1)
    return bytes(ids[0, len(prompt) :].tolist()).decode("utf-8", errors="replace")


@experiment(
    "causal-mask-leak",
    "A decoder trained without the causal mask cheats: its training loss falls toward zero, but it cannot generate",
    "study cards on causal masking; Radford et al. 2018 (GPT), Vaswani et al. 2017 section 3.2.3",
)
def causal_mask_leak(quick: bool) -> Finding:
    steps, B, T = (80, 8, 64) if quick else (400, 16, 64)
    cfg = tiny_config(d_model=64, n_layers=2)
    leaky = replace(cfg, causal=False)
    seed_list = seeds(quick)
    res, curves = {}, {}
    for label, c in (("causal", cfg), ("no mask", leaky)):
        runs = [train(c, steps, batch_size=B, seed=s) for s in seed_list]
        curves[label] = runs[0].losses
        res[label] = dict(
            train_losses=[smooth(r.losses) for r in runs],
            last_position_losses=[_last_position_loss(r.model, T) for r in runs],
            text=_greedy(runs[0].model, b"def __init__(self", 40 if quick else 80),
        )
    leak, causal = res["no mask"], res["causal"]
    cheat = difference(causal["train_losses"], leak["train_losses"])  # > 0: the leaky model's training loss is lower
    lie = difference(leak["last_position_losses"], leak["train_losses"])  # > 0: it does not hold without a future
    cheats = cheat.sign > 0 and cheat.mean > 0.3  # far lower training loss than the honest model
    lies = lie.sign > 0 and lie.mean > 0.5
    verdict = "confirmed" if cheats and lies else "refuted" if not cheats else "depends"
    summary = (
        f"The same 2-layer byte model trained {steps} steps of {B} x 64 bytes with and without the causal mask "
        f"(the mask removed with ModelConfig(causal=False)), {len(seed_list)} seeds. "
        "Training loss (last 10 steps): "
        f"causal {pm(causal['train_losses'])}, no mask {pm(leak['train_losses'])} nats/byte (causal minus no mask "
        f"{cheat.text()}). Loss of the next byte after held-out windows of {T} bytes, where no future is visible: "
        f"causal {pm(causal['last_position_losses'])}, no mask {pm(leak['last_position_losses'])} (no mask, there "
        f"minus in training: {lie.text()}): the leaky model's low training loss "
        + ("does not carry over to prediction" if lies else "partly carries over")
        + f". Greedy text after 'def __init__(self' (seed {seed_list[0]}): causal {causal['text']!r}; "
        f"no mask {leak['text']!r}. "
        + rule(len(seed_list))
        + " Cheating needs the gap to count and exceed 0.3 nats, failing to predict 0.5 nats."
    )

    def plot(fig):
        ax1, ax2 = fig.subplots(1, 2)
        for label, curve in curves.items():
            ax1.plot(curve, label=label, lw=0.8)
        ax1.set_xlabel("step")
        ax1.set_ylabel("training loss")
        ax1.legend()
        labels = list(res)
        ax2.bar(labels, [sum(res[k]["last_position_losses"]) / len(seed_list) for k in labels])
        ax2.set_ylabel("loss at the last position (no future visible)")

    numbers = dict(steps=steps, seeds=seed_list, runs=res, curves=curves, rule=rule(len(seed_list)))
    return Finding(verdict, summary, dict(numbers, cheat=cheat.to_dict(), fails_to_predict=lie.to_dict()), plot)
