"""Everything a run needs before its first step, checked in the order that wastes the least work: the config, the
model shape, the run directory, then the corpus, the tokenizer and the token file."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from ..config import ModelConfig, preset
from ..files import clean_stale
from ..loading import load_tokenizer, parse_device
from ..tokenizer import Tokenizer
from .checkpoint import latest_step
from .config import JsonConfig, TrainConfig
from .corpus import load_corpus
from .data import corpus_tokenizer, tokenize_corpus
from .parallel import Parallel

TRAIN_CONFIG_NAME = "train_config.json"


class TrainData(Protocol):
    """What the trainer reads: batch `index` as (inputs, shifted targets) (B, T) each, -100 where no loss; a pure
    function of index and seed, so a resumed run sees the same batches. TokenData and finetune's ChatData have it."""

    def train_batch(
        self, index: int, batch_size: int, seq_len: int, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def val_batches(self, n_batches: int, batch_size: int, seq_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass
class RunInputs:
    """Everything the Trainer needs. `model`: a prebuilt model to train (e.g. a loaded base with LoRA adapters);
    None builds a fresh Transformer(model_config). Only its parameters with requires_grad are optimized.
    `publish_weights`: copy each checkpoint's weights to the run root (where `load_model(run_dir)` reads them);
    False for runs that publish their own outputs. `save_trainable_only`: checkpoints hold only the trainable
    parameters (LoRA adapters), and resuming needs the same prebuilt model to put them into. `parallel`: the hooks
    of a run under torch.distributed (training/parallel.py); None for one process."""

    config: TrainConfig
    model_config: ModelConfig
    tokenizer: Tokenizer
    data: TrainData
    run_dir: Path
    model: torch.nn.Module | None = None
    publish_weights: bool = True
    save_trainable_only: bool = False
    parallel: Parallel | None = None  # the hooks of a run on several processes (modernlm.distributed); None: one


def check_config(config: TrainConfig, resume: bool, extend: bool = False) -> ModelConfig:
    """Validate the run's settings against each other and the run directory; return the model's config (its
    vocabulary still to be fitted to the tokenizer)."""
    config.validate()
    model_config = preset(config.model, **config.model_overrides)
    if config.seq_len > model_config.max_seq_len:
        raise ValueError(
            f"seq_len {config.seq_len} is longer than the model's max_seq_len {model_config.max_seq_len}; lower "
            f"seq_len or raise max_seq_len (model_overrides={{'max_seq_len': {config.seq_len}}})"
        )
    device = parse_device(config.device)
    if config.precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 needs a CUDA device (with a grad scaler); on CPU use precision bf16 or fp32")
    check_run_dir(Path(config.out_dir), config, TRAIN_CONFIG_NAME, resume, extend)
    return model_config


def check_run_dir(run_dir: Path, config: JsonConfig, config_name: str, resume: bool, extend: bool = False) -> None:
    """A new run needs a directory without checkpoints; a resumed one needs its saved settings (`config_name`), the
    same values of every field that changes the training, and a checkpoint. `extend`: a resumed run may go on to a
    larger max_steps (its schedule is stretched; the notice says how). Shared by training and fine-tuning."""
    step = latest_step(run_dir)
    if extend and not resume:
        raise ValueError("extend continues a saved run to more steps: use it with resume (--resume --extend)")
    if resume:
        saved_path = run_dir / config_name
        if not saved_path.is_file():
            raise FileNotFoundError(f"no {config_name} in {run_dir}: nothing to resume there")
        saved = type(config).from_json(saved_path)
        changed = config.changed_fields(saved)
        stretched = [c for c in changed if c.endswith("max_steps")] if extend else []
        if extend and not stretched:
            raise ValueError(f"--extend needs a new --max-steps above the saved {_loop(saved).max_steps}")
        changed = [c for c in changed if c not in stretched]
        if changed:
            hint = (
                "; to train a run further, add --extend with the new --max-steps"
                if any(c.endswith("max_steps") for c in changed)
                else ""
            )
            raise ValueError(
                f"cannot resume {run_dir} with different {', '.join(changed)}: those change the training itself; "
                f"resume with the saved settings, or start a new run in another directory{hint}"
            )
        if step is None:
            raise FileNotFoundError(f"no checkpoint to resume in {run_dir}; start without --resume")
        if stretched:
            _announce_extension(run_dir, _loop(saved), _loop(config), step)
    elif step is not None:
        raise ValueError(
            f"{run_dir} already holds a run (checkpoint at step {step}); continue it with --resume, "
            "or choose another output directory"
        )


def _loop(config: JsonConfig) -> TrainConfig:
    """The loop settings of a training or fine-tuning config."""
    return getattr(config, "train", None) or config


def _announce_extension(run_dir: Path, old: TrainConfig, new: TrainConfig, step: int) -> None:
    from .optim import lr_at

    if new.max_steps <= step:
        raise ValueError(f"--max-steps {new.max_steps} is not past the run's step {step}; give a larger one")
    before = lr_at(step, old.lr, old.min_lr, old.warmup_steps, old.max_steps)
    after = lr_at(step, new.lr, new.min_lr, new.warmup_steps, new.max_steps)
    logging.getLogger("modernlm").warning(
        "extending %s from %d to %d steps: the warmup+cosine schedule now ends at step %d, so the learning rate at "
        "step %d goes from %.3g to %.3g (not the run a %d-step start would have made)",
        run_dir, old.max_steps, new.max_steps, new.max_steps, step, before, after, new.max_steps,
    )  # fmt: skip


def training_length(directory: str | Path) -> int | None:
    """The sequence length a model was trained at: `seq_len` of the train_config.json in its run directory (every
    `modernlm train` run writes it there); None for a directory that records none (a downloaded model, a GGUF)."""
    path = Path(directory) / TRAIN_CONFIG_NAME
    return TrainConfig.from_json(path).seq_len if path.is_file() else None


def read_saved_config(run_dir: Path) -> TrainConfig:
    path = Path(run_dir) / TRAIN_CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {TRAIN_CONFIG_NAME} in {run_dir}: nothing to resume there")
    return TrainConfig.from_json(path)


def prepare(config: TrainConfig, resume: bool = False, extend: bool = False, *, main: bool = True) -> RunInputs:
    """Check everything, then build (or find cached) the tokenizer and the token file. `main` False: a process of a
    distributed run other than rank 0, which prepared the run directory first: read it, write nothing there."""
    model_config = check_config(config, resume, extend)
    corpus = load_corpus(config.data, config.val_fraction)
    if (resume or not main) and (Path(config.out_dir) / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_directory(config.out_dir)  # the run's own, even if the cache was cleared
    elif config.tokenizer is not None:
        tokenizer = load_tokenizer(config.tokenizer)
    else:
        tokenizer = corpus_tokenizer(corpus, config.vocab_size, config.tokenizer_sample_mb)
    data = tokenize_corpus(corpus, tokenizer, config.val_fraction)
    if data.n_train < config.seq_len + 1:
        raise ValueError(
            f"the training text has {data.n_train} tokens, fewer than seq_len + 1 = {config.seq_len + 1}; "
            "lower seq_len or give more text"
        )
    vocab = config.model_overrides.get("vocab_size", tokenizer.vocab_size)
    if vocab < tokenizer.vocab_size:
        raise ValueError(f"model vocab_size {vocab} is smaller than the tokenizer's {tokenizer.vocab_size}")
    model_config = ModelConfig.from_dict({**model_config.to_dict(), "vocab_size": vocab}).validate()
    run_dir = Path(config.out_dir)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        clean_stale(run_dir, recursive=True)  # what a killed earlier start of this run left half-written
        tokenizer.save(run_dir)
        config.to_json(run_dir / TRAIN_CONFIG_NAME)
    return RunInputs(config, model_config, tokenizer, data, run_dir)
