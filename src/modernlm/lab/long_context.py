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
from ._seeds import difference, mean_std, pm, rule, seeds
from ._train import batch, corpus, one_thread
from .extrapolation import MULTIPLES, scaled_copy, trained_models, whole_and_past

SCALINGS = ("none", "linear", "ntk", "dynamic", "ntk_by_parts", "yarn", "llama3")
FINETUNED = ("none", "linear", "ntk", "yarn")  # fine-tuned at 8T with the scaling in place
FACTOR = MULTIPLES[-1]  # every scaling is set for the longest evaluation, 8T


def finetune(
    model: Transformer, steps: int, seq_len: int, batch_size: int, lr: float = 1e-3, seed: int = 1
) -> Transformer:
    """Continue training `model` (a copy already scaled) for `steps` steps on windows of `seq_len` tokens: AdamW, a
    tenth of the steps as warmup, cosine to 10% (the lab trainer's recipe, from given weights); `seed` draws the
    batches (and any dropout)."""
    with one_thread():
        torch.manual_seed(seed)
        model.train()
        opt = build_optimizer(model, lr=lr, weight_decay=0.1)
        g, data = torch.Generator().manual_seed(seed), corpus()[0]
        for step in range(steps):
            set_lr(opt, lr_at(step, lr, 0.1 * lr, max(steps // 10, 1), steps))
            ids = batch(data, batch_size, seq_len, g)  # (B, T + 1)
            loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    return model.eval()


def _measure(T: int, steps: int, ft_steps: int, ft_batch: int, seed: int) -> dict:
    """One seed's perplexities {label: [1x, 2x, 4x, 8x]} past T and over whole windows: the models trained with
    `seed`, each fine-tune drawing its batches with `seed` too (so every configuration sees the same data per seed)."""
    models = trained_models(T, steps, seed=seed)
    rope = models["rope 10k"]
    past, whole = {}, {}
    for kind in SCALINGS:  # at evaluation only: the same weights, the scaling for 8T
        scaled = scaled_copy(rope, kind, FACTOR, T)
        whole[kind], past[kind] = whole_and_past(lambda m, scaled=scaled: scaled, T)
    for kind in FINETUNED:
        tuned = finetune(scaled_copy(rope, kind, FACTOR, T), ft_steps, FACTOR * T, ft_batch, seed=seed)
        whole[f"{kind} + fine-tune"], past[f"{kind} + fine-tune"] = whole_and_past(lambda m, t=tuned: t, T)
    for label in ("sinusoidal", "learned", "alibi", "rope 100k"):
        whole[label], past[label] = whole_and_past(lambda m, model=models[label]: model, T)
    return dict(past=past, whole=whole)


def _mean_curves(per_seed: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """{label: [value at each multiple]} averaged over the seeds' dicts of the same shape."""
    return {k: [mean_std([d[k][i] for d in per_seed])[0] for i in range(len(v))] for k, v in per_seed[0].items()}


def _mean_growth(growths: dict[str, list[list[float]]]) -> dict[str, list[float]]:
    """{label: [mean growth at 2x, 4x, 8x]} from {label: [[2x, 4x, 8x] of each seed]}."""
    return {k: [mean_std([g[i] for g in v])[0] for i in range(len(v[0]))] for k, v in growths.items()}


def _position_verdicts(growth: dict[str, list[list[float]]], margin: float = 0.05) -> dict[str, str]:
    """The two claims about positions, from the growth of perplexity past T (over the 1x reference) at 2x, 4x, 8x,
    one list per seed ({label: [[g2, g4, g8] of seed 0, ...]}): A "extrapolates more stably" than B at a multiple
    where the paired difference A - B over the seeds counts (the lab's rule) and A's mean is below B's by more than
    `margin` (relative). Confirmed if so at 4x and 8x and B is nowhere the stabler; refuted if B is the stabler at 8x,
    or neither is anywhere; else depends."""

    def verdict(a: list[list[float]], b: list[list[float]]) -> str:
        better, worse = [], []
        for i in range(len(a[0])):
            xs, ys = [r[i] for r in a], [r[i] for r in b]
            d, ma, mb = difference(xs, ys), mean_std(xs)[0], mean_std(ys)[0]
            better.append(d.sign < 0 and ma < (1 - margin) * mb)
            worse.append(d.sign > 0 and ma > (1 + margin) * mb)
        if all(better[1:]) and not any(worse):
            return "confirmed"
        return "refuted" if worse[-1] or not any(better + worse) else "depends"

    # the stabler RoPE base at each multiple (by the mean over seeds), with its per-seed values
    n = len(growth["none"][0])
    best = [min(("none", "rope 100k"), key=lambda k, i=i: mean_std([r[i] for r in growth[k]])[0]) for i in range(n)]
    rope_best = [[growth[best[i]][s][i] for i in range(n)] for s in range(len(growth["none"]))]
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
    seed_list = seeds(quick)
    runs = [_measure(T, steps, ft_steps, ft_batch, s) for s in seed_list]
    past_seeds = [r["past"] for r in runs]  # per seed: {label: [1x, 2x, 4x, 8x]}
    past, whole = _mean_curves(past_seeds), _mean_curves([r["whole"] for r in runs])
    growths = {k: [[p / v[k][0] for p in v[k][1:]] for v in past_seeds] for k in past}  # per seed: 2x, 4x, 8x
    growth = _mean_growth(growths)
    at8 = {k: [v[k][-1] for v in past_seeds] for k in past}  # per seed, past T at 8x
    ref = past["none"][0]
    tuned = [k for k in past if k.endswith("fine-tune") and not k.startswith("none")]
    best_tuned = min(tuned, key=lambda k: past[k][-1])
    best_eval = min((k for k in SCALINGS if k != "none"), key=lambda k: past[k][-1])
    keeps = past[best_tuned][-1] <= 1.15 * ref  # thresholds: on the means over seeds
    plain_fails = growth["none"][-1] > 1.5
    helps = difference(at8[best_eval], at8["none"])  # < 0: the best scaling beats plain RoPE at 8x
    verdict = "confirmed" if keeps and plain_fails and helps.sign < 0 else "refuted" if not keeps else "depends"
    positions = _position_verdicts(growths)
    summary = _summary(T, steps, ft_steps, ft_batch, seed_list, past_seeds, growths, positions, best_eval, best_tuned)
    summary += f" Best scaling minus plain RoPE past T at 8x (paired): {helps.text('perplexity')}. " + rule(
        len(seed_list)
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
            ax.set_ylabel(f"perplexity past T (mean over {len(seed_list)} seeds)")
            ax.legend(fontsize=7)

    record = dict(past=past, whole=whole, train_len=T, steps=steps, finetune_steps=ft_steps, growth=growth)
    record.update(positions=positions, seeds=seed_list, past_per_seed=past_seeds, growth_per_seed=growths)
    record.update(whole_per_seed=[r["whole"] for r in runs], best_minus_plain_8x=helps.to_dict())
    return Finding(verdict, summary, dict(record, rule=rule(len(seed_list))), plot)


def _summary(T, steps, ft_steps, ft_batch, seed_list, past_seeds, growths, positions, best_eval, best_tuned):
    fmt = lambda v: ", ".join(f"{p:.2f}" for p in v)  # noqa: E731
    past, growth = _mean_curves(past_seeds), _mean_growth(growths)
    at8 = lambda k: [v[k][-1] for v in past_seeds]  # noqa: E731
    return (
        f"2 layers, 64 wide, byte-level, trained {steps} steps at T={T}, {len(seed_list)} seeds (each seed trains "
        f"its own models and draws its own fine-tune batches); every scaling set for 8T (factor {FACTOR}); "
        f"fine-tunes: {ft_steps} steps of {ft_batch} x {FACTOR * T} tokens. Validation perplexity over the positions "
        f"past T at 1x (positions {T // 2}-{T - 1}, the reference), 2x, 4x, 8x, mean over seeds: "
        + "; ".join(f"{k}: {fmt(v)}" for k, v in past.items())
        + f". At 8x, plain RoPE is {pm([g[-1] for g in growths['none']], '.2f')}x its reference (mean ± std over "
        f"seeds); at evaluation only the best scaling is {best_eval} ({pm(at8(best_eval), '.2f')}); after the "
        f"fine-tune the best is {best_tuned} ({pm(at8(best_tuned), '.2f')} against the reference "
        f"{pm([v['none'][0] for v in past_seeds], '.2f')}). Positions: "
        + "; ".join(f"{claim}: {v}" for claim, v in positions.items())
        + f" (mean growth at 2x, 4x, 8x: RoPE 10k {fmt(growth['none'])}, RoPE 100k {fmt(growth['rope 100k'])}, "
        f"sinusoidal {fmt(growth['sinusoidal'])}, ALiBi {fmt(growth['alibi'])}, learned {fmt(growth['learned'])}; "
        "a position is the stabler where the paired difference counts and the means differ by over 5%)."
    )
