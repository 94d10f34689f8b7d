"""The reward model: the decoder with a scalar head on the last real token, trained on preference pairs with the
Bradley-Terry loss, saved as a Hugging Face `...ForSequenceClassification` directory.

The last real token is the rightmost one that is not the pad token (transformers' rule, so the saved model scores
exactly as `AutoModelForSequenceClassification` does): `score.weight` (1, D) applied to the final-norm hidden state
there. The same head over every position gives PPO's critic its values (`values`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoints.hf import config_from_hf, rename
from ..checkpoints.limits import check_finite
from ..files import atomic_path, write_json, write_text
from ..finetune.lora import apply_lora, merge_and_unload
from ..loading import load_model, load_tokenizer, staged_save
from ..model import Transformer
from ..text import read_json
from .common import Optimizer, advance, data_files, metrics_log, say, start_run, step_bar
from .config import AlignConfig
from .data import EncodedPair, _pad_id, batch_indices, encode_pairs, pack, read_pairs, split_heldout
from .losses import bradley_terry_loss
from .report import plot_curves

ARCHITECTURES = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"}


class RewardModelError(ValueError):
    """A reward model that cannot be built, saved or loaded; the message says why and what to do."""


def hidden_states(body: Transformer, ids: torch.Tensor) -> torch.Tensor:
    """The final-norm hidden states (B, T, D) of `body` on ids (B, T) (captured on the way to the LM head)."""
    captured = {}
    hook = body.norm.register_forward_hook(lambda module, args, out: captured.__setitem__("h", out))
    try:
        body(ids)
    finally:
        hook.remove()
    return captured["h"]


def last_real(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B,) index of each row's rightmost token that is not `pad_id` (transformers' sequence-classification rule)."""
    real = ids != pad_id  # (B, T)
    if not bool(real.any(dim=1).all()):
        raise RewardModelError("a row holds only padding: nothing to score; give each sequence at least one token")
    positions = torch.arange(ids.shape[1], device=ids.device)
    return (positions * real).argmax(dim=1)


class RewardModel(nn.Module):
    """A decoder body (LoRA or not) and a scalar head: `forward(ids)` -> (B,) rewards, `values(ids)` -> (B, T)."""

    def __init__(self, body: Transformer, pad_id: int, score: nn.Linear | None = None) -> None:
        super().__init__()
        self.body, self.pad_id, self.config = body, pad_id, body.config
        if score is None:
            param = next(body.parameters())
            score = nn.Linear(body.config.d_model, 1, bias=False, device=param.device, dtype=param.dtype)
            nn.init.normal_(score.weight, std=body.config.d_model**-0.5)
        self.score = score

    def values(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T)
        return self.score(hidden_states(self.body, ids)).squeeze(-1).float()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B,)
        return self.values(ids)[torch.arange(ids.shape[0], device=ids.device), last_real(ids, self.pad_id)]


# ---- on disk ------------------------------------------------------------------------------------------------------
def save_reward_model(model: RewardModel, directory: str | os.PathLike, tokenizer=None) -> Path:
    """A Hugging Face directory that `AutoModelForSequenceClassification` loads (num_labels 1, pad_token_id set),
    written whole and swapped in at once like save_model's."""
    body = merge_and_unload(model.body) if hasattr(model.body, "lora_config") else model.body
    with staged_save(body, directory, tokenizer) as staging:
        hf = json.loads((staging / "config.json").read_text())
        arch = hf["architectures"][0]
        if arch not in ARCHITECTURES:
            raise RewardModelError(
                f"a {arch} body cannot be saved as a reward model; use a Llama, Mistral or Qwen2 base"
            )
        tensors = load_file(staging / "model.safetensors")
        tensors.pop("lm_head.weight", None)
        tensors["score.weight"] = model.score.weight.detach().to(next(iter(tensors.values())).dtype).contiguous().cpu()
        with atomic_path(staging / "model.safetensors") as tmp:
            save_file(tensors, tmp, metadata={"format": "pt"})
        hf.update(
            architectures=[arch.replace("ForCausalLM", "ForSequenceClassification")],
            num_labels=1,
            id2label={"0": "LABEL_0"},
            label2id={"LABEL_0": 0},
            pad_token_id=model.pad_id,
            problem_type="regression",
        )
        write_json(staging / "config.json", hf)
    return Path(directory)


def load_reward_model(directory: str | os.PathLike, dtype: torch.dtype = torch.float32) -> RewardModel:
    """A reward model written by `save_reward_model` (or any one-label Llama/Mistral/Qwen2 sequence classifier)."""
    directory = Path(directory)
    path = directory / "config.json"
    if not path.is_file():
        raise RewardModelError(f"{directory} holds no config.json; give a directory written by `modernlm align reward`")
    hf = read_json(path, "reward model config", RewardModelError)
    if not isinstance(hf, dict):
        raise RewardModelError(f"{path} must hold a JSON object of config fields, got {type(hf).__name__}")
    arch = str((hf.get("architectures") or ["?"])[0])
    if arch.replace("ForSequenceClassification", "ForCausalLM") not in ARCHITECTURES or "Sequence" not in arch:
        raise RewardModelError(f"{path}: {arch} is not a reward model (a Llama/Mistral/Qwen2 sequence classifier)")
    if hf.get("num_labels", len(hf.get("id2label", {"0": 0}))) != 1 or hf.get("pad_token_id") is None:
        raise RewardModelError(f"{path}: a reward model has one label and a pad_token_id; this one does not")
    causal = dict(hf, architectures=[arch.replace("ForSequenceClassification", "ForCausalLM")])
    config = config_from_hf(dict(causal, tie_word_embeddings=True), str(path))  # the LM head is never used
    tensors = load_file(directory / "model.safetensors")
    check_finite(tensors, directory / "model.safetensors")
    score = tensors.pop("score.weight", None)
    if score is None or tuple(score.shape) != (1, config.d_model):
        raise RewardModelError(f"{directory}: no score.weight of shape (1, {config.d_model})")
    state = {rename(k, to_hf=False): v.to(dtype) for k, v in tensors.items() if k != "lm_head.weight"}
    body = Transformer.from_state_dict(config, state)
    head = nn.Linear(config.d_model, 1, bias=False, device="meta")
    head.weight = nn.Parameter(score.to(dtype))
    return RewardModel(body, int(hf["pad_token_id"]), head).eval()


