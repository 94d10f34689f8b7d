"""The deep-dive card's memory figures, recomputed: GPT-3's parameters (~350 GB) and activations (~90 GB at 1K tokens,
over 3 TB at 8K) from the card's formula (Korthikanti et al. 2022: 34·s·b·h + 5·a·s²·b bytes per layer at 16 bits)
and from `modernlm.analysis`; and a 7B model's KV cache under MHA, GQA and MQA (4 GB / 1 GB / 0.125 GB)."""

from __future__ import annotations

import dataclasses

import torch

from ..analysis import activation_bytes, kv_cache_bytes, parameter_counts
from ..analysis.memory import korthikanti_layer_bytes
from ..config import ModelConfig
from . import Finding, experiment

GB, GiB = 1e9, 1024**3

# GPT-3 175B (Brown et al. 2020, table 2.1): 96 layers, width 12288, 96 heads, 2048 learned positions, GELU MLP of
# 4x width, LayerNorm, biases everywhere, the embedding tied to the output, dropout 0.1 (Korthikanti's formula
# counts the dropout masks)
GPT3 = ModelConfig(vocab_size=50257, d_model=12288, n_layers=96, n_heads=96, ffn="gelu", ffn_hidden=4 * 12288,
                   norm="layernorm", positions="learned", max_seq_len=2048, qkv_bias=True, out_bias=True,
                   mlp_bias=True, tie_embeddings=True, dropout=0.1)  # fmt: skip
CARD_GPT3 = {"parameters": 350 * GB, "activations_1k": 90 * GB, "activations_8k_over": 3000 * GB}


def _gpt3_activations(seq: int) -> dict[str, float]:
    """Bytes of activations of one sequence (batch 1, 16 bits): the card's formula and modernlm.analysis (our block
    counted tensor by tensor; dense "math" attention that keeps the s x s scores, as the formula assumes; and a
    fused kernel that keeps none)."""
    cfg = dataclasses.replace(GPT3, max_seq_len=max(seq, GPT3.max_seq_len))
    kw = dict(precision="fp16", device="cuda")
    return dict(
        formula=GPT3.n_layers * korthikanti_layer_bytes(cfg, 1, seq),
        analysis=activation_bytes(cfg, 1, seq, attention_kernel="math", **kw)["total"],
        analysis_flash=activation_bytes(cfg, 1, seq, attention_kernel="flash", **kw)["total"],
    )


@experiment(
    "gpt3-memory",
    "GPT-3 (175B) needs ~350 GB for its parameters in 16 bits, and activations of ~90 GB for one 1K-token sequence "
    "and over 3 TB at 8K (activation memory grows with the square of the length)",
    "the deep-dive card on training memory; Brown et al. 2020 (GPT-3); Korthikanti et al. 2022, section 4",
)
def gpt3_memory(quick: bool) -> Finding:
    counts = parameter_counts(GPT3)
    lengths = [1024, 8192] if quick else [512, 1024, 2048, 4096, 8192]
    acts = {s: _gpt3_activations(s) for s in lengths}
    params = 2 * counts["total"]
    analysis_error = {s: a["analysis"] / a["formula"] - 1 for s, a in acts.items()}
    card_ok = (
        abs(params / CARD_GPT3["parameters"] - 1) < 0.02
        and abs(acts[1024]["formula"] / CARD_GPT3["activations_1k"] - 1) < 0.05
        and acts[8192]["formula"] > CARD_GPT3["activations_8k_over"]
    )
    analysis_ok = max(abs(e) for e in analysis_error.values()) < 0.2
    verdict = "confirmed" if card_ok and analysis_ok else "depends" if card_ok else "refuted"
    summary = (
        f"GPT-3 as published (96 layers, width 12288, 96 heads, GELU MLP, vocabulary 50257, tied embedding) has "
        f"{counts['total'] / 1e9:.1f} B parameters by modernlm.analysis: {params / GB:.0f} GB in 16 bits (card: ~350 "
        "GB). Activations of one sequence in 16 bits, the card's formula L·(34·s·h + 5·a·s²) vs modernlm.analysis "
        "(dense attention, dropout masks of 1 byte) vs a fused attention kernel: "
        + "; ".join(
            f"{s} tokens: {a['formula'] / GB:,.1f} vs {a['analysis'] / GB:,.1f} vs {a['analysis_flash'] / GB:,.1f} GB"
            for s, a in acts.items()
        )
        + f". The card's 90 GB at 1K and 'over 3 TB' at 8K ({acts[8192]['formula'] / 1e12:.2f} TB) are this "
        f"formula's; the per-tensor count agrees within {100 * max(abs(e) for e in analysis_error.values()):.0f}% "
        "(it also counts the float32 logits and the GELU's two saved tensors). The s² term (the attention scores "
        f"and their dropout) is {100 * _square_share(8192):.0f}% of the total at 8K: a fused kernel (FlashAttention) "
        f"that keeps no scores needs {acts[8192]['analysis_flash'] / GB:,.0f} GB there."
    )

    def plot(fig):
        ax1, ax2 = fig.subplots(1, 2)
        xs = list(acts)
        for key, style, label in (("formula", "o-", "card: L(34sh + 5as²)"), ("analysis", "x--", "analysis (dense)"),
                                  ("analysis_flash", "s:", "analysis (fused kernel)")):  # fmt: skip
            ax1.plot(xs, [acts[s][key] / GB for s in xs], style, label=label)
        ax1.axhline(params / GB, color="gray", lw=0.8, label="parameters (16-bit)")
        ax1.set_xscale("log", base=2)
        ax1.set_yscale("log")
        ax1.set_xlabel("sequence length (batch 1)")
        ax1.set_ylabel("GB")
        ax1.legend(fontsize=8)
        ax2.bar(["parameters", "act. 1K", "act. 8K"], [params / GB, acts[1024]["formula"] / GB,
                acts[8192]["formula"] / GB], label="recomputed")  # fmt: skip
        ax2.plot([0, 1, 2], [350, 90, 3000], "r_", ms=30, mew=2, label="card")
        ax2.set_yscale("log")
        ax2.set_ylabel("GB")
        ax2.legend()

    numbers = dict(parameters=counts["total"], parameter_bytes=params, activations={str(s): a for s, a in acts.items()},
                   analysis_relative_error={str(s): e for s, e in analysis_error.items()})  # fmt: skip
    return Finding(verdict, summary, numbers, plot)


