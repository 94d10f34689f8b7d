"""Pre-norm against post-norm (ModelConfig.norm_placement) as depth grows: the gradient norm of each layer at
initialisation (Xiong et al. 2020: post-norm's gradients are largest near the output, pre-norm's are even across
layers), and short training runs without and with learning-rate warmup."""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F

from ..model import Transformer
from . import Finding, experiment
from ._seeds import Difference, difference, mean_std, pm, rule, seeds
from ._train import batch, corpus, one_thread, smooth, tiny_config, train

LR = 1e-2
INITS = {"init std 0.02": 0.02, "init std 1/sqrt(D)": 0.125}  # the library's default; Xavier-like for D = 64


@one_thread()
def _layer_gradients(placement: str, depth: int, init_std: float, seed: int = 0) -> list[float]:
    """|grad| of each block's parameters after one backward pass at initialisation (B=8, T=64 of the corpus)."""
    torch.manual_seed(seed)
    model = Transformer(tiny_config(n_layers=depth, norm_placement=placement, init_std=init_std)).train()
    ids = batch(corpus()[0], 8, 64, torch.Generator().manual_seed(seed))  # (B, T + 1)
    F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()).backward()
    return [math.sqrt(sum(float(p.grad.pow(2).sum()) for p in b.parameters())) for b in model.blocks]


