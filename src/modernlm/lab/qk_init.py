"""Initialising Q/K with a smaller variance instead of scaling the scores by 1/sqrt(d): a score q·k over Dh dimensions
has variance Dh·σq²·σk² (q, k independent, zero mean), so the unscaled scores match the scaled ones at initialisation
exactly when σq²·σk² = 1/Dh: variance 1/Dh on one of them (the scale folded into W_Q, as T5 does) or 1/sqrt(Dh) on
each. Both Q and K at 1/Dh gives scores sqrt(Dh) times too small. And the match holds only at initialisation: Adam
moves every weight by about the learning rate whatever its size, so a W_Q initialised sqrt(Dh) times smaller changes
sqrt(Dh) times faster relative to itself."""

from __future__ import annotations

import math

import torch

from ..config import ModelConfig
from ..layers.attention import Attention
from . import Finding, experiment

D, H = 768, 12  # BERT-base / GPT-2 small width: Dh = 64
DH = D // H
LR = 1e-3


def _settings() -> dict[str, tuple[float | None, float, float]]:
    """name -> (score scale (None: 1/sqrt(Dh)), variance of q's components, of k's), with x of unit variance."""
    return {
        "scaled, unit q and k": (None, 1.0, 1.0),
        "unscaled, unit q and k": (1.0, 1.0, 1.0),
        "unscaled, q at 1/Dh": (1.0, 1 / DH, 1.0),
        "unscaled, q and k at 1/sqrt(Dh)": (1.0, DH**-0.5, DH**-0.5),
        "unscaled, q and k at 1/Dh": (1.0, 1 / DH, 1 / DH),
    }


def _attention(scale: float | None, var_q: float, var_k: float, base: Attention) -> Attention:
    """The library's attention with `base`'s weights, W_Q and W_K rescaled so q, k get the given variances (base's
    weights have variance 1/D, which gives unit-variance q and k for unit-variance x)."""
    attn = Attention(ModelConfig(vocab_size=8, d_model=D, n_layers=1, n_heads=H, attn_scale=scale, causal=False))
    attn.to(base.q_proj.weight.dtype).load_state_dict(base.state_dict())
    with torch.no_grad():
        attn.q_proj.weight.mul_(math.sqrt(var_q))
        attn.k_proj.weight.mul_(math.sqrt(var_k))
    return attn


def _scores(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    B, T, _ = x.shape
    q = attn.q_proj(x).view(B, T, H, DH).transpose(1, 2)  # (B, H, T, Dh)
    k = attn.k_proj(x).view(B, T, H, DH).transpose(1, 2)  # (B, H, T, Dh)
    return q @ k.transpose(-1, -2) * (attn.scale if attn.scale is not None else DH**-0.5)  # (B, H, T, T)


def _measure(quick: bool) -> dict:
    torch.manual_seed(0)
    B, T = (2, 64) if quick else (8, 256)
    base = Attention(ModelConfig(vocab_size=8, d_model=D, n_layers=1, n_heads=H, causal=False))
    with torch.no_grad():
        for p in base.parameters():
            p.normal_(0, D**-0.5)  # variance 1/D: unit-variance projections of unit-variance x
    x = torch.randn(B, T, D, dtype=torch.float64)
    upstream = torch.randn(B, T, D, dtype=torch.float64)  # a random loss: sum(output * upstream)
    base.double()
    results, reference = {}, None
    for name, (scale, vq, vk) in _settings().items():
        attn = _attention(scale, vq, vk, base)
        with torch.no_grad():
            scores = _scores(attn, x)
            p = scores.softmax(-1)  # (B, H, T, T)
            out = attn(x, None, None)  # (B, T, D)
            reference = out if reference is None else reference
            entropy = float(-(p * p.clamp_min(1e-300).log()).sum(-1).mean())
            score_std = float(scores.std())
        w0 = attn.q_proj.weight.detach().clone()
        opt = torch.optim.Adam(attn.parameters(), lr=LR)
        (attn(x, None, None) * upstream).sum().backward()
        opt.step()
        with torch.no_grad():
            results[name] = dict(
                score_std=score_std,
                closed_form_std=math.sqrt(DH * vq * vk) * (DH**-0.5 if scale is None else scale),
                entropy=entropy,
                output_difference=float((out - reference).abs().max() / reference.abs().max()),
                q_update=float((attn.q_proj.weight - w0).norm() / w0.norm()),  # one Adam step, relative to W_Q
                after_step=attn(x, None, None),
            )
    first = next(iter(results.values()))["after_step"]
    for r in results.values():
        r["difference_after_step"] = float((r.pop("after_step") - first).abs().max() / first.abs().max())
    return dict(results=results, batch=B, tokens=T, uniform_entropy=math.log(T))


@experiment(
    "qk-init-variance",
    "Initialising Q and K with variance 1/d gives the attention logits of the 1/sqrt(d) scale (the same scaling "
    "effect), so the scale could be dropped",
    "study cards on scaled dot-product attention; Vaswani et al. 2017, footnote 4; T5 (Raffel et al. 2020) folds "
    "the scale into its initialisation",
)
def qk_init_variance(quick: bool) -> Finding:
    m = _measure(quick)
    r = m["results"]
    names = list(r)
    scaled = r[names[0]]
    same = [n for n in names[1:] if r[n]["output_difference"] < 1e-9]
    small, folded = r[names[-1]], r[names[2]]
    verdict = "depends" if same and small["output_difference"] > 0.01 else "confirmed" if same else "refuted"
    summary = (
        f"The library's attention (width {D}, {H} heads of Dh={DH}, every key visible), {m['batch']} x "
        f"{m['tokens']} random unit-variance tokens, float64. Score std (closed form sqrt(Dh·σq²·σk²)·scale), "
        f"softmax entropy (uniform: {m['uniform_entropy']:.2f} nats), output's difference from the scaled one "
        "(variances are of q's and k's components): "
        + "; ".join(
            f"{n}: {v['score_std']:.3f} ({v['closed_form_std']:.3f}), {v['entropy']:.2f} nats, "
            f"{v['output_difference']:.1e}"
            for n, v in r.items()
        )
        + f". Identical to the scaled attention at initialisation: {' and '.join(same) or 'none'}; both q and k at "
        f"variance 1/Dh give scores of std {small['score_std']:.3f} (1/sqrt(Dh) = {DH**-0.5:.3f}) and nearly uniform "
        "attention. So it holds when the product of the two variances is 1/Dh, not when each is 1/Dh. After one Adam "
        f"step (lr {LR}) W_Q moves by {scaled['q_update']:.2e} of its norm with the scale and "
        f"{folded['q_update']:.2e} with the scale folded into it ({folded['q_update'] / scaled['q_update']:.1f}x, "
        f"sqrt(Dh) = {math.sqrt(DH):.0f}); the outputs then differ by {folded['difference_after_step']:.1e} "
        "(relative): the equivalence does not survive training with Adam."
    )

    def plot(fig):
        ax1, ax2 = fig.subplots(1, 2)
        short = names
        ax1.barh(short, [r[n]["score_std"] for n in names])
        ax1.axvline(1.0, color="gray", lw=0.8)
        ax1.set_xscale("log", base=2)
        ax1.set_xlabel("std of the attention logits")
        ax1.tick_params(axis="y", labelsize=7)
        ax2.barh(short, [r[n]["entropy"] for n in names])
        ax2.axvline(m["uniform_entropy"], color="gray", lw=0.8, label="uniform")
        ax2.set_xlabel("softmax entropy (nats)")
        ax2.set_yticks([])
        ax2.legend(loc="lower right")

    return Finding(verdict, summary, m, plot)
