"""A small, deterministic training loop for the lab's experiments (independent of modernlm.training on purpose:
experiments must stay comparable however the trainer evolves).

Data: the Python standard library's own source, read in sorted file order and encoded as bytes (vocabulary 256), so
every machine trains on the same text with no download and no tokenizer. The last 10% is held out for validation.
"""

from __future__ import annotations

import functools
import math
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..config import ModelConfig
from ..model import Transformer
from ..threads import one_thread
from ..training.optim import build_optimizer, lr_at, param_groups, set_lr
from ._seeds import mean_std

VOCAB = 256


@functools.lru_cache(maxsize=2)
def corpus(max_bytes: int = 1_500_000) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) byte tensors (N,) int64 from the first `max_bytes` of the stdlib's .py files."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.glob("*.py")):
        data = path.read_bytes()[: max_bytes - total]
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    data = torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8).long()  # (N,)
    cut = int(0.9 * len(data))
    return data[:cut], data[cut:]


def tiny_config(**overrides: Any) -> ModelConfig:
    """The lab's default byte-level model: 2 layers, 64 wide, 4 heads (~0.1 M parameters)."""
    fields = dict(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, ffn_multiple_of=16, max_seq_len=1024)
    return ModelConfig(**{**fields, **overrides}).validate()


def batch(data: torch.Tensor, batch_size: int, seq_len: int, g: torch.Generator) -> torch.Tensor:
    """(B, T + 1) random windows of `data`."""
    starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=g)
    return torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()])


@dataclass
class Run:
    model: Transformer
    losses: list[float] = field(default_factory=list)  # training loss per step (nan once diverged)
    seconds: float = 0.0


def train(
    cfg: ModelConfig,
    steps: int,
    *,
    batch_size: int = 16,
    seq_len: int = 64,
    lr: float = 3e-3,
    warmup: int = 0,
    clip: float | None = 1.0,
    seed: int = 0,
    weight_decay: float = 0.1,
    optimizer: str = "adamw",
    data: torch.Tensor | None = None,
) -> Run:
    """The trainer's AdamW (betas 0.9, 0.95, weight decay 0.1 on matrices) and schedule (linear warmup, then cosine to
    10% of `lr` at the last step) on random windows of the corpus (or of `data`, a (N,) byte tensor).
    `optimizer="adam_l2"`: torch's Adam with the same groups, where weight decay is an L2 term added to the gradient
    (and so divided by Adam's second moment) instead of AdamW's decoupled shrinking of the weights."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer {optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    with one_thread():
        return _train(cfg, steps, batch_size, seq_len, lr, warmup, clip, seed, weight_decay, optimizer, data)


OPTIMIZERS = ("adamw", "adam_l2")


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, kind: str) -> torch.optim.Optimizer:
    """AdamW (decoupled decay) or Adam with L2 (decay in the gradient), over the trainer's groups (matrices decay)."""
    if kind == "adamw":
        return build_optimizer(model, lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.95), eps=1e-8)


def _train(cfg, steps, batch_size, seq_len, lr, warmup, clip, seed, weight_decay, optimizer, data) -> Run:
    torch.manual_seed(seed)
    model = Transformer(cfg).train()
    opt = make_optimizer(model, lr, weight_decay, optimizer)
    g = torch.Generator().manual_seed(seed)
    data = corpus()[0] if data is None else data
    run, start = Run(model), time.perf_counter()
    for step in range(steps):
        set_lr(opt, lr_at(step, lr, 0.1 * lr, warmup, steps))
        ids = batch(data, batch_size, seq_len, g)  # (B, T + 1)
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        if not torch.isfinite(loss):
            run.losses += [math.nan] * (steps - step)
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        run.losses.append(loss.item())
    run.seconds = time.perf_counter() - start
    return run


def evaluate(
    model: Transformer, seq_len: int, windows: int = 8, batch_size: int = 4, data: torch.Tensor | None = None
) -> float:
    """Mean next-byte cross-entropy (nats) over `windows` evenly spaced validation windows (or windows of `data`) of
    `seq_len` tokens."""
    return float(position_losses(model, seq_len, windows, batch_size, data).mean())


def position_losses(
    model: Transformer, seq_len: int, windows: int = 8, batch_size: int = 4, data: torch.Tensor | None = None
) -> torch.Tensor:
    """(T,) mean next-byte cross-entropy at each position of `windows` evenly spaced validation windows (or windows of
    `data`, a (N,) byte tensor)."""
    model.eval()
    with one_thread(), torch.no_grad():
        data = corpus()[1] if data is None else data
        starts = torch.linspace(0, len(data) - seq_len - 2, windows).long().tolist()
        total = torch.zeros(seq_len, dtype=torch.float64)
        for i in range(0, windows, batch_size):
            ids = torch.stack([data[s : s + seq_len + 1] for s in starts[i : i + batch_size]])  # (b, T + 1)
            logits = model(ids[:, :-1])  # (b, T, V)
            losses = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (b, T)
            total += losses.double().sum(0)
        return total / windows


def smooth(losses: list[float], k: int = 10) -> float:
    """Mean of the last k finite losses (nan if the run diverged)."""
    tail = losses[-k:]
    return math.nan if any(math.isnan(x) for x in tail) else sum(tail) / len(tail)


def compare(configs: dict[str, ModelConfig], steps: int | dict[str, int], seq_len: int = 64, **kw: Any) -> dict:
    """Train each config (same data order and seed) and report parameters, training curve and validation loss."""
    out = {}
    for label, cfg in configs.items():
        n = steps[label] if isinstance(steps, dict) else steps
        run = train(cfg, n, seq_len=seq_len, **kw)
        out[label] = dict(
            parameters=run.model.num_parameters(),
            steps=n,
            losses=run.losses,
            seconds=run.seconds,
            val_loss=evaluate(run.model, seq_len),
        )
    return out


def compare_seeds(
    configs: dict[str, ModelConfig],
    steps: int | dict[str, int],
    seeds: tuple[int, ...],
    seq_len: int = 64,
    measure: Callable[[Transformer], dict[str, float]] | None = None,
    **kw: Any,
) -> dict:
    """`compare` over several seeds (seed s: the same init seed and batches for every config). Per config: parameters,
    steps, validation loss per seed (`val_losses`), their mean (`val_loss`) and std (`val_std`), the mean training
    curve (`losses`), and `measure(model)` of each trained model as {key: [value per seed]} (`measured`)."""
    out = {}
    for label, cfg in configs.items():
        n = steps[label] if isinstance(steps, dict) else steps
        runs = [train(cfg, n, seq_len=seq_len, seed=s, **kw) for s in seeds]
        vals = [evaluate(r.model, seq_len) for r in runs]
        measured: dict[str, list] = {}
        for r in runs if measure is not None else ():
            for k, v in measure(r.model).items():
                measured.setdefault(k, []).append(v)
        mean, std = mean_std(vals)
        out[label] = dict(
            parameters=runs[0].model.num_parameters(),
            steps=n,
            val_losses=vals,
            val_loss=mean,
            val_std=std,
            losses=[sum(c) / len(c) for c in zip(*(r.losses for r in runs), strict=True)],
            seconds=sum(r.seconds for r in runs),
            **({"measured": measured} if measure is not None else {}),
        )
    return out