def _runs(depth: int, steps: int, seed_list) -> dict[str, list[list[float]]]:
    """Loss curves (one per seed) at lr LR (B=8, T=64) without clipping, with no warmup and with warmup over a
    quarter of the steps."""
    out = {}
    for placement in ("pre", "post"):
        for warmup in (0, steps // 4):
            cfg = tiny_config(n_layers=depth, norm_placement=placement)
            runs = [train(cfg, steps, batch_size=8, lr=LR, warmup=warmup, clip=None, seed=s) for s in seed_list]
            out[f"{placement}-norm, warmup {warmup}"] = [r.losses for r in runs]
    return out


@experiment(
    "prenorm-vs-postnorm",
    "Post-norm's gradients grow toward the output layers at initialisation and deep post-norm models diverge "
    "without learning-rate warmup; pre-norm's gradients are even across layers and it trains without warmup",
    "Xiong et al. 2020 (On Layer Normalization in the Transformer Architecture); study cards on pre-norm",
)
def prenorm_vs_postnorm(quick: bool) -> Finding:
    depths = [2, 4, 8] if quick else [2, 4, 8, 16, 32, 48]
    seed_list = seeds(quick)
    grads, spreads, spread = _gradients(depths, seed_list)
    depth, steps = (4, 12) if quick else (16, 150)
    curves = _runs(depth, steps, seed_list)
    final = {k: [smooth(c) for c in v] for k, v in curves.items()}
    first = {k: [c[0] for c in v] for k, v in curves.items()}
    deep = depths[-1]
    grows = {i: spread[f"post, {i}"][deep] > 1.5 and spread[f"pre, {i}"][deep] < 1.5 for i in INITS}
    w = steps // 4
    post0, post_w = final["post-norm, warmup 0"], final[f"post-norm, warmup {w}"]
    warmup_gain = difference(post0, post_w)  # > 0: warmup helps post-norm
    post_fails = any(math.isnan(x) or x > f - 0.5 for x, f in zip(post0, first["post-norm, warmup 0"], strict=True))
    post_diverges = post_fails or warmup_gain.sign > 0
    pre_ok = all(x < f - 1.0 for x, f in zip(final["pre-norm, warmup 0"], first["pre-norm, warmup 0"], strict=True))
    verdict = "confirmed" if all(grows.values()) and post_diverges and pre_ok else "depends"
    if not any(grows.values()) and not post_diverges:
        verdict = "refuted"
    summary = _summary(
        depths=depths,
        seed_list=seed_list,
        spread=spread,
        depth=depth,
        steps=steps,
        final=final,
        first=first,
        warmup_gain=warmup_gain,
        grows=grows,
        post_diverges=post_diverges,
        pre_ok=pre_ok,
    )
    numbers = dict(
        depths=depths,
        layer_gradients={p: {str(d): g for d, g in v.items()} for p, v in grads.items()},
        last_over_first={k: {str(d): r for d, r in v.items()} for k, v in spread.items()},
        last_over_first_per_seed={k: {str(d): r for d, r in v.items()} for k, v in spreads.items()},
        seeds=seed_list,
        warmup_gain=warmup_gain.to_dict(),
        rule=rule(len(seed_list)),
        train_depth=depth,
        steps=steps,
        final_loss=final,
        curves=curves,
    )
    return Finding(verdict, summary, numbers, partial(_plot, grads=grads, deep=deep, curves=curves, depth=depth))


def _gradients(depths: list[int], seed_list: list[int]) -> tuple[dict, dict, dict]:
    """Per placement and init, at each depth: the first seed's per-layer gradient norms (for the plot), the last
    block's over the first's per seed, and its mean over the seeds."""
    per_seed = {  # per-layer gradients, one list per seed
        f"{p}, {i}": {d: [_layer_gradients(p, d, std, s) for s in seed_list] for d in depths}
        for i, std in INITS.items()
        for p in ("pre", "post")
    }
    grads = {k: {d: g[0] for d, g in v.items()} for k, v in per_seed.items()}  # the first seed's, for the plot
    spreads = {k: {d: [g[-1] / g[0] for g in per] for d, per in v.items()} for k, v in per_seed.items()}
    spread = {k: {d: mean_std(v)[0] for d, v in per.items()} for k, per in spreads.items()}
    return grads, spreads, spread


def _summary(
    *,
    depths: list[int],
    seed_list: list[int],
    spread: dict[str, dict[int, float]],
    depth: int,
    steps: int,
    final: dict[str, list[float]],
    first: dict[str, list[float]],
    warmup_gain: Difference,
    grows: dict[str, bool],
    post_diverges: bool,
    pre_ok: bool,
) -> str:
    """The finding's paragraph: the gradient ratios at initialisation, the training runs, what follows."""
    return (
        f"Gradient norm of the last block over the first at initialisation (64 wide, byte-level, B=8, T=64; mean over "
        f"{len(seed_list)} seeds), "
        + "; ".join(
            f"{i}: "
            + ", ".join(
                f"depth {d}: pre {spread[f'pre, {i}'][d]:.2f}, post {spread[f'post, {i}'][d]:.2f}" for d in depths
            )
            for i in INITS
        )
        + f". Training {depth} layers for {steps} steps at lr {LR:g}, no gradient clipping, {len(seed_list)} seeds "
        "(final loss): "
        + ", ".join(f"{k}: {pm(v)}" for k, v in final.items())
        + f" (all start at {first['pre-norm, warmup 0'][0]:.2f}). Post-norm without warmup minus with warmup: "
        f"{warmup_gain.text()}. Post-norm's gradients grow toward the output (last/first > 1.5 while pre-norm's do "
        "not): " + ", ".join(f"{i}: {'yes' if g else 'no'}" for i, g in grows.items()) + "; "
        f"without warmup post-norm {'diverges, stalls or trails warmup' if post_diverges else 'trains as well'} at "
        f"depth {depth}; pre-norm {'trains' if pre_ok else 'does NOT train'} without warmup. " + rule(len(seed_list))
    )


def _plot(fig, *, grads: dict, deep: int, curves: dict, depth: int) -> None:
    """Per-layer gradient norms at init at the deepest depth, and the training curves (mean of the seeds)."""
    ax1, ax2 = fig.subplots(1, 2)
    for k, g in grads.items():
        g = g[deep]
        ax1.plot(range(1, len(g) + 1), g, "o-" if k.startswith("pre") else "s--", label=k, ms=3)
    ax1.set_yscale("log")
    ax1.set_xlabel(f"layer (depth {deep})")
    ax1.set_ylabel("gradient norm at init")
    ax1.legend(fontsize=7)
    for k, v in curves.items():
        ax2.plot([sum(c) / len(c) for c in zip(*v, strict=True)], label=k, lw=0.8)
    ax2.set_xlabel("step")
    ax2.set_ylabel(f"training loss ({depth} layers, mean of seeds)")
    ax2.legend(fontsize=7)
