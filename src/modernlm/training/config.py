"""TrainConfig: every choice of a training run as a plain, serialisable field, with JSON in and out.

The defaults are the no-argument recipe of `modernlm train`: a ~5.5 M parameter Llama-style model (`llama-small`)
trained on the Python standard library's own source for about five minutes on 2 CPU cores.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fields import check_fields, check_mapping
from ..text import read_strict, too_deep

PRECISIONS = ("fp32", "bf16", "fp16")
PARALLEL = ("none", "ddp", "fsdp")  # see modernlm.distributed
# Fields that may change between a run and its resumption without changing a single loss value.
RESUMABLE_CHANGES = frozenset(
    {"eval_interval", "log_interval", "save_interval", "keep_checkpoints", "compile", "sample_prompts"}
    | {"sample_tokens", "num_threads", "progress"}
    | {"out_dir"}  # the same run given by another path (relative or absolute) or moved to another directory
    | {"parallel", "cpu_offload", "dist_timeout"}  # the global batch is the same on any number of processes
)


class JsonConfig:
    """JSON in and out for a dataclass of plain values (TrainConfig, FinetuneConfig): unknown fields are refused with
    the valid ones listed, and every value is checked against its field's type (fields.py)."""

    WHAT = "config"  # how error messages name the file

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = ""):
        """A config from a mapping; every key must be a field and every value of the field's type (`where` names the
        source in errors)."""
        config = cls(**check_mapping(cls, data, where))
        check_fields(config, where)
        return config

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            from ..files import write_text

            write_text(path, text + "\n")
        return text

    @classmethod
    def from_json(cls, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no {cls.WHAT} at {path}; write one with {cls.__name__}().to_json(path)")
        try:
            data = json.loads(read_strict(path))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
        except RecursionError:
            raise ValueError(too_deep(path)) from None
        return cls.from_dict(data, str(path))


@dataclass
class TrainConfig(JsonConfig):
    """A training run. `data` lists sources: "stdlib" (the running Python's standard library), files, directories,
    globs, or "hf:NAME[:SPLIT[:COLUMN]]" (Hugging Face `datasets`, when installed)."""

    WHAT = "training config"

    out_dir: str = "runs/stdlib-small"
    data: list[str] = field(default_factory=lambda: ["stdlib"])
    val_fraction: float = 0.02  # of the files (by a hash of their path), or of the tokens for a single text
    tokenizer: str | None = None  # a directory or tokenizer.json; None trains a byte-level BPE on the training text
    vocab_size: int = 4096  # of the tokenizer trained when `tokenizer` is None
    tokenizer_sample_mb: float = 8.0  # text the tokenizer is trained on, at most
    model: str = "llama-small"  # a preset of modernlm.config.PRESETS
    model_overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields, e.g. {"n_layers": 4}
    seq_len: int = 128
    batch_size: int = 16
    grad_accum: int = 1
    max_steps: int = 400
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_steps: int = 40
    weight_decay: float = 0.1
    decay_embeddings: bool = False
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping (the norm is still logged)
    precision: str = "fp32"
    compile: bool = False
    device: str = "cpu"
    seed: int = 1337
    eval_interval: int = 100
    eval_batches: int = 8
    log_interval: int = 10
    save_interval: int = 100
    keep_checkpoints: int = 2
    sample_prompts: list[str] = field(default_factory=lambda: ["def", "class", "import"])
    sample_tokens: int = 96
    num_threads: int | None = None  # torch threads; None keeps torch's default
    progress: bool = True
    parallel: str = "none"  # "ddp" or "fsdp" under torchrun (modernlm.distributed); batch_size stays the global batch
    cpu_offload: bool = False  # fsdp on CUDA: parameters, gradients and optimizer states kept in CPU memory
    dist_timeout: int = 600  # seconds a process waits for the others in a collective before it stops with an error

    def validate(self) -> TrainConfig:
        """Raise ValueError naming the first impossible value and the fix; return self."""
        check_fields(self)
        for name in ("seq_len", "batch_size", "grad_accum", "max_steps", "eval_batches", "log_interval"):
            _positive_int(name, getattr(self, name))
        for name in ("eval_interval", "save_interval", "warmup_steps", "sample_tokens", "keep_checkpoints"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.keep_checkpoints < 1:
            raise ValueError("keep_checkpoints must be >= 1: resuming needs the latest checkpoint")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not self.lr > 0 or not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("grad_clip and weight_decay must be >= 0")
        if self.parallel not in PARALLEL:
            raise ValueError(f"unknown parallel {self.parallel!r}; use one of {', '.join(PARALLEL)}")
        if self.cpu_offload and (self.parallel != "fsdp" or not self.device.startswith("cuda")):
            raise ValueError("cpu_offload keeps FSDP's shards in CPU memory for a GPU run: use it with "
                             "--parallel fsdp --device cuda, or drop --cpu-offload")  # fmt: skip
        if self.parallel == "fsdp" and self.precision == "fp16":
            raise ValueError("fsdp trains in bf16 or fp32 (fp16's grad scaler is not wired to sharded gradients): "
                             "use --precision bf16")  # fmt: skip
        if self.dist_timeout < 1:
            raise ValueError(f"dist_timeout must be at least 1 second, got {self.dist_timeout}")
        if not self.data:
            raise ValueError('data is empty: give at least one source ("stdlib", a file, a directory or a glob)')
        if self.vocab_size < 257 and self.tokenizer is None:
            raise ValueError(f"vocab_size {self.vocab_size} is too small: byte-level BPE needs 256 bytes + 1 special")
        return self

    def changed_fields(self, other: TrainConfig) -> list[str]:
        """The fields whose values differ from `other`'s that change the training math (not logging or saving)."""
        a, b = self.to_dict(), other.to_dict()
        return sorted(k for k in a if k not in RESUMABLE_CHANGES and a[k] != b[k])


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
