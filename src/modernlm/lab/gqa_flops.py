"""MQA and GQA shrink the KV cache by n_heads / n_kv_heads but keep about MHA's FLOPs: only the K and V projections
get narrower; the queries, the scores and the weighted sum over values still run over every query head."""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ..analysis import forward_flops, kv_cache_bytes
from ..config import ModelConfig
from ..model import Transformer
from . import Finding, experiment

SEVEN_B = dict(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, max_seq_len=4096)  # Llama 7B's shape
KV = {"MHA": 32, "GQA-8": 8, "MQA": 1}
SMALL = dict(vocab_size=256, d_model=128, n_layers=2, n_heads=8, ffn_multiple_of=16)


def _counted(n_kv: int, T: int) -> tuple[int, int]:
    """(modernlm.analysis, FlopCounterMode) forward FLOPs of a small model with `n_kv` KV heads on 2 x T tokens."""
    torch.manual_seed(0)
    cfg = ModelConfig(**SMALL, n_kv_heads=n_kv, max_seq_len=T)
    model = Transformer(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, T))
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(ids)
    return forward_flops(cfg, T, 2)["total"], counter.get_total_flops()


@experiment(
    "mqa-gqa-flops",
    "MQA and GQA have about the FLOPs of multi-head attention (they save memory and bandwidth, not compute)",
    "study cards on GQA/MQA (Modern Blocks); Shazeer 2019; Ainslie et al. 2023",
)
def mqa_gqa_flops(quick: bool) -> Finding:
    lengths = [512, 4096] if quick else [512, 1024, 2048, 4096, 8192]
    big = {T: {k: forward_flops(ModelConfig(**SEVEN_B, n_kv_heads=n), T)["per_token"] for k, n in KV.items()}
           for T in lengths}  # fmt: skip
    kv = {k: kv_cache_bytes(ModelConfig(**SEVEN_B, n_kv_heads=n), 4096, 1, torch.float16) for k, n in KV.items()}
    small_T = 64 if quick else 256
    small = {n: _counted(n, small_T) for n in (8, 2, 1)}
    exact = all(a == c for a, c in small.values())
    ratio = {T: {k: v / f["MHA"] for k, v in f.items()} for T, f in big.items()}
    worst = min(r for f in ratio.values() for r in f.values())
    # the rule: "about the same" = under a fifth saved, against a KV cache n_heads / n_kv_heads times smaller
    verdict = "confirmed" if exact and worst > 0.8 else "depends" if exact else "refuted"
    summary = (
        "Forward FLOPs per token of a 7B-shaped model (32 layers, width 4096, 32 query heads, SwiGLU 11008) by "
        "modernlm.analysis, relative to MHA: "
        + "; ".join(
            f"{T} tokens: GQA-8 {r['GQA-8']:.3f}, MQA {r['MQA']:.3f} ({big[T]['MHA'] / 1e9:.2f} GFLOP for MHA)"
            for T, r in ratio.items()
        )
        + f". The KV cache at 4096 tokens in fp16: MHA {kv['MHA'] / 2**20:.0f} MiB, GQA-8 {kv['GQA-8'] / 2**20:.0f} "
        f"MiB, MQA {kv['MQA'] / 2**20:.0f} MiB ({kv['MHA'] / kv['MQA']:.0f}x less). Only the K and V projections "
        "shrink (2·2·D·K·Dh per token and layer instead of 2·2·D·H·Dh); the query projection, the output "
        "projection, the FFN and the scores and values over all H query heads stay, so the saving is at most "
        f"{100 * (1 - worst):.0f}% and falls as the context grows (the score FLOPs grow with it). Counted on a "
        f"small model (width {SMALL['d_model']}, 8 query heads, {small_T} tokens) by FlopCounterMode vs the "
        "analysis: "
        + ", ".join(f"{n} KV heads {c / 1e6:.2f} vs {a / 1e6:.2f} M" for n, (a, c) in small.items())
        + f" ({'exact' if exact else 'NOT equal'}). Rule: 'about MHA's FLOPs' holds if under a fifth is saved."
    )

    def plot(fig):
        ax1, ax2 = fig.subplots(1, 2)
        for k in KV:
            ax1.plot(lengths, [ratio[T][k] for T in lengths], "o-", label=k)
        ax1.set_xscale("log", base=2)
        ax1.set_ylim(0, 1.05)
        ax1.set_xlabel("context length")
        ax1.set_ylabel("forward FLOPs per token / MHA's")
        ax1.legend()
        ax2.bar(list(kv), [v / 2**20 for v in kv.values()])
        ax2.set_yscale("log")
        ax2.set_ylabel("KV cache at 4096 tokens, fp16 (MiB)")

    numbers = dict(per_token={str(T): f for T, f in big.items()}, relative={str(T): r for T, r in ratio.items()},
                   kv_bytes=kv, small_tokens=small_T, small_model=SMALL,
                   counted={str(n): dict(analysis=a, counted=c) for n, (a, c) in small.items()})  # fmt: skip
    return Finding(verdict, summary, numbers, plot)
