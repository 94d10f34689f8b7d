"""RoPE scalings measured: a RoPE model trained at length T, evaluated to 8T with every scaling of the registry
(layers/rope_scaling.py), with no fine-tuning and after a short fine-tune at 8T with the scaling in place (YaRN's
claim: a few hundred steps suffice); beside it the other positions trained the same way (length-extrapolation's
models, extrapolation.py), for the two claims of the study cards about RoPE's extrapolation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model import Transformer
from ..training.optim import build_optimizer, lr_at, set_lr
from . import Finding, experiment
from ._train import batch, corpus, one_thread
from .extrapolation import MULTIPLES, scaled_copy, trained_models, whole_and_past

SCALINGS = ("none", "linear", "ntk", "dynamic", "ntk_by_parts", "yarn", "llama3")
FINETUNED = ("none", "linear", "ntk", "yarn")  # fine-tuned at 8T with the scaling in place
FACTOR = MULTIPLES[-1]  # every scaling is set for the longest evaluation, 8T


def finetune(model: Transformer, steps: int, seq_len: int, batch_size: int, lr: float = 1e-3) -> Transformer:
    """Continue training `model` (a copy already scaled) for `steps` steps on windows of `seq_len` tokens: AdamW, a
    tenth of the steps as warmup, cosine to 10% (the lab trainer's recipe, from given weights)."""
    with one_thread():
        torch.manual_seed(1)
        model.train()
        opt = build_optimizer(model, lr=lr, weight_decay=0.1)
        g, data = torch.Generator().manual_seed(1), corpus()[0]
        for step in range(steps):
            set_lr(opt, lr_at(step, lr, 0.1 * lr, max(steps // 10, 1), steps))
            ids = batch(data, batch_size, seq_len, g)  # (B, T + 1)
            loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    return model.eval()


def _measure(T: int, steps: int, ft_steps: int, ft_batch: int) -> dict:
    models = trained_models(T, steps)
    rope = models["rope 10k"]
    past, whole = {}, {}
    for kind in SCALINGS:  # at evaluation only: the same weights, the scaling for 8T
        scaled = scaled_copy(rope, kind, FACTOR, T)
        whole[kind], past[kind] = whole_and_past(lambda m, scaled=scaled: scaled, T)
    for kind in FINETUNED:
        tuned = finetune(scaled_copy(rope, kind, FACTOR, T), ft_steps, FACTOR * T, ft_batch)
        whole[f"{kind} + fine-tune"], past[f"{kind} + fine-tune"] = whole_and_past(lambda m, t=tuned: t, T)
    for label in ("sinusoidal", "learned", "alibi", "rope 100k"):
        whole[label], past[label] = whole_and_past(lambda m, model=models[label]: model, T)
    return dict(past=past, whole=whole)


def _position_verdicts(growth: dict[str, list[float]], margin: float = 0.05) -> dict[str, str]:
    """The two claims about positions, from the growth of perplexity past T (over the 1x reference) at 2x, 4x, 8x:
    A "extrapolates more stably" than B where A's growth is below B's by more than `margin` (relative). Confirmed if so
    at 4x and 8x; refuted if B is the stabler at 8x, or neither is anywhere; else depends."""

    def verdict(a: list[float], b: list[float]) -> str:
        better = [x < (1 - margin) * y for x, y in zip(a, b, strict=True)]
        worse = [x > (1 + margin) * y for x, y in zip(a, b, strict=True)]
        if all(better[1:]) and not any(worse):
            return "confirmed"
        return "refuted" if worse[-1] or not any(better + worse) else "depends"

    rope_best = [min(r, r100) for r, r100 in zip(growth["none"], growth["rope 100k"], strict=True)]
    return {"RoPE extrapolates more stably than sinusoidal": verdict(growth["none"], growth["sinusoidal"]),
            "RoPE extrapolates worse than ALiBi": verdict(growth["alibi"], rope_best)}  # fmt: skip


@experiment(
    "rope-scalings",
    "A RoPE model trained at length T, stretched to 8T by a scaling (PI, NTK-aware, dynamic NTK, NTK-by-parts, YaRN, "
    "Llama 3) and fine-tuned briefly at 8T, keeps its perplexity there, where plain RoPE fails; without the "
    "fine-tune the scalings already degrade far less than plain RoPE",
    "Peng et al. 2023 (YaRN: 'a few hundred steps suffice'); Chen et al. 2023 (PI); bloc97 / emozilla (NTK); "
    "study cards on long context (RoPE vs sinusoidal, vs ALiBi)",
)
def rope_scalings(quick: bool) -> Finding:
    T, steps, ft_steps, ft_batch = (32, 30, 4, 2) if quick else (128, 300, 60, 4)
    numbers = _measure(T, steps, ft_steps, ft_batch)
    past = numbers["past"]
    growth = {k: [p / v[0] for p in v[1:]] for k, v in past.items()}  # at 2x, 4x, 8x over the 1x reference
    ref = past["none"][0]
    tuned = {k: v[-1] for k, v in past.items() if k.endswith("fine-tune") and not k.startswith("none")}
    best_tuned = min(tuned, key=tuned.get)
    at_eval = {k: past[k][-1] for k in SCALINGS if k != "none"}
    keeps = tuned[best_tuned] <= 1.15 * ref
    plain_fails = growth["none"][-1] > 1.5
    scalings_help = min(at_eval.values()) < past["none"][-1]
    verdict = "confirmed" if keeps and plain_fails and scalings_help else "refuted" if not keeps else "depends"
    positions = _position_verdicts(growth)
    fmt = lambda v: ", ".join(f"{p:.2f}" for p in v)  # noqa: E731
    summary = (
        f"2 layers, 64 wide, byte-level, trained {steps} steps at T={T}; every scaling set for 8T (factor {FACTOR}); "
        f"fine-tunes: {ft_steps} steps of {ft_batch} x {FACTOR * T} tokens. Validation perplexity over the positions "
        f"past T at 1x (positions {T // 2}-{T - 1}, the reference), 2x, 4x, 8x: "
        + "; ".join(f"{k}: {fmt(v)}" for k, v in past.items())
        + f". At 8x, plain RoPE is {growth['none'][-1]:.2f}x its reference; at evaluation only the best scaling is "
        f"{min(at_eval, key=at_eval.get)} ({min(at_eval.values()):.2f}); after the fine-tune the best is {best_tuned} "
        f"({tuned[best_tuned]:.2f} against the reference {ref:.2f}). Positions: "
        + "; ".join(f"{claim}: {v}" for claim, v in positions.items())
        + f" (growth at 2x, 4x, 8x: RoPE 10k {fmt(growth['none'])}, RoPE 100k {fmt(growth['rope 100k'])}, "
        f"sinusoidal {fmt(growth['sinusoidal'])}, ALiBi {fmt(growth['alibi'])}, learned {fmt(growth['learned'])})."
    )

    def plot(fig):
        axes = fig.subplots(1, 2)
        xs = [m * T for m in MULTIPLES]
        for k, v in past.items():
            ax = axes[1] if k.endswith("fine-tune") or k not in SCALINGS else axes[0]
            ax.plot(xs, v, "x--" if k.endswith("fine-tune") else "o-", label=k)
        for ax, what in zip(axes, ("scalings at evaluation", "fine-tuned at 8T; other positions"), strict=True):
            ax.axvline(T, color="gray", lw=0.8)
            ax.set(xscale="log", yscale="log", xlabel=f"evaluation length (trained at {T})", title=what)
            ax.set_ylabel("perplexity past T")
            ax.legend(fontsize=7)

    record = dict(numbers, train_len=T, steps=steps, finetune_steps=ft_steps, growth=growth, positions=positions)
    return Finding(verdict, summary, record, plot)