# ---- training -----------------------------------------------------------------------------------------------------
@dataclass
class RewardResult:
    run_dir: Path
    model_dir: Path
    loss_before: float
    loss_after: float
    accuracy_before: float
    accuracy_after: float
    model: RewardModel


def _pair_scores(rm: RewardModel, pairs: list[EncodedPair]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen (B,), rejected (B,)) rewards, the two halves of one packed batch."""
    prompts = [p.prompt for p in pairs] * 2
    ids, _ = pack(prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs], rm.pad_id)
    scores = rm(ids)
    return scores[: len(pairs)], scores[len(pairs) :]


@torch.no_grad()
def pair_metrics(rm: RewardModel, pairs: list[EncodedPair], batch_size: int = 16) -> tuple[float, float]:
    """(mean Bradley-Terry loss, pairwise accuracy) on `pairs`; ties count as wrong."""
    losses, wins = [], []
    for i in range(0, len(pairs), batch_size):
        c, r = _pair_scores(rm, pairs[i : i + batch_size])
        losses.append(bradley_terry_loss(c, r))
        wins.append(c > r)
    return float(torch.cat(losses).mean()), float(torch.cat(wins).float().mean())


def train_reward(cfg: AlignConfig) -> RewardResult:
    """Train a reward model from `cfg.base` on preference pairs; write reward_model/ and the report in the run dir."""
    run_dir = start_run(cfg)
    train_path, heldout_path = data_files(cfg, "pairs")
    tokenizer = load_tokenizer(cfg.base)
    train = encode_pairs(tokenizer, read_pairs(train_path), str(train_path))
    heldout = encode_pairs(tokenizer, read_pairs(heldout_path), str(heldout_path)) if heldout_path else None
    train, heldout = split_heldout(train, heldout, str(train_path))
    heldout = heldout[: cfg.eval_pairs]
    say(cfg, f"loading {cfg.base} as the reward model's body")
    body = load_model(cfg.base)
    if cfg.lora:
        apply_lora(body, cfg.lora_config())
    else:
        body.requires_grad_(True)
    rm = RewardModel(body, _pad_id(tokenizer))
    opt, log = Optimizer([rm], cfg), metrics_log(run_dir)
    say(cfg, f"scoring {len(heldout)} held-out pairs")
    loss_before, acc_before = pair_metrics(rm, heldout)
    log.write(dict(step=0, pair_loss=loss_before, pair_accuracy=acc_before))
    bar = step_bar(cfg)
    for step in range(cfg.steps):
        batch = [train[i] for i in batch_indices(len(train), cfg.batch_size, step, cfg.seed)]
        chosen, rejected = _pair_scores(rm, batch)
        loss = bradley_terry_loss(chosen, rejected).mean()
        grad_norm = opt.step(loss)
        record = dict(step=step + 1, loss=loss.item(), accuracy=float((chosen > rejected).float().mean()))
        if cfg.eval_interval and (step + 1) % cfg.eval_interval == 0 and step + 1 < cfg.steps:
            record["pair_loss"], record["pair_accuracy"] = pair_metrics(rm, heldout)
        log.write(record | {"grad_norm": grad_norm})
        advance(bar, record)
    bar.close()
    say(cfg, f"scoring {len(heldout)} held-out pairs, then writing the reward model to {run_dir}")
    loss_after, acc_after = pair_metrics(rm, heldout)
    log.write(dict(step=cfg.steps, pair_loss=loss_after, pair_accuracy=acc_after))
    rm.eval()
    model_dir = save_reward_model(rm, run_dir / "reward_model", tokenizer)
    plot_curves(log.read(), run_dir / "curves.png", f"reward model on {cfg.base}")
    summary = dict(method="reward", base=cfg.base, steps=cfg.steps, heldout=len(heldout), loss_before=loss_before)
    summary |= dict(loss_after=loss_after, accuracy_before=acc_before, accuracy_after=acc_after)
    write_json(run_dir / "summary.json", summary)
    write_text(
        run_dir / "before_after.md",
        f"# Reward model on {cfg.base}\n\nHeld-out pairs: {len(heldout)}. Bradley-Terry loss {loss_before:.4f} before, "
        f"{loss_after:.4f} after; pairwise accuracy {acc_before:.3f} before, {acc_after:.3f} after.\n",
    )
    return RewardResult(run_dir, model_dir, loss_before, loss_after, acc_before, acc_after, rm)
