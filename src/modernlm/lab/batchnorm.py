"""LayerNorm against BatchNorm on padded, variable-length text. Each batch holds sequences of random lengths padded to
the batch's length (padding masked from attention and the loss). LayerNorm normalises each token by itself;
BatchNorm (layers/norm.py) normalises each feature over every token of the batch, padding included, so a sequence's
output depends on its companions and on how much padding they bring, and evaluation uses running averages of those
statistics (their `momentum` sets how fast they follow). Measured: held-out loss in evaluation mode, the gap to the
same model in training mode (batch statistics), and how much one sequence's logits move when its companions change."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..layers.norm import BatchNorm
from ..model import Transformer
from ..training.optim import build_optimizer, lr_at, set_lr
from . import Finding, experiment
from ._seeds import difference, pm, rule, seeds
from ._train import corpus, one_thread, tiny_config

PAD, T, LR = 0, 64, 3e-3  # byte 0 never occurs in the corpus


def padded_batch(data: torch.Tensor, batch_size: int, g: torch.Generator, min_len: int = 8) -> tuple:
    """(ids (B, T+1), attention mask (B, T), targets (B, T) with -100 on padding): sequences of lengths in
    [min_len, T], right-padded with PAD."""
    lengths = torch.randint(min_len, T + 1, (batch_size,), generator=g)
    starts = torch.randint(0, len(data) - T - 1, (batch_size,), generator=g)
    ids = torch.full((batch_size, T + 1), PAD)
    for i, (s, n) in enumerate(zip(starts.tolist(), lengths.tolist(), strict=True)):
        ids[i, : n + 1] = data[s : s + n + 1]
    real = torch.arange(T)[None] < lengths[:, None]  # (B, T): inputs 0..n-1 are real
    targets = ids[:, 1:].masked_fill(~real, -100)  # (B, T)
    return ids, real.long(), targets


def loss_of(model: Transformer, ids, mask, targets) -> torch.Tensor:
    logits = model(ids[:, :-1], attention_mask=mask)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


def set_momentum(model: torch.nn.Module, momentum: float) -> None:
    for m in model.modules():
        if isinstance(m, BatchNorm):
            m.momentum = momentum


@one_thread()
def train_padded(cfg, steps: int, seed: int, batch_size: int, momentum: float = 0.1) -> Transformer:
    """The lab's AdamW and schedule, on padded variable-length batches."""
    torch.manual_seed(seed)
    model = Transformer(cfg).train()
    set_momentum(model, momentum)
    opt, g, data = build_optimizer(model, lr=LR, weight_decay=0.1), torch.Generator().manual_seed(seed), corpus()[0]
    for step in range(steps):
        set_lr(opt, lr_at(step, LR, 0.1 * LR, 0, steps))
        loss = loss_of(model, *padded_batch(data, batch_size, g))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model


@one_thread()
@torch.no_grad()
def probe(model: Transformer, batch_size: int, batches: int = 4) -> dict[str, float]:
    """On held-out padded batches: loss in evaluation mode and in training mode (batch statistics; running statistics
    left untouched), and the largest change of the first sequence's logits when its companions are redrawn."""
    g, data = torch.Generator().manual_seed(1234), corpus()[1]
    probe_model = copy.deepcopy(model)
    set_momentum(probe_model, 0.0)  # training-mode passes must not move the running statistics
    evals, trains, moves = [], [], []
    for _ in range(batches):
        ids, mask, targets = padded_batch(data, batch_size, g)
        evals.append(float(loss_of(probe_model.eval(), ids, mask, targets)))
        trains.append(float(loss_of(probe_model.train(), ids, mask, targets)))
        other_ids, other_mask, _ = padded_batch(data, batch_size, g)
        ids2, mask2 = torch.cat([ids[:1], other_ids[1:]]), torch.cat([mask[:1], other_mask[1:]])
        n = int(mask[0].sum())
        a = probe_model(ids[:, :-1], attention_mask=mask)[0, :n]  # (n, V)
        b = probe_model(ids2[:, :-1], attention_mask=mask2)[0, :n]
        moves.append(float((a - b).abs().max() / a.abs().max()))
    return dict(eval_loss=sum(evals) / batches, train_mode_loss=sum(trains) / batches, logit_move=max(moves))


def settings() -> dict[str, tuple]:
    """label: (norm kind, BatchNorm momentum)"""
    return {
        "LayerNorm": ("layernorm", 0.1),
        "BatchNorm, momentum 0.1": ("batchnorm", 0.1),
        "BatchNorm, momentum 0.01 (slow)": ("batchnorm", 0.01),
        "BatchNorm, momentum 0.5 (fast)": ("batchnorm", 0.5),
    }


