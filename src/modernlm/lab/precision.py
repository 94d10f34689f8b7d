"""bfloat16 (1 sign, 8 exponent, 7 mantissa bits) against float16 (1-5-10): the ranges from the bit layouts, where
each overflows or rounds, and a training step whose small gradients float16 loses without loss scaling."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import ModelConfig
from ..model import Transformer
from . import Finding, experiment


def layout(exponent_bits: int, mantissa_bits: int) -> dict[str, float]:
    """IEEE-style limits from the bit counts: largest finite, smallest normal, smallest subnormal, epsilon."""
    bias = 2 ** (exponent_bits - 1) - 1
    return dict(
        max=(2 - 2.0**-mantissa_bits) * 2.0**bias,
        min_normal=2.0 ** (1 - bias),
        min_subnormal=2.0 ** (1 - bias - mantissa_bits),
        eps=2.0**-mantissa_bits,
    )


def _gradients(dtype: torch.dtype, scale: float, g: torch.Generator) -> tuple[float, float]:
    """(fraction of gradient entries that are exactly zero, relative error of the gradient against float64) after one
    backward pass of a tiny model in `dtype`, with the loss multiplied by `scale` (1 = no loss scaling) and the
    gradients divided back in float64."""
    cfg = ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, max_seq_len=64, ffn_multiple_of=32)
    torch.manual_seed(0)
    reference = Transformer(cfg).double()
    ids = torch.randint(0, 256, (4, 32), generator=g)
    grads = {}
    for name, model, s in (("ref", reference, 1.0), ("low", Transformer(cfg).to(dtype), scale)):
        model.load_state_dict({k: v.to(model.embed.weight.dtype) for k, v in reference.state_dict().items()})
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.double().flatten(0, 1), ids[:, 1:].flatten()) * 1e-3  # a small loss, as late
        (loss * s).backward()  # in training or with a small learning-rate-scaled objective
        grads[name] = torch.cat([p.grad.double().flatten() / s for p in model.parameters()])
    zero = float((grads["low"] == 0).double().mean() - (grads["ref"] == 0).double().mean())
    error = float((grads["low"] - grads["ref"]).norm() / grads["ref"].norm())
    return zero, error


@experiment(
    "bf16-vs-fp16",
    "bf16 keeps fp32's range (max ~3.4e38) with 8 bits of precision, fp16 has 11 bits but overflows past 65504 and "
    "underflows small gradients, so fp16 training needs loss scaling and bf16 does not",
    "study cards on mixed precision (1-8-7 vs 1-5-10 bit layouts); Micikevicius et al. 2018",
)
def bf16_vs_fp16(quick: bool) -> Finding:
    derived = {"bfloat16": layout(8, 7), "float16": layout(5, 10)}
    measured = {}
    for name, dt in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        fi = torch.finfo(dt)
        measured[name] = dict(max=fi.max, min_normal=fi.tiny, min_subnormal=fi.smallest_normal * fi.eps, eps=fi.eps)
    layouts_match = all(
        abs(derived[n][k] - measured[n][k]) <= 1e-12 * derived[n][k]
        for n in derived
        for k in ("max", "min_normal", "eps")
    )
    probes = {
        x: {n: float(torch.tensor(x, dtype=getattr(torch, n))) for n in derived} for x in (70000.0, 1e-8, 1 + 1 / 300)
    }
    g = torch.Generator().manual_seed(0)
    steps = {
        "fp16, no scaling": _gradients(torch.float16, 1.0, g),
        "fp16, loss x 65536": _gradients(torch.float16, 65536.0, g),
        "bf16, no scaling": _gradients(torch.bfloat16, 1.0, g),
    }
    fp16_bad = steps["fp16, no scaling"][0] > 10 * max(steps["fp16, loss x 65536"][0], 1e-4)
    bf16_ok = steps["bf16, no scaling"][0] < 0.01
    verdict = "confirmed" if layouts_match and fp16_bad and bf16_ok else "depends"
    summary = (
        f"From the bit layouts: bf16 max {derived['bfloat16']['max']:.3g}, smallest normal "
        f"{derived['bfloat16']['min_normal']:.3g}, epsilon {derived['bfloat16']['eps']:.3g}; fp16 max "
        f"{derived['float16']['max']:.0f}, smallest normal {derived['float16']['min_normal']:.3g}, epsilon "
        f"{derived['float16']['eps']:.3g} — {'equal to' if layouts_match else 'DIFFERENT from'} torch.finfo. "
        f"70000 becomes {probes[70000.0]['float16']} in fp16 and {probes[70000.0]['bfloat16']:.0f} in bf16; 1e-8 "
        f"becomes {probes[1e-8]['float16']:.3g} in fp16 and {probes[1e-8]['bfloat16']:.3g} in bf16; 1 + 1/300 rounds "
        f"to {probes[1 + 1 / 300]['bfloat16']} in bf16 and {probes[1 + 1 / 300]['float16']:.5f} in fp16. One backward "
        "pass of a small loss: "
        + "; ".join(
            f"{k}: {z:.1%} more zero gradients than float64, relative error {e:.3f}" for k, (z, e) in steps.items()
        )
        + ". fp16 loses the small gradients unless the loss is scaled; bf16 keeps them, at lower precision."
    )

    def plot(fig):
        ax = fig.subplots(1, 1)
        names = list(steps)
        ax.bar(names, [100 * steps[n][0] for n in names])
        ax.set_ylabel("% gradient entries flushed to zero")

    probes_json = {str(k): v for k, v in probes.items()}
    numbers = dict(derived=derived, finfo=measured, probes=probes_json, gradient_steps=steps)
    return Finding(verdict, summary, numbers, plot)
