"""Depth against width at equal parameters: a block of the modern kind (4·D² attention + 8·D² SwiGLU at 8/3 width) has
12·D² weights, so L·D² fixed keeps the non-embedding parameters equal exactly: 1 x 128, 4 x 64, 16 x 32 (head
dim 16 throughout). Validation loss after the same steps."""

from __future__ import annotations

from ..analysis import parameter_counts, training_flops
from ..config import ModelConfig
from . import Finding, experiment
from ._seeds import difference, plot_curves, pm, rule, seeds
from ._train import compare_seeds, tiny_config

SEQ = 64


def configs(shapes: list[tuple[int, int]]) -> dict[str, ModelConfig]:
    """{'L x D': config} for (layers, width) pairs; 8/3 SwiGLU with F = 8·D/3 exactly (D a multiple of 3·8 / 8)."""
    out = {}
    for layers, d in shapes:
        out[f"{layers} x {d}"] = tiny_config(d_model=d, n_layers=layers, n_heads=d // 16, ffn_hidden=8 * d // 3)
    return out


@experiment(
    "depth-vs-width",
    "At equal parameters a deeper, narrower transformer reaches a lower loss than a shallow, wide one (up to a point)",
    "Kaplan et al. 2020 (shape matters little over a wide range); Levine et al. 2020 (depth-width interplay); study "
    "cards on model shape",
)
def depth_vs_width(quick: bool) -> Finding:
    shapes = [(1, 96), (4, 48)] if quick else [(1, 192), (4, 96), (16, 48)]
    steps = 12 if quick else 250
    cfgs = configs(shapes)
    seed_list = seeds(quick)
    res = compare_seeds(cfgs, steps, seed_list, seq_len=SEQ, batch_size=8 if quick else 16)
    for label, cfg in cfgs.items():
        counts = parameter_counts(cfg)
        res[label].update(
            non_embedding=counts["non_embedding"],
            formula_parameters=counts["total"],
            flops_per_token=training_flops(cfg, SEQ)["per_token"],
        )
    labels = list(res)
    steps_down = {
        f"{a} minus {b}": difference(res[a]["val_losses"], res[b]["val_losses"])
        for a, b in zip(labels, labels[1:], strict=False)
    }
    signs = [d.sign for d in steps_down.values()]
    deeper_wins = signs[0] > 0  # the first step in depth helps
    verdict = "confirmed" if all(s > 0 for s in signs) else "depends" if deeper_wins else "refuted"
    if deeper_wins and signs[-1] < 0:
        verdict = "depends"  # better up to a point: the claim's own caveat, said in the summary
    summary = (
        f"Byte-level, {steps} steps of {8 if quick else 16} x {SEQ}, {len(seed_list)} seeds, head dim 16, SwiGLU at "
        "F = 8D/3: "
        + "; ".join(
            f"{k} (layers x width): {v['non_embedding']:,} non-embedding parameters ({v['parameters']:,} in all), "
            f"{v['flops_per_token'] / 1e6:.2f} training MFLOPs per token, validation loss {pm(v['val_losses'])}"
            for k, v in res.items()
        )
        + ". Shallower minus deeper: "
        + ", ".join(f"{k}: {d.text()}" for k, d in steps_down.items())
        + ". "
        + rule(len(seed_list))
    )

    def plot(fig):
        ax1, ax2 = fig.subplots(1, 2)
        plot_curves(ax1, res)
        ax2.errorbar(labels, [res[k]["val_loss"] for k in labels], [res[k]["val_std"] for k in labels], fmt="o-")
        ax2.set_xlabel("layers x width (equal non-embedding parameters)")
        ax2.set_ylabel("validation loss")

    numbers = dict(shapes=shapes, steps=steps, seeds=seed_list, runs=res, rule=rule(len(seed_list)))
    return Finding(verdict, summary, dict(numbers, differences={k: d.to_dict() for k, d in steps_down.items()}), plot)
