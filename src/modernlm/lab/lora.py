"""LoRA against full fine-tuning: a small byte model pre-trained on Python source is fine-tuned on English prose (the
standard library's pydoc topics) for the same number of steps, fully or with LoRA adapters (modernlm.finetune.lora) of
rank 8 to 64 on Q, K, V, O or on every linear of the blocks, with norms and embeddings frozen or trained. Per setting:
trainable parameters, one step's training memory (modernlm.analysis.training_memory), one step's FLOPs as torch's
FlopCounterMode counts the matmuls actually run, and the held-out loss on the new text."""

from __future__ import annotations

import copy
import functools
import sysconfig
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ..analysis.memory import training_memory
from ..analysis.params import adapter_parameters
from ..finetune.lora import ATTENTION_TARGETS, MLP_TARGETS, LoraConfig, apply_lora
from ..training.optim import build_optimizer, lr_at, set_lr
from . import Finding, experiment
from ._seeds import difference, pm, rule, seeds
from ._train import batch, evaluate, one_thread, tiny_config, train

ALL = ATTENTION_TARGETS + MLP_TARGETS
LR, B, T = 5e-3, 16, 64
REF = "LoRA r=8 QKVO"  # the setting the claim is checked on


@functools.lru_cache(maxsize=1)
def prose() -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) bytes of the stdlib's pydoc_data/topics.py (English documentation in Python strings)."""
    data = (Path(sysconfig.get_paths()["stdlib"]) / "pydoc_data" / "topics.py").read_bytes()[:400_000]
    data = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()  # (N,)
    cut = int(0.9 * len(data))
    return data[:cut], data[cut:]


def settings(quick: bool) -> dict[str, LoraConfig | None]:
    """None: full fine-tuning; else the LoRA config (alpha = 2r, so the update's scale stays alpha/r = 2)."""

    def lora(r, targets, **kw):
        return LoraConfig(r=r, alpha=2.0 * r, targets=targets, **kw)

    if quick:
        return {"full": None, "LoRA r=8 QKVO": lora(8, ATTENTION_TARGETS), "LoRA r=8 all + norms, embeddings":
                lora(8, ALL, train_norms=True, train_embeddings=True)}  # fmt: skip
    return {
        "full": None,
        "LoRA r=8 QKVO": lora(8, ATTENTION_TARGETS),
        "LoRA r=8 all": lora(8, ALL),
        "LoRA r=32 all": lora(32, ALL),
        "LoRA r=64 all": lora(64, ALL),
        "LoRA r=8 all + norms, embeddings": lora(8, ALL, train_norms=True, train_embeddings=True),
    }


def prepare(base: torch.nn.Module, setting: LoraConfig | None, seed: int) -> torch.nn.Module:
    """A copy of the base model, with adapters (initialised from `seed`) or fully trainable."""
    torch.manual_seed(seed)
    model = copy.deepcopy(base).train()
    return model if setting is None else apply_lora(model, copy.deepcopy(setting))


