"""What every alignment method shares: the run directory, the policy and its reference over one frozen base, the
optimizer step, and the held-out evaluation (greedy answers: task reward, accuracy, KL to the reference, length).

The reference costs no memory with LoRA: it is the policy with its adapters switched off (`adapters_off`, exact:
the update is multiplied by zero). A second model over the same frozen weights (`shared_view`: PPO's critic over
the reward model) shares their storage; only its adapters and head are new.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..files import clean_stale
from ..finetune.lora import apply_lora, lora_modules
from ..loading import load_model, load_tokenizer
from ..training.optim import build_optimizer, lr_at, set_lr
from ..training.report import MetricsLog
from . import task
from .config import CONFIG_NAME, AlignConfig
from .data import PromptRecord, _pad_id, encode_prompt, pack, read_prompts, reply_texts
from .rollout import sample


def start_run(cfg: AlignConfig) -> Path:
    """Validate, create the run directory (cleaned of a killed start's temporaries), write the config, seed."""
    cfg.validate()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    clean_stale(run_dir, recursive=True)
    cfg.to_json(run_dir / CONFIG_NAME)
    torch.manual_seed(cfg.seed)
    return run_dir


def data_files(cfg: AlignConfig, kind: str) -> tuple[Path, Path | None]:
    """(train, held-out) files of `kind` ("pairs" or "prompts"): the config's, or the shipped task's."""
    if cfg.train_file is not None:
        return Path(cfg.train_file), cfg.heldout_file and Path(cfg.heldout_file)
    paths = task.write_task(cfg.run_dir / "data", cfg.seed)
    return paths[f"train_{kind}"], paths[f"heldout_{kind}"]


def eval_prompts(cfg: AlignConfig, heldout: Path | None, pairs: list | None = None) -> list[PromptRecord]:
    """The held-out prompts answered before and after: `eval_file`'s or the task's (with answers, so reward and
    accuracy are measured), the held-out prompts file (GRPO, PPO), or the prompts of the held-out pairs (no
    answers: KL and length only)."""
    if cfg.eval_file is not None:
        records = read_prompts(cfg.eval_file, need_answer=True)
    elif cfg.train_file is None:
        records = read_prompts(cfg.run_dir / "data" / "heldout_prompts.jsonl", need_answer=True)
    elif pairs is not None:
        seen, records = set(), []
        for pair in pairs:
            key = repr(pair.prompt)
            if key not in seen:
                seen.add(key)
                records.append(PromptRecord(pair.prompt, None))
    else:
        records = read_prompts(heldout, need_answer=False) if heldout is not None else []
    return records[: cfg.eval_prompts]


def say(cfg: AlignConfig, text: str) -> None:
    """A phase of the run as it starts, on stderr (above the step bar when one is shown); `cfg.progress` False: none."""
    if cfg.progress:
        tqdm.write(f"align {cfg.method}: {text}", file=sys.stderr)


def step_bar(cfg: AlignConfig) -> tqdm:
    """The bar over the run's steps (stderr; disabled with `cfg.progress` False); `advance` moves it."""
    return tqdm(total=cfg.steps, desc=f"align {cfg.method}", unit="step", file=sys.stderr, disable=not cfg.progress,
                dynamic_ncols=True)  # fmt: skip


def advance(bar: tqdm, record: dict) -> None:
    """One step done: the bar moves and shows the step's loss, reward, accuracy and KL."""
    shown = {k: f"{record[k]:.3g}" for k in ("loss", "reward", "accuracy", "kl") if isinstance(record.get(k), float)}
    bar.set_postfix(shown, refresh=False)
    bar.update(1)


def load_policy(cfg: AlignConfig):
    """(tokenizer, policy, reference): LoRA over the frozen base with the reference = adapters off, or every weight
    trained with a frozen deep copy as the reference."""
    say(cfg, f"loading the policy {cfg.base}")
    tokenizer = load_tokenizer(cfg.base)
    model = load_model(cfg.base)
    if cfg.lora:
        apply_lora(model, cfg.lora_config())
        return tokenizer, model, None
    reference = copy.deepcopy(model).requires_grad_(False).eval()
    return tokenizer, model.requires_grad_(True), reference


@contextlib.contextmanager
def adapters_off(model):
    """The base model, exactly: every LoRA update multiplied by zero while inside."""
    modules = list(lora_modules(model).values())
    saved = [m.scaling for m in modules]
    try:
        for m in modules:
            m.scaling = 0.0
        yield model
    finally:
        for m, s in zip(modules, saved, strict=True):
            m.scaling = s


@contextlib.contextmanager
def as_reference(policy, reference):
    """The reference model: a separate frozen copy, or the policy with its adapters off."""
    if reference is not None:
        yield reference
    else:
        with adapters_off(policy):
            yield policy


def shared_view(model):
    """A second module over the same frozen weight storage (no copy): another set of adapters can go on it."""
    state = {k: v.detach() for k, v in model.state_dict().items() if ".lora_" not in k}  # the base weights only
    view = type(model).from_state_dict(model.config, state)
    return view.to(next(model.parameters()).device)


class Optimizer:
    """AdamW over the trainable parameters (training/optim.py), warmup then cosine, gradients clipped to norm 1."""

    def __init__(self, modules: list[torch.nn.Module], cfg: AlignConfig, total_steps: int | None = None) -> None:
        holder = torch.nn.ModuleList(modules)
        self.params = [p for p in holder.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("nothing to train: every parameter is frozen")
        self.opt = build_optimizer(holder, cfg.lr, weight_decay=0.0)
        self.cfg, self.step_count, self.total = cfg, 0, total_steps or cfg.steps

    def step(self, loss: torch.Tensor) -> float:
        """Backward, clip, step at this step's learning rate; returns the gradient norm before clipping."""
        cfg = self.cfg
        set_lr(self.opt, lr_at(self.step_count, cfg.lr, cfg.lr / 10, max(self.total // 10, 1), self.total))
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, 1.0))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step_count += 1
        return norm


# ---- held-out evaluation ------------------------------------------------------------------------------------------
@dataclass
class Evaluation:
    reward: float | None  # mean task reward (None without answers)
    accuracy: float | None
    kl: float  # mean over prompts of sum over the reply's positions of KL(pi(.|s) || pi_ref(.|s)), nats
    length: float  # mean reply length in tokens
    answers: list[str] = field(default_factory=list)
    sampled_reward: float | None = None  # mean task reward of `eval_samples` sampled replies per prompt
    sampled_accuracy: float | None = None

    def record(self) -> dict:
        return {f"eval_{k}": v for k, v in vars(self).items() if k != "answers" and v is not None}


@torch.no_grad()
def evaluate(policy, reference, tokenizer, prompts: list[PromptRecord], cfg: AlignConfig) -> Evaluation | None:
    """Greedy answers to the held-out prompts, scored with the task's checker, and their exact KL to the reference;
    with `cfg.eval_samples`, also the mean reward of that many replies per prompt sampled at `cfg.temperature` (the
    policy's expected reward, which GRPO and PPO maximise; the greedy reply is only its mode)."""
    if not prompts:
        return None
    from ..generation import generate

    sampled = f", then {cfg.eval_samples} sampled replies to each" if cfg.eval_samples else ""
    say(cfg, f"answering {len(prompts)} held-out prompts (greedy{sampled})")
    policy.eval()
    ids = [encode_prompt(tokenizer, p.prompt) for p in prompts]
    eos = tokenizer.eos_token_id
    replies = generate(policy, ids, cfg.max_new_tokens, temperature=0.0, eos_token_id=eos)
    texts = reply_texts(tokenizer, replies)
    replies = [r or [eos] for r in replies]
    packed = [pack(ids[i : i + 8], replies[i : i + 8], _pad_id(tokenizer)) for i in range(0, len(ids), 8)]
    kl = torch.cat([reply_kl(policy, reference, batch, mask) for batch, mask in packed])  # (B,)
    length = sum(len(r) for r in replies) / len(replies)
    answered = [p for p in prompts if p.answer is not None]
    reward, accuracy = _score((t, p.answer) for t, p in zip(texts, prompts, strict=True) if p.answer is not None)
    evaluation = Evaluation(reward, accuracy, float(kl.mean()), length, texts)
    if cfg.eval_samples and answered:
        # the rollouts' own sampler: k replies per prompt at cfg.temperature
        roll = sample(policy, tokenizer, answered, cfg.eval_samples, cfg, cfg.seed)
        evaluation.sampled_reward, evaluation.sampled_accuracy = _score(zip(roll.texts, roll.answers, strict=True))
    return evaluation


def _score(answered) -> tuple[float | None, float | None]:
    """(mean task reward, accuracy) of (reply, answer) pairs; (None, None) for none."""
    answered = list(answered)
    if not answered:
        return None, None
    reward = sum(task.reward(t, a) for t, a in answered) / len(answered)
    return reward, sum(task.is_correct(t, a) for t, a in answered) / len(answered)


def reply_kl(policy, reference, batch: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) sum over each reply's positions of the exact KL(pi(.|s) || pi_ref(.|s)) over the vocabulary."""
    log_p = torch.log_softmax(policy(batch[:, :-1]), dim=-1)  # (B, L - 1, V)
    with as_reference(policy, reference) as ref:
        log_q = torch.log_softmax(ref(batch[:, :-1]), dim=-1)  # (B, L - 1, V)
    return ((log_p.exp() * (log_p - log_q)).sum(-1) * mask).sum(1)


def metrics_log(run_dir: Path) -> MetricsLog:
    return MetricsLog(run_dir / "metrics.jsonl")


@dataclass
class AlignResult:
    run_dir: Path
    before: Evaluation | None
    after: Evaluation | None
    summary: dict
    model: torch.nn.Module  # the aligned policy (adapters merged in)
    model_dir: Path


def publish_policy(cfg: AlignConfig, policy, tokenizer) -> tuple[torch.nn.Module, Path]:
    """adapter/ (LoRA, PEFT's layout) and model/ (a Hugging Face directory, adapters merged in) in the run dir."""
    from ..finetune.lora import merge_and_unload, save_adapter
    from ..loading import save_model

    say(cfg, f"writing the aligned model to {cfg.run_dir}")
    if cfg.lora:
        save_adapter(policy, cfg.run_dir / "adapter")
        policy = merge_and_unload(policy)
    policy.requires_grad_(False).eval()
    return policy, save_model(policy, cfg.run_dir / "model", tokenizer)


def weight_bytes(modules: list[torch.nn.Module]) -> int:
    """Bytes of the distinct tensor storages behind the modules' parameters and buffers (shared weights once)."""
    seen, total = set(), 0
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            key = t.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
    return total
