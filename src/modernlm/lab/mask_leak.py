"""The causal-mask leak: a language model trained without the causal mask sees the token it must predict, so its
training loss collapses toward zero; at generation the future does not exist yet, so what it learned (copy the next
token) is useless: its loss at the last position of a window, where no future is visible, and its text show it."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from . import Finding, experiment
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
    steps, B, T = (100, 8, 64) if quick else (400, 16, 64)
    cfg = tiny_config(d_model=64, n_layers=2)
    leaky = replace(cfg, causal=False)
    runs = {"causal": train(cfg, steps, batch_size=B), "no mask": train(leaky, steps, batch_size=B)}
    res = {}
    for label, run in runs.items():
        res[label] = dict(
            train_loss=smooth(run.losses),
            last_position_loss=_last_position_loss(run.model, T),
            text=_greedy(run.model, b"def __init__(self", 40 if quick else 80),
        )
    leak, causal = res["no mask"], res["causal"]
    cheats = leak["train_loss"] < causal["train_loss"] - 0.3  # far lower training loss than the honest model
    lies = leak["last_position_loss"] - leak["train_loss"] > 0.5  # and it does not hold where no future is visible
    verdict = "confirmed" if cheats and lies else "refuted" if not cheats else "depends"
    summary = (
        f"The same 2-layer byte model trained {steps} steps of {B} x 64 bytes with and without the causal mask "
        "(the mask removed with ModelConfig(causal=False)). "
        "Training loss (last 10 steps): "
        f"causal {causal['train_loss']:.3f}, no mask {leak['train_loss']:.3f} nats/byte. Loss of the next byte after "
        f"held-out windows of {T} bytes, where no future is visible: causal {causal['last_position_loss']:.3f}, no "
        f"mask {leak['last_position_loss']:.3f}: the leaky model's low training loss "
        + ("does not carry over to prediction" if lies else "partly carries over")
        + f". Greedy text after 'def __init__(self': causal {causal['text']!r}; "
        f"no mask {leak['text']!r}."
    )

    def plot(fig):
        ax1, ax2 = fig.subplots(1, 2)
        for label, run in runs.items():
            ax1.plot(run.losses, label=label, lw=0.8)
        ax1.set_xlabel("step")
        ax1.set_ylabel("training loss")
        ax1.legend()
        labels = list(res)
        ax2.bar(labels, [res[k]["last_position_loss"] for k in labels])
        ax2.set_ylabel("loss at the last position (no future visible)")

    return Finding(verdict, summary, dict(steps=steps, runs=res, curves={k: r.losses for k, r in runs.items()}), plot)
