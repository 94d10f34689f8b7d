"""Attention heads: one head against several at the same width (the same parameters), and multi-head (MHA) against
grouped-query (GQA) and multi-query (MQA) attention at equal parameters (the K and V projections GQA/MQA drop go to
the FFN, so every model has the same count), with the KV cache each needs (modernlm.analysis)."""

from __future__ import annotations

import torch

from ..analysis import kv_cache_bytes, parameter_counts
from ..config import ModelConfig
from . import Finding, experiment
from ._seeds import difference, pm, rule, seeds
from ._train import compare_seeds, tiny_config

TOLERANCE = 0.02  # nats: "barely any" degradation
SLIGHT = 0.1  # nats: "slight" degradation
CACHE_TOKENS = 4096  # the KV cache is reported at this many tokens (batch 1, fp16)


def configs(d: int, layers: int, heads: int) -> dict[str, ModelConfig]:
    """Single-head and MHA at the same width; GQA (max(2, heads/4) KV heads) and MQA with the FFN widened by the
    dropped K, V parameters (2·D·(H - K)·Dh per layer over the SwiGLU's 3·D per hidden unit, rounded to the
    nearest unit)."""
    base = dict(d_model=d, n_layers=layers, ffn_multiple_of=8)
    mha = tiny_config(**base, n_heads=heads)
    out = {"single head": tiny_config(**base, n_heads=1, ffn_hidden=mha.ffn_hidden), f"MHA ({heads} heads)": mha}
    gqa = max(2, heads // 4)
    for label, kv in ((f"GQA ({heads} heads, {gqa} KV)", gqa), (f"MQA ({heads} heads, 1 KV)", 1)):
        dropped = 2 * d * (heads - kv) * mha.head_dim
        out[label] = tiny_config(
            **base, n_heads=heads, n_kv_heads=kv, ffn_hidden=mha.ffn_hidden + round(dropped / (3 * d))
        )
    return out


@experiment(
    "mha-gqa-mqa",
    "Several heads beat one head of the same width; at equal parameters GQA loses barely anything against MHA and MQA "
    "slightly more, while their KV caches shrink by n_heads / n_kv_heads",
    "Shazeer 2019 (MQA); Ainslie et al. 2023 (GQA); study cards, Modern Blocks table (MQA slight degradation, GQA-8 "
    "barely any)",
)
def mha_gqa_mqa(quick: bool) -> Finding:
    d, layers, heads, steps = (64, 2, 4, 15) if quick else (96, 3, 8, 250)
    cfgs = configs(d, layers, heads)
    seed_list = seeds(quick)
    res = compare_seeds(cfgs, steps, seed_list, batch_size=8 if quick else 16)
    for label, cfg in cfgs.items():
        res[label].update(
            formula_parameters=parameter_counts(cfg)["total"],
            kv_heads=cfg.n_kv_heads,
            head_dim=cfg.head_dim,
            ffn_hidden=cfg.ffn_hidden,
            kv_bytes=kv_cache_bytes(cfg, CACHE_TOKENS, dtype=torch.float16),
        )
    single, mha, gqa, mqa = (res[k] for k in cfgs)
    multi = difference(single["val_losses"], mha["val_losses"])  # > 0: several heads are better
    d_gqa = difference(gqa["val_losses"], mha["val_losses"])  # > 0: GQA is worse
    d_mqa = difference(mqa["val_losses"], mha["val_losses"])
    multi_ok = multi.sign > 0
    gqa_ok = d_gqa.mean <= 0 or d_gqa.negligible(TOLERANCE)
    mqa_ok = d_mqa.mean < SLIGHT
    verdict = "confirmed" if multi_ok and gqa_ok and mqa_ok else "depends"
    if multi.sign < 0 or not (d_gqa.mean <= 0 or d_gqa.negligible(SLIGHT)):
        verdict = "refuted"
    summary = (
        f"{layers} layers, {d} wide, {steps} steps of {8 if quick else 16} x 64 bytes, {len(seed_list)} seeds: "
        + "; ".join(
            f"{k}: head dim {v['head_dim']}, FFN {v['ffn_hidden']}, {v['parameters']:,} parameters, KV cache at "
            f"{CACHE_TOKENS} tokens (fp16) {v['kv_bytes'] / 2**10:,.0f} KiB, validation loss {pm(v['val_losses'])}"
            for k, v in res.items()
        )
        + f". One head minus {heads} heads: {multi.text()}; GQA minus MHA: {d_gqa.text()}; MQA minus MHA: "
        f"{d_mqa.text()}. 'Barely any' allows a real difference under {TOLERANCE} nats, 'slight' one under {SLIGHT}. "
        + rule(len(seed_list))
    )

    def plot(fig):
        ax1, ax2 = fig.subplots(1, 2)
        labels = list(res)
        ax1.bar(labels, [v["val_loss"] for v in res.values()], yerr=[v["val_std"] for v in res.values()])
        ax1.set_ylim(min(v["val_loss"] for v in res.values()) - 0.1, max(v["val_loss"] for v in res.values()) + 0.05)
        ax1.set_ylabel(f"validation loss (mean ± std, {len(seed_list)} seeds)")
        ax1.tick_params(axis="x", labelsize=7)
        ax2.bar(labels, [v["kv_bytes"] / 2**10 for v in res.values()])
        ax2.set_ylabel(f"KV cache at {CACHE_TOKENS} tokens, fp16 (KiB)")
        ax2.tick_params(axis="x", labelsize=7)

    numbers = dict(d_model=d, layers=layers, heads=heads, steps=steps, seeds=seed_list, runs=res)
    numbers.update(single_minus_mha=multi.to_dict(), gqa_minus_mha=d_gqa.to_dict(), mqa_minus_mha=d_mqa.to_dict())
    return Finding(verdict, summary, dict(numbers, cache_tokens=CACHE_TOKENS, rule=rule(len(seed_list))), plot)
