"""AdamW with weight decay on matrices only, and the learning-rate schedule: linear warmup, then cosine decay."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, decay_embeddings: bool = False) -> list[dict]:
    """Two AdamW groups: matrices (>= 2-D weights of linear layers) decay; norms, biases and, unless
    `decay_embeddings`, the embedding (and an LM head tied to it) do not. Each parameter is listed once."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() yields a tied weight once
        if not p.requires_grad:
            continue
        is_matrix = p.dim() >= 2 and (decay_embeddings or id(p) not in embeddings)
        (decay if is_matrix else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    decay_embeddings: bool = False,
) -> torch.optim.AdamW:
    """torch's AdamW over `param_groups`; the learning rate is set each step from `lr_at`. Its fused kernel (one pass
    per tensor instead of a dozen) where torch has one for the parameters' device, else the foreach one."""
    groups = param_groups(model, weight_decay, decay_embeddings)
    devices = {p.device.type for group in groups for p in group["params"]}
    fused = devices <= {"cpu", "cuda"} and all(p.is_floating_point() for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused, foreach=None if fused else True)


def lr_at(step: int, max_lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """The learning rate of optimizer step `step` (0-based): linear warmup from max_lr / warmup_steps to max_lr over
    `warmup_steps` steps, then a half cosine from max_lr down to min_lr at the last step."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    decay_steps = max(max_steps - warmup_steps - 1, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
