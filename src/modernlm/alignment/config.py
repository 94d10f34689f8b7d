"""AlignConfig: one alignment run (reward model, DPO, GRPO or PPO) as plain, serialisable fields.

Each method reads the shared fields and its own (`METHOD_FIELDS`); a method's field set to a non-default value in a
run of another method is refused (it would be silently ignored). `train_file`/`heldout_file` None write the shipped
arithmetic task (task.py) into the run directory and use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from ..checkpoints.sources import DEFAULT_MODEL
from ..fields import check_fields
from ..finetune.lora import ATTENTION_TARGETS, LoraConfig
from ..training.config import JsonConfig
from .losses import DPO_LOSSES

CONFIG_NAME = "align_config.json"
METHODS = ("reward", "dpo", "grpo", "ppo")
SHARED = {
    "method", "base", "train_file", "heldout_file", "out_dir", "lora", "r", "alpha", "targets", "lr",
    "steps", "batch_size", "seed", "eval_interval", "num_threads", "progress",
}  # fmt: skip
# the held-out replies of a policy (not a reward model's run), and the sampling of them and of rollouts
ANSWERS = {"eval_file", "eval_prompts", "eval_samples", "compare", "max_new_tokens", "temperature"}
ROLLOUT = {"kl_coef", "clip", "ppo_epochs"}
METHOD_FIELDS = {
    "reward": SHARED | {"eval_pairs"},
    "dpo": SHARED | ANSWERS | {"eval_pairs", "beta", "loss_type", "simpo_gamma", "sft_weight"},
    "grpo": SHARED | ANSWERS | ROLLOUT | {"group_size", "token_mean"},
    "ppo": SHARED | ANSWERS | ROLLOUT | {"reward_model", "target_kl", "value_clip", "vf_coef", "gamma", "lam"},
}


class AlignConfigError(ValueError):
    """An alignment setting that cannot work; the message names the field and the fix."""


@dataclass
class AlignConfig(JsonConfig):
    """`base`: the policy to align (any `load_model` source; an SFT model), or the reward model's starting point.
    `reward_model` (PPO): a directory written by `modernlm align reward`; None scores with the task's checker."""

    WHAT = "alignment config"

    method: str = "dpo"
    base: str = DEFAULT_MODEL
    train_file: str | None = None  # pairs (reward, dpo) or prompts (grpo, ppo) JSONL; None: the shipped task
    heldout_file: str | None = None
    eval_file: str | None = None  # held-out {"prompt", "answer"} JSONL scored by the task; None: the task's or none
    out_dir: str | None = None  # None: runs/align-<method>
    lora: bool = True  # LoRA adapters over the frozen base (the reference is the base without them), or every weight
    r: int = 8
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: list(ATTENTION_TARGETS))
    lr: float = 5e-4
    steps: int = 40  # optimizer steps (PPO, GRPO: rollout batches)
    batch_size: int = 8  # pairs, or prompts per rollout batch
    seed: int = 0
    eval_prompts: int = 32  # held-out prompts answered greedily before and after
    eval_samples: int = 0  # and, when > 0, this many replies sampled per prompt (at `temperature`) and scored
    compare: int = 6  # of them shown side by side in before_after.md
    eval_pairs: int = 96  # held-out pairs scored before and after (reward, dpo)
    eval_interval: int = 10  # steps between held-out evaluations (0: only before and after)
    num_threads: int | None = None
    progress: bool = True  # each phase said as it starts and a bar over the steps, on stderr
    max_new_tokens: int = 16
    # DPO
    beta: float = 0.1
    loss_type: str = "sigmoid"  # sigmoid (DPO), ipo, simpo
    simpo_gamma: float = 0.5
    sft_weight: float = 0.0  # the chosen replies' token NLL added with this weight (RPO; trl's "sft" loss type)
    # GRPO and PPO
    temperature: float = 1.0  # rollouts, and the held-out sampled replies
    kl_coef: float = 0.05
    clip: float = 0.2
    ppo_epochs: int = 2  # optimisation passes over each rollout batch
    group_size: int = 4  # GRPO: responses per prompt
    token_mean: str = "batch"  # GRPO: "batch" (every response token alike) or "sequence" (per reply, then replies)
    # PPO
    reward_model: str | None = None
    target_kl: float | None = None  # adaptive KL coefficient towards this KL per response; None: fixed
    value_clip: float = 0.2
    vf_coef: float = 0.5
    gamma: float = 1.0
    lam: float = 0.95

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/align-{self.method}")

    def lora_config(self) -> LoraConfig:
        return LoraConfig(r=self.r, alpha=self.alpha, targets=tuple(self.targets), extra={"base_model": self.base})

    def validate(self) -> AlignConfig:
        check_fields(self)
        if self.method not in METHODS:
            raise AlignConfigError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        default = AlignConfig(method=self.method)
        unused = [
            f.name
            for f in fields(self)
            if f.name not in METHOD_FIELDS[self.method] and getattr(self, f.name) != getattr(default, f.name)
        ]
        if unused:
            raise AlignConfigError(f"{', '.join(unused)} set, but {self.method} does not use it; drop it")
        if self.lora:
            self.lora_config().validate()
        positive = ["steps", "batch_size", "max_new_tokens", "ppo_epochs", "group_size", "r"]
        for name in positive:
            if getattr(self, name) < 1:
                raise AlignConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("eval_prompts", "eval_samples", "compare", "eval_interval", "eval_pairs"):
            if getattr(self, name) < 0:
                raise AlignConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("lr", "beta", "temperature"):
            if not getattr(self, name) > 0:
                raise AlignConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.method == "grpo" and self.group_size < 2:
            raise AlignConfigError("GRPO compares responses within a group: group_size must be >= 2")
        if not self.sft_weight >= 0:
            raise AlignConfigError(f"sft_weight must be >= 0 (0: plain {self.loss_type}), got {self.sft_weight!r}")
        if self.token_mean not in ("batch", "sequence"):
            raise AlignConfigError(f"token_mean must be 'batch' or 'sequence', got {self.token_mean!r}")
        if self.loss_type not in DPO_LOSSES:
            raise AlignConfigError(f"loss_type {self.loss_type!r} is not one of {', '.join(DPO_LOSSES)}")
        if self.kl_coef < 0 or not 0 < self.clip < 1 or self.value_clip <= 0 or self.vf_coef < 0:
            raise AlignConfigError(
                f"kl_coef must be >= 0, clip in (0, 1), value_clip and vf_coef > 0 / >= 0; got kl_coef={self.kl_coef}, "
                f"clip={self.clip}, value_clip={self.value_clip}, vf_coef={self.vf_coef}"
            )
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise AlignConfigError(f"gamma and lam must be in [0, 1], got {self.gamma}, {self.lam}")
        if self.target_kl is not None and self.target_kl <= 0:
            raise AlignConfigError(f"target_kl must be > 0 (or None for a fixed coefficient), got {self.target_kl}")
        if self.heldout_file is not None and self.train_file is None:
            raise AlignConfigError("heldout_file given without train_file; give both, or neither for the shipped task")
        return self
