"""The self-attention FLOPs formula (8·T·D² for the four projections + 4·T²·D for Q K^T and weights x V, per layer
and sequence) against torch's FlopCounterMode, and the training-memory formula (modernlm.analysis: parameters,
gradients, AdamW's two states, activations) against the bytes a real training step keeps alive."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ..analysis import forward_flops, training_memory
from ..analysis.measure import LiveBytes, storages_of
from ..config import ModelConfig
from ..layers.attention import Attention
from ..model import Transformer
from . import Finding, experiment
from ._train import one_thread

D, H = 128, 4


def _attention_flops(T: int) -> tuple[int, int]:
    """(formula, counted) FLOPs of one attention layer's forward on one sequence of T tokens."""
    cfg = ModelConfig(vocab_size=16, d_model=D, n_layers=1, n_heads=H, max_seq_len=T)
    attn = Attention(cfg)
    x = torch.randn(1, T, D)  # (B, T, D)
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        attn(x, None, None)  # no positions, plain causal
    return 8 * T * D * D + 4 * T * T * D, counter.get_total_flops()


def _model_flops(cfg: ModelConfig, T: int) -> tuple[int, int]:
    """(modernlm.analysis.forward_flops total, counted) for a whole model's forward on 2 sequences."""
    model = Transformer(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, T))
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(ids)
    return forward_flops(cfg, T, 2)["total"], counter.get_total_flops()


def _bytes(tensors) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors)


def _memory(cfg: ModelConfig, B: int, T: int) -> dict[str, dict[str, int]]:
    """Each part of one AdamW step in float32: formula (training_memory) and measured bytes."""
    torch.manual_seed(0)
    model = Transformer(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, cfg.vocab_size, (B, T))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), LiveBytes(storages_of(model)) as live:
        loss = F.cross_entropy(model(ids).flatten(0, 1), ids.flatten())  # the logits die here, the log-softmax lives
        activations = live.now
        loss.backward()
    opt.step()
    states = [t for s in opt.state.values() for t in s.values() if t.dim() > 0]  # exp_avg, exp_avg_sq (not step)
    formula = training_memory(cfg, B, T, "fp32", "adamw", attention_kernel="flash", device="cpu")
    logits = B * T * cfg.vocab_size * 4  # counted by the formula's logits_and_loss; freed by this step
    measured = dict(
        parameters=_bytes(model.parameters()),
        gradients=_bytes(p.grad for p in model.parameters()),
        optimizer_states=_bytes(states),
        activations=activations + logits,
    )
    return {k: dict(formula=formula[k], measured=v) for k, v in measured.items()}


@one_thread()
def _measure(quick: bool) -> dict:
    lengths = [32, 64, 128] if quick else [64, 128, 256, 512, 1024]
    attention = {T: _attention_flops(T) for T in lengths}
    configs = {
        "llama-style": ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_multiple_of=16),
        "gpt-2017-style": ModelConfig(
            vocab_size=256,
            d_model=64,
            n_layers=2,
            n_heads=4,
            ffn="relu",
            norm="layernorm",
            norm_placement="post",
            positions="sinusoidal",
            qkv_bias=True,
        ),
    }
    models = {k: _model_flops(c, lengths[-1]) for k, c in configs.items()}
    memory = {k: _memory(c, 4, 64 if quick else 256) for k, c in configs.items()}
    return dict(lengths=lengths, attention=attention, models=models, memory=memory)


@experiment(
    "flops-memory-formulas",
    "Self-attention costs 8·T·D² + 4·T²·D FLOPs per layer (quadratic in T), and training memory is parameters + "
    "gradients + optimizer states (16 bytes per parameter with fp32 AdamW) + activations",
    "study cards on attention cost and training memory; Kaplan et al. 2020; Korthikanti et al. 2022",
)
def flops_memory_formulas(quick: bool) -> Finding:
    m = _measure(quick)
    att, lengths = m["attention"], m["lengths"]
    flops_exact = all(f == c for f, c in att.values()) and all(f == c for f, c in m["models"].values())
    errors = {k: {p: v["measured"] / v["formula"] - 1 for p, v in parts.items()} for k, parts in m["memory"].items()}
    worst = max(abs(e) for parts in errors.values() for e in parts.values())
    per_param = {
        k: sum(parts[p]["measured"] for p in ("parameters", "gradients", "optimizer_states"))
        / (parts["parameters"]["measured"] / 4)
        for k, parts in m["memory"].items()
    }
    share = {T: 4 * T * T * D / f for T, (f, _) in att.items()}  # the quadratic term's share
    verdict = "confirmed" if flops_exact and worst < 0.05 else "depends" if flops_exact or worst < 0.05 else "refuted"
    summary = (
        f"One attention layer (D={D}, {H} heads, causal, dense kernel), 8·T·D² + 4·T²·D vs counted: "
        + ", ".join(f"T={T}: {f / 1e6:.1f} M vs {c / 1e6:.1f} M" for T, (f, c) in att.items())
        + f" ({'exact' if all(f == c for f, c in att.values()) else 'NOT equal'}); the T² term is "
        f"{100 * share[lengths[0]]:.0f}% of it at T={lengths[0]} and {100 * share[lengths[-1]]:.0f}% at "
        f"T={lengths[-1]} (it passes the projections at T = 2·D = {2 * D}). Whole models, modernlm.analysis vs "
        "FlopCounterMode: "
        + ", ".join(f"{k}: {f / 1e6:.1f} M vs {c / 1e6:.1f} M" for k, (f, c) in m["models"].items())
        + ". One fp32 AdamW step, formula vs measured bytes: "
        + "; ".join(
            k
            + ": "
            + ", ".join(f"{p} {v['formula'] / 1024:.0f} vs {v['measured'] / 1024:.0f} KiB" for p, v in parts.items())
            for k, parts in m["memory"].items()
        )
        + f" (worst error {100 * worst:.1f}%); parameters + gradients + AdamW states = "
        + ", ".join(f"{v:.1f}" for v in per_param.values())
        + " bytes per parameter."
    )

    def plot(fig):
        ax1, ax2 = fig.subplots(1, 2)
        ax1.plot(lengths, [att[T][0] for T in lengths], "o-", label="8TD² + 4T²D")
        ax1.plot(lengths, [att[T][1] for T in lengths], "x", ms=10, label="FlopCounterMode")
        ax1.set_xscale("log", base=2)
        ax1.set_yscale("log")
        ax1.set_xlabel("T")
        ax1.set_ylabel(f"FLOPs, one attention layer (D={D})")
        ax1.legend()
        parts = list(next(iter(m["memory"].values())))
        for i, k in enumerate(m["memory"]):
            ax2.bar([x + 0.4 * i for x in range(len(parts))], [100 * errors[k][p] for p in parts], 0.4, label=k)
        ax2.set_xticks([x + 0.2 for x in range(len(parts))], parts, fontsize=8)
        ax2.set_ylabel("measured / formula - 1 (%)")
        ax2.legend()

    numbers = dict(
        m,
        attention={str(T): dict(formula=f, counted=c) for T, (f, c) in att.items()},
        models={k: dict(formula=f, counted=c) for k, (f, c) in m["models"].items()},
        memory_relative_error=errors,
        bytes_per_parameter=per_param,
    )
    return Finding(verdict, summary, numbers, plot)
