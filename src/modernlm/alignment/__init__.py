"""Alignment, the post-training stage after SFT: a reward model (Bradley-Terry), DPO (and IPO, SimPO), GRPO and
PPO with its four models, on a task built by code whose improvement is measured (task.py)."""

from __future__ import annotations

from .config import AlignConfig


def run_method(cfg: AlignConfig):
    """Run `cfg.method`: a RewardResult for "reward", an AlignResult otherwise."""
    from importlib import import_module

    module, name = {
        "reward": ("reward", "train_reward"),
        "dpo": ("dpo", "train_dpo"),
        "grpo": ("grpo", "train_grpo"),
        "ppo": ("ppo", "train_ppo"),
    }[cfg.validate().method]
    return getattr(import_module(f".{module}", __package__), name)(cfg)


__all__ = ["AlignConfig", "run_method"]