@one_thread()
def finetune(model: torch.nn.Module, steps: int, seed: int) -> list[float]:
    """AdamW (the trainer's groups: trainable matrices decay) with warmup over 10% and cosine, on the prose."""
    opt, g, data, losses = (
        build_optimizer(model, lr=LR, weight_decay=0.1),
        torch.Generator().manual_seed(seed),
        prose()[0],
        [],
    )
    for step in range(steps):
        set_lr(opt, lr_at(step, LR, 0.1 * LR, steps // 10, steps))
        ids = batch(data, B, T, g)  # (B, T + 1)
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        losses.append(loss.item())
    return losses


@one_thread()
def step_flops(model: torch.nn.Module) -> dict[str, int]:
    """FLOPs of one forward and of one forward + backward on a (B, T) batch, as FlopCounterMode counts them."""
    ids = batch(prose()[0], B, T, torch.Generator().manual_seed(0))  # (B, T + 1)
    with FlopCounterMode(display=False) as fwd, torch.no_grad():
        model(ids[:, :-1])
    with FlopCounterMode(display=False) as both:
        F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()).backward()
    model.zero_grad(set_to_none=True)
    return dict(forward=fwd.get_total_flops(), step=both.get_total_flops())


def _measure(cfg, model, setting) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    adapters = None if setting is None else {name: setting.r for name in setting.targets}
    if setting is None:
        mem = training_memory(cfg, B, T, device="cpu")
    else:
        mem = training_memory(cfg, B, T, device="cpu", trainable_parameters=trainable, adapters=adapters)
    return dict(
        trainable=trainable,
        adapter_formula=0 if adapters is None else adapter_parameters(cfg, adapters),
        memory_bytes=mem["step_peak"],
        optimizer_bytes=mem["optimizer_states"],
        **step_flops(model),
    )


@experiment(
    "lora-vs-full",
    "LoRA fine-tunes with far less memory (no gradients or optimizer states for the frozen weights) at slightly "
    "higher compute per step, and at equal steps comes close to full fine-tuning; rank 8-64 and the choice of modules "
    "matter little",
    "Hu et al. 2021 (LoRA); study cards on parameter-efficient fine-tuning",
)
def lora_vs_full(quick: bool) -> Finding:
    d, layers, base_steps, steps = (64, 2, 20, 8) if quick else (96, 2, 400, 150)
    cfg = tiny_config(d_model=d, n_layers=layers, ffn_multiple_of=8)
    base = train(cfg, base_steps, seed=0).model
    held_out = prose()[1]
    base_loss = evaluate(base, T, 16, data=held_out)
    seed_list = seeds(quick)
    res = _runs(cfg, base, settings(quick), steps, seed_list, held_out)
    full = res["full"]
    gaps = {k: difference(v["val_losses"], full["val_losses"]) for k, v in res.items() if k != "full"}
    memory_ok = res[REF]["memory_bytes"] < full["memory_bytes"]  # the claim's LoRA: a low rank on a few modules
    heavier = [k for k, v in res.items() if v["memory_bytes"] >= full["memory_bytes"]]
    compute_higher = res[REF]["step"] > full["step"]
    close = gaps[REF].mean <= 0 or gaps[REF].negligible(0.05)
    verdict = "confirmed" if memory_ok and compute_higher and close else "depends"
    if not memory_ok:
        verdict = "refuted"
    numbers = dict(d_model=d, layers=layers, base_steps=base_steps, steps=steps, base_loss=base_loss, runs=res)
    numbers.update(seeds=seed_list, minus_full={k: g.to_dict() for k, g in gaps.items()}, rule=rule(len(seed_list)))
    return Finding(verdict, _summary(numbers, gaps, heavier), numbers, functools.partial(_plot, res=res))


def _runs(
    cfg, base, configs: dict[str, LoraConfig | None], steps: int, seed_list: list[int], held_out: torch.Tensor
) -> dict[str, dict]:
    """Each setting fine-tuned from the base once per seed: its held-out losses, seed 0's training curve, and the
    counts of `_measure` (on a fresh copy with seed 0's adapters)."""
    res = {}
    for label, setting in configs.items():
        vals, curves = [], []
        for s in seed_list:
            model = prepare(base, setting, s)
            curves.append(finetune(model, steps, s))
            vals.append(evaluate(model, T, 16, data=held_out))
        res[label] = dict(_measure(cfg, prepare(base, setting, 0), setting), val_losses=vals, curve=curves[0])
    return res


def _summary(numbers: dict, gaps: dict, heavier: list[str]) -> str:
    """The finding's paragraph: the base, each setting's counts and loss, the gaps to full fine-tuning."""
    res, seed_list = numbers["runs"], numbers["seeds"]
    full = res["full"]
    return (
        f"Base: {numbers['layers']} layers, {numbers['d_model']} wide, pre-trained {numbers['base_steps']} steps on "
        f"Python source (held-out prose loss {numbers['base_loss']:.3f}); fine-tuned {numbers['steps']} steps of {B} x "
        f"{T} bytes of English prose at lr {LR:g}, {len(seed_list)} seeds (data order and adapter init). "
        + "; ".join(
            f"{k}: {v['trainable']:,} trainable parameters, step memory {v['memory_bytes'] / 2**20:.2f} MiB "
            f"(optimizer states {v['optimizer_bytes'] / 2**10:.0f} KiB), {v['step'] / 1e6:.1f} MFLOPs per step "
            f"({v['step'] / v['forward']:.2f}x its forward), held-out loss {pm(v['val_losses'])}"
            for k, v in res.items()
        )
        + ". Loss minus full fine-tuning's: "
        + ", ".join(f"{k} {g.text()}" for k, g in gaps.items())
        + f". Compute per step by FLOP count: {REF} {res[REF]['step'] / full['step']:.2f}x full fine-tuning ("
        "the frozen weights need no weight gradients; wall-clock time is left to a timed run). Settings needing at "
        f"least full fine-tuning's memory: {', '.join(heavier) or 'none'} (a rank near the width is not low rank). "
        + rule(len(seed_list))
        + " 'Close' allows a real difference under 0.05 nats."
    )


def _plot(fig, *, res: dict[str, dict]) -> None:
    """Seed 0's training curves, each setting's step memory, and the mean held-out losses."""
    ax1, ax2, ax3 = fig.subplots(1, 3)
    for k, v in res.items():
        ax1.plot(v["curve"], label=k, lw=0.8)
    ax1.set_xlabel("fine-tuning step (seed 0)")
    ax1.set_ylabel("training loss on prose")
    ax1.legend(fontsize=6)
    labels = list(res)
    ax2.barh(labels, [res[k]["memory_bytes"] / 2**20 for k in labels])
    ax2.set_xlabel("one step's memory (MiB)")
    ax2.tick_params(axis="y", labelsize=6)
    means = [sum(res[k]["val_losses"]) / len(res[k]["val_losses"]) for k in labels]
    ax3.barh(labels, means)
    ax3.set_xlim(min(means) - 0.1, max(means) + 0.05)
    ax3.set_xlabel("held-out prose loss")
    ax3.set_yticks([])