@experiment(
    "layernorm-vs-batchnorm",
    "BatchNorm suits padded, variable-length text badly: its statistics mix unrelated sequences and padding, so a "
    "sequence's output depends on its batch and evaluation (running statistics, set by the momentum) differs from "
    "training; LayerNorm normalises each token alone",
    "Ba et al. 2016 (Layer Normalization); Shen et al. 2020 (PowerNorm: BatchNorm in transformers); study cards on "
    "normalisation",
)
def layernorm_vs_batchnorm(quick: bool) -> Finding:
    d, layers, steps, batch_size = (32, 2, 8, 4) if quick else (64, 2, 300, 8)
    seed_list, res = seeds(quick), {}
    for label, (norm, momentum) in settings().items():
        cfg = tiny_config(d_model=d, n_layers=layers, norm=norm, max_seq_len=T)
        per_seed = [
            probe(train_padded(cfg, steps, s, batch_size, momentum), batch_size, 2 if quick else 8) for s in seed_list
        ]
        res[label] = {k: [p[k] for p in per_seed] for k in per_seed[0]}
        res[label]["gaps"] = [
            e - t for e, t in zip(res[label]["eval_loss"], res[label]["train_mode_loss"], strict=True)
        ]
    ln, bn = res["LayerNorm"], res["BatchNorm, momentum 0.1"]
    quality = difference(bn["eval_loss"], ln["eval_loss"])  # > 0: LayerNorm is better
    momentum_vs = {k: difference(v["eval_loss"], bn["eval_loss"]) for k, v in res.items() if "(" in k}
    mixes = max(ln["logit_move"]) < 1e-5 and min(bn["logit_move"]) > 1e-3
    verdict = "confirmed" if mixes and quality.sign > 0 else "refuted" if quality.sign < 0 else "depends"
    summary = (
        f"{layers} layers, {d} wide, {steps} steps of batches of {batch_size} sequences of 8 to {T} bytes, "
        "right-padded (padding masked from attention and loss; BatchNorm's statistics include it), "
        f"{len(seed_list)} seeds. "
        + "; ".join(
            f"{k}: held-out loss in evaluation mode {pm(v['eval_loss'])}, evaluation minus training-mode (batch "
            f"statistics) loss {pm(v['gaps'])}, largest relative move of a sequence's logits when its companions "
            f"change {max(v['logit_move']):.1e}"
            for k, v in res.items()
        )
        + f". BatchNorm (momentum 0.1) minus LayerNorm: {quality.text()}; slow or fast running statistics minus "
        "momentum 0.1: "
        + ", ".join(f"{k} {dd.text()}" for k, dd in momentum_vs.items())
        + ". A LayerNorm model's outputs for a sequence "
        + ("do not depend on its batch; BatchNorm's do. " if mixes else "and a BatchNorm model's behave alike here. ")
        + rule(len(seed_list))
    )

    def plot(fig):
        ax1, ax2 = fig.subplots(1, 2)
        labels = list(res)
        for off, key, name in ((-0.2, "eval_loss", "evaluation mode"), (0.2, "train_mode_loss", "batch statistics")):
            ax1.bar([i + off for i in range(len(labels))], [sum(res[k][key]) / len(seed_list) for k in labels], 0.4,
                    label=name)  # fmt: skip
        lows = [min(res[k]["eval_loss"] + res[k]["train_mode_loss"]) for k in labels]
        ax1.set_ylim(min(lows) - 0.2, None)
        ax1.set_xticks(range(len(labels)), labels, fontsize=6)
        ax1.set_ylabel("held-out loss, padded batches")
        ax1.legend(fontsize=7)
        ax2.bar(range(len(labels)), [max(max(res[k]["logit_move"]), 1e-9) for k in labels])
        ax2.set_yscale("log")
        ax2.set_xticks(range(len(labels)), labels, fontsize=6)
        ax2.set_ylabel("relative logit change, companions redrawn")

    numbers = dict(d_model=d, layers=layers, steps=steps, batch_size=batch_size, seeds=seed_list, runs=res)
    numbers.update(bn_minus_ln=quality.to_dict(), momentum_vs_default={k: v.to_dict() for k, v in momentum_vs.items()})
    return Finding(verdict, summary, dict(numbers, rule=rule(len(seed_list))), plot)
