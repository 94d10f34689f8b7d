"""FinetuneConfig: a fine-tuning run as plain, serialisable fields, with JSON in and out.

The loop settings are a TrainConfig (`train`), as for `modernlm train`; of it, `out_dir` is the run directory and
`seq_len` the longest example in tokens (longer ones are cut); `data`, `tokenizer`, `vocab_size` and `model` are not
used (the data and the model are the fields here). The defaults fine-tune SmolLM2-135M-Instruct with LoRA on the
example dataset in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoints.sources import DEFAULT_MODEL
from ..fields import check_fields
from ..training.config import JsonConfig, TrainConfig
from .lora import ATTENTION_TARGETS, LoraConfig

CONFIG_NAME = "finetune_config.json"
# Fields that may change between a run and its resumption without changing a loss value.
RESUMABLE_CHANGES = frozenset({"compare_prompts", "answer_tokens"})


def default_train_config(lora: bool = True) -> TrainConfig:
    """The loop settings of the default recipe: LoRA at lr 1e-3, full fine-tuning at 2e-5 (a pretrained model
    forgets fast at LoRA's rate)."""
    lr = 1e-3 if lora else 2e-5
    return TrainConfig(
        out_dir="runs/finetune" if lora else "runs/finetune-full",
        seq_len=64,
        batch_size=8,
        max_steps=100,
        lr=lr,
        min_lr=lr / 10,
        warmup_steps=10,
        weight_decay=0.0,
        eval_interval=25,
        eval_batches=10,
        log_interval=5,
        save_interval=50,
        sample_prompts=[],
        sample_tokens=0,
        seed=0,
    )


@dataclass
class FinetuneConfig(JsonConfig):
    """A fine-tuning run. `base`: any model source `modernlm.load_model` takes. `train_file`/`val_file`: JSONL chat
    data (see chat_data.py); None writes the example dataset into the run directory (`val_file` None with a
    `train_file` holds out the last tenth of it). `lora`: adapters (r, alpha, dropout, targets) or, if False, every
    weight trained. `compare_prompts` held-out prompts are answered greedily before and after, up to
    `answer_tokens` tokens."""

    WHAT = "fine-tuning config"

    base: str = DEFAULT_MODEL
    train_file: str | None = None
    val_file: str | None = None
    lora: bool = True
    quantize: str | None = None  # QLoRA: the frozen base in "int8" or "int4" (see modernlm.quant)
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(ATTENTION_TARGETS))
    compare_prompts: int = 4
    answer_tokens: int = 48
    train: TrainConfig | None = None  # None: default_train_config(lora)

    def __post_init__(self) -> None:
        if self.train is None:
            self.train = default_train_config(self.lora)
        elif isinstance(self.train, dict):
            self.train = TrainConfig.from_dict(self.train)

    @property
    def run_dir(self) -> Path:
        return Path(self.train.out_dir)

    def lora_config(self) -> LoraConfig:
        return LoraConfig(r=self.r, alpha=self.alpha, dropout=self.dropout, targets=tuple(self.targets))

    def validate(self) -> FinetuneConfig:
        """Raise ValueError naming the first impossible value and the fix; return self."""
        check_fields(self)
        self.train.validate()
        if self.lora:
            self.lora_config().validate()
        if self.quantize is not None:
            from ..quant.load import parse

            if parse(self.quantize)[0] == "gguf" or not self.lora:
                raise ValueError(
                    f"quantize={self.quantize!r}: QLoRA trains LoRA adapters over an int8 or int4 base; use "
                    "--quantize int8 or int4 with LoRA (full fine-tuning cannot train integer weights)"
                )
        if self.val_file is not None and self.train_file is None:
            raise ValueError("val_file given without train_file; give both, or neither for the example dataset")
        for name in ("compare_prompts", "answer_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        return self

    def changed_fields(self, other: FinetuneConfig) -> list[str]:
        """Fields whose values differ from `other`'s and change the training (train.* for the loop's)."""
        a, b = self.to_dict(), other.to_dict()
        top = [k for k in a if k != "train" and k not in RESUMABLE_CHANGES and a[k] != b[k]]
        return sorted(top + [f"train.{k}" for k in self.train.changed_fields(other.train)])
