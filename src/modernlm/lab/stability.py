"""Gradient clipping and learning-rate warmup against divergence at high learning rates: the same small model trained
at learning rates from the usual to far too high, with neither, either or both guards. A run fails when its loss
turns nan or ends less than 0.5 nats below where it started; the spike is how far the loss rises above its start."""

from __future__ import annotations

import math

from . import Finding, experiment
from ._seeds import difference, rule, seeds
from ._train import smooth, tiny_config, train

GUARDS = {  # label: (clip max norm, warmup as a fraction of the steps)
    "neither": (None, 0.0),
    "clipping 1.0": (1.0, 0.0),
    "warmup 25%": (None, 0.25),
    "both": (1.0, 0.25),
}


def outcome(losses: list[float]) -> dict[str, float]:
    """final (mean of the last 10 losses; nan if diverged), failed (1.0 / 0.0) and spike (max loss - first loss)."""
    final = smooth(losses)
    failed = math.isnan(final) or final > losses[0] - 0.5
    finite = [x for x in losses if not math.isnan(x)]
    spike = math.inf if len(finite) < len(losses) else max(finite) - losses[0]
    return dict(final=final, failed=float(failed), spike=spike)


@experiment(
    "clip-warmup-high-lr",
    "Gradient clipping and learning-rate warmup keep training from diverging at high learning rates",
    "Pascanu et al. 2013 (clipping); Goyal et al. 2017 and Xiong et al. 2020 (warmup); study cards on training "
    "stability",
)
def clip_warmup_high_lr(quick: bool) -> Finding:
    lrs = [1.0] if quick else [0.01, 0.03, 0.1, 0.3, 1.0]
    layers, d, steps = (2, 32, 10) if quick else (4, 64, 100)
    seed_list = seeds(quick)
    cfg = tiny_config(d_model=d, n_layers=layers)
    res = {
        g: {
            str(lr): [
                outcome(train(cfg, steps, batch_size=8, lr=lr, clip=c, warmup=round(w * steps), seed=s).losses)
                for s in seed_list
            ]  # fmt: skip
            for lr in lrs
        }
        for g, (c, w) in GUARDS.items()
    }
    fails = {g: sum(o["failed"] for per in v.values() for o in per) for g, v in res.items()}
    top = str(lrs[-1])
    spikes = {
        g: difference([o["spike"] for o in res["neither"][top]], [o["spike"] for o in v[top]]) for g, v in res.items()
    }
    total = len(lrs) * len(seed_list)
    if fails["neither"] > fails["both"]:
        verdict = "confirmed"
    elif fails["neither"] == 0 and fails["both"] == 0 and spikes["both"].sign > 0:
        verdict = "depends"  # nothing diverges, but the guards tame the loss spikes
    else:
        verdict = "refuted" if fails["both"] >= fails["neither"] and spikes["both"].sign <= 0 else "depends"
    summary = (
        f"{layers} layers, {d} wide, AdamW, {steps} steps of 8 x 64 bytes at learning rates "
        f"{', '.join(f'{lr:g}' for lr in lrs)}, {len(seed_list)} seeds each. Failed runs (nan, or ending less than 0.5 "
        f"nats below the start) of {total}: "
        + ", ".join(f"{g} {fails[g]:.0f}" for g in GUARDS)
        + ". Final loss per learning rate (mean over seeds): "
        + "; ".join(
            f"{g}: " + ", ".join(f"{lr} {sum(o['final'] for o in per) / len(per):.2f}" for lr, per in v.items())
            for g, v in res.items()
        )
        + f". Loss spike above the start at lr {top}: "
        + ", ".join(f"{g} {sum(o['spike'] for o in v[top]) / len(seed_list):.2f}" for g, v in res.items())
        + "; neither minus each guard: "
        + ", ".join(f"{g} {spikes[g].text()}" for g in GUARDS if g != "neither")
        + ". "
        + rule(len(seed_list))
    )

    def plot(fig):
        ax1, ax2 = fig.subplots(1, 2)
        for g, v in res.items():
            ax1.plot(lrs, [sum(o["final"] for o in per) / len(per) for per in v.values()], "o-", label=g)
            ax2.plot(lrs, [sum(o["spike"] for o in per) / len(per) for per in v.values()], "o-", label=g)
        for ax, label in ((ax1, "final loss (mean over seeds)"), (ax2, "loss spike above the start")):
            ax.set_xscale("log")
            ax.set_xlabel("peak learning rate")
            ax.set_ylabel(label)
            ax.legend(fontsize=7)

    numbers = dict(lrs=lrs, layers=layers, d_model=d, steps=steps, seeds=seed_list, runs=res, failed=fails)
    numbers.update(spike_reduction={g: s.to_dict() for g, s in spikes.items()}, rule=rule(len(seed_list)))
    return Finding(verdict, summary, numbers, plot)
