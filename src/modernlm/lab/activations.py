"""ReLU against GELU and SiLU in the MLP: dead neurons (hidden units that no token of a held-out sample activates, so
a ReLU passes them neither signal nor gradient), the mean of each activation's output on standard-normal inputs (ReLU
1/sqrt(2 pi), GELU 1/(2 sqrt(pi)), SiLU about 0.21: none is zero-mean), and validation loss at equal steps."""

from __future__ import annotations

import torch

from ..layers.ffn import ACTIVATIONS
from . import Finding, experiment
from ._seeds import difference, pm, rule, seeds
from ._train import compare_seeds, corpus, one_thread, tiny_config

KINDS = {"ReLU": "relu", "GELU": "gelu_erf", "SiLU": "silu"}


def normal_means(samples: int, seed: int = 0) -> dict[str, float]:
    """E[act(z)], z ~ N(0, 1), by Monte Carlo in float64 (the test checks them against closed forms)."""
    z = torch.randn(samples, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return {label: float(ACTIVATIONS[kind](z).mean()) for label, kind in KINDS.items()}


@one_thread()
@torch.no_grad()
def unit_stats(model, ids: torch.Tensor) -> dict[str, float]:
    """Over every MLP of `model` on `ids` (B, T): the fraction of hidden units whose pre-activation is <= 0 on every
    token ('dead' for a ReLU: output and gradient exactly zero), the fraction of exactly-zero outputs, and the mean
    output of the activation."""
    model.eval()
    pre = []
    hooks = [b.ffn.up_proj.register_forward_hook(lambda m, i, o: pre.append(o)) for b in model.blocks]
    try:
        model(ids)
    finally:
        for h in hooks:
            h.remove()
    act = model.blocks[0].ffn.act
    dead = [float((p.flatten(0, 1) <= 0).all(0).float().mean()) for p in pre]  # (B T, F) -> per unit
    outs = [act(p) for p in pre]  # (B, T, F) each
    return dict(
        dead_fraction=sum(dead) / len(dead),
        zero_outputs=sum(float((o == 0).float().mean()) for o in outs) / len(outs),
        mean_output=sum(float(o.mean()) for o in outs) / len(outs),
    )


def _held_out(n: int = 8, T: int = 64) -> torch.Tensor:
    data = corpus()[1]
    starts = torch.linspace(0, len(data) - T - 1, n).long().tolist()
    return torch.stack([data[s : s + T] for s in starts])  # (n, T)


@experiment(
    "relu-vs-gelu",
    "ReLU leaves dead neurons (units no input activates) and a non-zero mean output; GELU and SiLU keep a gradient "
    "everywhere, and GELU often improves quality over ReLU",
    "Hendrycks & Gimpel 2016 (GELU); Ramachandran et al. 2017 (SiLU/Swish); study cards on activations",
)
def relu_vs_gelu(quick: bool) -> Finding:
    d, layers, steps, lr = (64, 2, 30, 1e-2) if quick else (96, 3, 400, 1e-2)
    configs = {k: tiny_config(d_model=d, n_layers=layers, ffn=v, ffn_hidden=4 * d) for k, v in KINDS.items()}
    seed_list = seeds(quick)
    ids = _held_out()
    res = compare_seeds(
        configs, steps, seed_list, batch_size=8 if quick else 16, lr=lr, measure=lambda m: unit_stats(m, ids)
    )
    for r in res.values():  # unit statistics: mean over seeds
        r.update({k: sum(v) / len(v) for k, v in r["measured"].items()})
    means = normal_means(200_000 if quick else 2_000_000)
    gain = difference(res["ReLU"]["val_losses"], res["GELU"]["val_losses"])  # > 0: GELU better
    silu_gain = difference(res["ReLU"]["val_losses"], res["SiLU"]["val_losses"])
    relu_dead = res["ReLU"]["dead_fraction"] > 0
    smooth_alive = all(res[k]["zero_outputs"] == 0 for k in ("GELU", "SiLU"))
    verdict = "confirmed" if relu_dead and smooth_alive and gain.sign > 0 else "depends"
    if gain.sign < 0:
        verdict = "refuted"
    summary = (
        f"{layers} layers, {d} wide, MLP 4x ({4 * d} hidden units a layer), lr {lr:g}, {steps} steps, "
        f"{len(seed_list)} seeds. Validation loss: "
        + ", ".join(f"{k} {pm(v['val_losses'])}" for k, v in res.items())
        + f"; ReLU minus GELU {gain.text()}, ReLU minus SiLU {silu_gain.text()}. After training (mean over seeds, "
        f"{ids.numel()} held-out tokens): units never activated (pre-activation <= 0 on every token): "
        + ", ".join(f"{k} {100 * v['dead_fraction']:.1f}%" for k, v in res.items())
        + " (a dead ReLU unit outputs 0 and gets no gradient; a GELU/SiLU unit there still does); exactly-zero "
        "outputs: "
        + ", ".join(f"{k} {100 * v['zero_outputs']:.1f}%" for k, v in res.items())
        + "; mean output: "
        + ", ".join(f"{k} {v['mean_output']:.3f}" for k, v in res.items())
        + ". On N(0, 1) inputs the mean outputs are "
        + ", ".join(f"{k} {v:.3f}" for k, v in means.items())
        + " (1/sqrt(2 pi) = 0.399, 1/(2 sqrt(pi)) = 0.282): none is zero-mean, ReLU's is the largest. "
        + rule(len(seed_list))
    )

    def plot(fig):
        ax1, ax2, ax3 = fig.subplots(1, 3)
        z = torch.linspace(-4, 3, 200)
        for label, kind in KINDS.items():
            ax1.plot(z, ACTIVATIONS[kind](z), label=label)
            ax2.plot(res[label]["losses"], label=label, lw=0.8)
        ax1.axhline(0, color="gray", lw=0.5)
        ax1.set_xlabel("input")
        ax1.legend()
        ax2.set_xlabel("step")
        ax2.set_ylabel("training loss (mean over seeds)")
        ax2.legend()
        ax3.bar(list(res), [100 * v["dead_fraction"] for v in res.values()])
        ax3.set_ylabel("units never activated (%)")

    numbers = dict(d_model=d, layers=layers, steps=steps, lr=lr, seeds=seed_list, runs=res, normal_means=means)
    numbers.update(relu_minus_gelu=gain.to_dict(), relu_minus_silu=silu_gain.to_dict(), rule=rule(len(seed_list)))
    return Finding(verdict, summary, numbers, plot)