def _square_share(seq: int) -> float:
    """The 5·a·s² part of the card's per-layer formula, as a share of it."""
    return 5 * GPT3.n_heads * seq / (34 * GPT3.d_model + 5 * GPT3.n_heads * seq)


# A 7B Llama (Touvron et al. 2023): 32 layers, 32 heads of 128; GQA with 8 KV heads (Llama 2 70B's ratio), MQA 1
SEVEN_B = dict(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32)
KV_HEADS = {"MHA": 32, "GQA-8": 8, "MQA": 1}
CARD_KV = {"MHA": 4 * GB, "GQA-8": 1 * GB, "MQA": 0.125 * GB}


@experiment(
    "kv-cache-7b",
    "A 7B model's KV cache is 4 GB with multi-head attention, 1 GB with GQA (8 KV heads) and 0.125 GB with MQA",
    "the deep-dive card on the KV cache (2 x layers x KV heads x head dim x tokens x bytes); Shazeer 2019 (MQA); "
    "Ainslie et al. 2023 (GQA)",
)
def kv_cache_7b(quick: bool) -> Finding:
    settings = {f"{T} tokens, {name}": (T, dt) for T in (2048, 4096, 8192)
                for name, dt in (("fp16", torch.float16), ("fp32", torch.float32))}  # fmt: skip
    sizes = {
        label: {k: kv_cache_bytes(ModelConfig(**SEVEN_B, n_kv_heads=n), T, 1, dt) for k, n in KV_HEADS.items()}
        for label, (T, dt) in settings.items()
    }
    matches = [label for label, s in sizes.items() if all(abs(s[k] / CARD_KV[k] - 1) < 0.1 for k in KV_HEADS)]
    ratios = {k: sizes["4096 tokens, fp16"]["MHA"] / v for k, v in sizes["4096 tokens, fp16"].items()}
    verdict = "depends" if matches and "4096 tokens, fp16" not in matches else "confirmed" if matches else "refuted"
    at = sizes["8192 tokens, fp16"]
    ctx = sizes["4096 tokens, fp16"]
    summary = (
        "2 (K and V) x 32 layers x KV heads x 128 x tokens x bytes, batch 1 (modernlm.analysis.kv_cache_bytes): "
        f"at 8192 tokens in fp16, MHA {at['MHA'] / GB:.2f} GB ({at['MHA'] / GiB:.0f} GiB), GQA-8 "
        f"{at['GQA-8'] / GB:.2f} GB, MQA {at['MQA'] / GB:.3f} GB; at Llama 2's own 4096-token context in fp16 half "
        f"that: {ctx['MHA'] / GB:.2f} / {ctx['GQA-8'] / GB:.2f} / {ctx['MQA'] / GB:.3f} GB. The card's 4 / 1 / "
        f"0.125 GB are reproduced (within 10%) by: {', '.join(matches) or 'no setting'} (at 8192 tokens in fp16 "
        f"exactly {at['MHA'] / GiB:g} / {at['GQA-8'] / GiB:g} / {at['MQA'] / GiB:g} GiB): they assume 8K tokens in "
        "16 bits (or 4K in 32 bits, or two 4K sequences). The ratios hold whatever the length: MHA / GQA-8 = "
        f"{ratios['GQA-8']:.0f} and MHA / MQA = {ratios['MQA']:.0f}, the query heads per KV head. Each token costs "
        f"{at['MHA'] // 8192 // 1024} KiB of cache in fp16 with MHA."
    )

    def plot(fig):
        ax = fig.subplots(1, 1)
        labels = list(sizes)
        for i, k in enumerate(KV_HEADS):
            ax.bar([x + 0.27 * i for x in range(len(labels))], [sizes[lb][k] / GB for lb in labels], 0.27, label=k)
        for k, v in CARD_KV.items():
            ax.axhline(v / GB, lw=0.8, ls="--", color="gray")
            ax.text(len(labels) - 0.4, v / GB, f"card {k}", fontsize=7, va="bottom")
        ax.set_xticks([x + 0.27 for x in range(len(labels))], labels, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("KV cache, GB (batch 1)")
        ax.legend()

    return Finding(verdict, summary, dict(sizes=sizes, card=CARD_KV, matches=matches), plot)
