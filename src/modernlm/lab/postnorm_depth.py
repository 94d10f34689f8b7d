"""Post-norm against pre-norm as depth grows toward 100 layers, with and without learning-rate warmup: the same narrow
byte model (32 wide, 2 heads) at depths up to 96, trained a short while at a high learning rate (1e-2) with no
gradient clipping. A run fails when its loss turns nan or ends less than 0.5 nats below where it started."""

from __future__ import annotations

from . import Finding, experiment
from ._seeds import difference, rule, seeds
from ._train import tiny_config, train
from .stability import outcome

LR, WARMUP = 1e-2, 0.25  # a high learning rate for Adam, as in prenorm-vs-postnorm


@experiment(
    "postnorm-depth",
    "Post-norm training becomes unstable as depth grows (at ~100 layers) unless the learning rate is warmed up; "
    "pre-norm trains at any depth without warmup",
    "Xiong et al. 2020; Wang et al. 2022 (DeepNet: post-norm fails past ~100 layers); study cards on pre-norm",
)
def postnorm_depth(quick: bool) -> Finding:
    depths, steps = ([2, 6], 6) if quick else ([6, 24, 96], 30)
    seed_list = seeds(quick)
    res: dict[str, dict[str, list[dict]]] = {}
    for placement in ("pre", "post"):
        for warm in (0.0, WARMUP):
            label = f"{placement}-norm, {'warmup' if warm else 'no warmup'}"
            res[label] = {
                str(depth): [
                    outcome(
                        train(
                            cfg, steps, batch_size=8, seq_len=32, lr=LR, warmup=round(warm * steps), clip=None, seed=s
                        ).losses
                    )  # fmt: skip
                    for s in seed_list
                ]
                for depth in depths
                for cfg in [tiny_config(d_model=32, n_heads=2, n_layers=depth, norm_placement=placement)]
            }
    deep = str(depths[-1])
    finals = {k: [o["final"] for o in v[deep]] for k, v in res.items()}
    fails = {k: {d: sum(o["failed"] for o in per) for d, per in v.items()} for k, v in res.items()}
    post_vs_pre = difference(finals["post-norm, no warmup"], finals["pre-norm, no warmup"])  # > 0: post is worse
    warm_gain = difference(finals["post-norm, no warmup"], finals["post-norm, warmup"])  # > 0: warmup helps post
    unstable = fails["post-norm, no warmup"][deep] > 0 or post_vs_pre.sign > 0
    pre_ok = fails["pre-norm, no warmup"][deep] == 0
    rescued = warm_gain.sign > 0 or fails["post-norm, warmup"][deep] < fails["post-norm, no warmup"][deep]
    verdict = "confirmed" if unstable and pre_ok and rescued else "depends" if unstable else "refuted"
    summary = (
        f"32 wide, 2 heads, {steps} steps of 8 x 32 bytes at lr {LR:g}, no clipping, warmup over {WARMUP:.0%} of the "
        f"steps or none, {len(seed_list)} seeds. Failed runs (of {len(seed_list)}) at depths "
        f"{', '.join(map(str, depths))}: "
        + "; ".join(f"{k}: {', '.join(f'{n:.0f}' for n in v.values())}" for k, v in fails.items())
        + f". Final loss at depth {deep} (mean over seeds): "
        + ", ".join(f"{k} {sum(v) / len(v):.3f}" for k, v in finals.items())
        + f". Post-norm minus pre-norm without warmup: {post_vs_pre.text()}; post-norm without minus with warmup: "
        f"{warm_gain.text()}. Post-norm {'is' if unstable else 'is not'} worse or failing at depth {deep}; pre-norm "
        f"{'trains' if pre_ok else 'fails too'}; warmup {'helps' if rescued else 'does not help'} post-norm. "
        + rule(len(seed_list))
    )

    def plot(fig):
        ax = fig.subplots(1, 1)
        for k, v in res.items():
            ax.plot(depths, [sum(o["final"] for o in per) / len(per) for per in v.values()], "o-", label=k)
        ax.set_xscale("log")
        ax.set_xlabel("layers")
        ax.set_ylabel(f"loss after {steps} steps (mean over seeds)")
        ax.legend()

    numbers = dict(depths=depths, steps=steps, lr=LR, seeds=seed_list, runs=res, failed=fails)
    numbers.update(post_minus_pre=post_vs_pre.to_dict(), warmup_gain=warm_gain.to_dict(), rule=rule(len(seed_list)))
    return Finding(verdict, summary, numbers, plot)
