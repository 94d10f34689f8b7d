"""Rollouts for GRPO and PPO: prompts answered by sampling from the current policy, packed for scoring."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..generation import generate
from . import task
from .data import PromptRecord, _pad_id, encode_prompt, pack, reply_texts


@dataclass
class Rollout:
    ids: torch.Tensor  # (N, L) prompt + response, right-padded
    mask: torch.Tensor  # (N, L - 1) response tokens in the target frame
    texts: list[str]  # the decoded replies (EOS dropped)
    answers: list[str | None]

    def task_rewards(self) -> torch.Tensor:
        """(N,) the task checker's reward of each reply."""
        missing = [i for i, a in enumerate(self.answers) if a is None]
        if missing:
            raise ValueError(
                f"prompt {missing[0]} has no answer for the task's checker; give answers or a reward model"
            )
        return torch.tensor([task.reward(t, a) for t, a in zip(self.texts, self.answers, strict=True)])


@torch.no_grad()
def sample(policy, tokenizer, records: list[PromptRecord], per_prompt: int, cfg, seed: int) -> Rollout:
    """`per_prompt` sampled replies to each record (adjacent), at the config's temperature and length."""
    policy.eval()
    prompts = [encode_prompt(tokenizer, r.prompt) for r in records for _ in range(per_prompt)]
    eos = tokenizer.eos_token_id
    replies = generate(policy, prompts, cfg.max_new_tokens, temperature=cfg.temperature, eos_token_id=eos, seed=seed)
    texts = reply_texts(tokenizer, replies)
    ids, mask = pack(prompts, replies, _pad_id(tokenizer))
    answers = [r.answer for r in records for _ in range(per_prompt)]
    return Rollout(ids, mask, texts, answers)
