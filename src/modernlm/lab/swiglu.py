"""SwiGLU at 8/3 width against SwiGLU at 4x and a GELU MLP at 4x: parameters (three D x F matrices against two, so
8/3 keeps the 4x MLP's count) and validation loss after the same number of steps on the stdlib byte corpus."""

from __future__ import annotations

from ..analysis import parameter_counts
from . import Finding, experiment
from ._seeds import difference, plot_curves, pm, rule, seeds
from ._train import compare_seeds, tiny_config


def _configs(d: int, layers: int) -> dict:
    base = dict(d_model=d, n_layers=layers, ffn_multiple_of=8)
    return {
        "SwiGLU 8/3": tiny_config(**base, ffn="swiglu"),
        "SwiGLU 4x": tiny_config(**base, ffn="swiglu", ffn_hidden=4 * d),
        "GELU 4x": tiny_config(**base, ffn="gelu", ffn_hidden=4 * d),
    }


@experiment(
    "swiglu-vs-gelu",
    "SwiGLU at 8/3 of the width has the parameters of a 4x GELU MLP and reaches a lower loss at equal steps",
    "Shazeer 2020 (GLU Variants Improve Transformer); Llama (Touvron et al. 2023); study cards on SwiGLU",
)
def swiglu_vs_gelu(quick: bool) -> Finding:
    d, layers, steps = (64, 2, 30) if quick else (96, 3, 400)
    configs = _configs(d, layers)
    seed_list = seeds(quick)
    res = compare_seeds(configs, steps, seed_list, batch_size=8 if quick else 16)
    for label, cfg in configs.items():
        res[label]["ffn_parameters"] = parameter_counts(cfg)["ffn"]
        res[label]["ffn_hidden"] = cfg.ffn_hidden
    swi, gelu, wide = res["SwiGLU 8/3"], res["GELU 4x"], res["SwiGLU 4x"]
    same_params = abs(swi["ffn_parameters"] / gelu["ffn_parameters"] - 1) < 0.05
    gap = difference(gelu["val_losses"], swi["val_losses"])  # > 0: SwiGLU 8/3 is better
    wide_gap = difference(gelu["val_losses"], wide["val_losses"])
    verdict = "confirmed" if same_params and gap.sign > 0 else "refuted" if gap.sign < 0 else "depends"
    summary = (
        f"{layers} layers, {d} wide, byte-level, {steps} AdamW steps of {8 if quick else 16} x 64 tokens, "
        f"{len(seed_list)} seeds: "
        + "; ".join(
            f"{k}: F={v['ffn_hidden']}, FFN parameters {v['ffn_parameters']:,} (model {v['parameters']:,}), "
            f"validation loss {pm(v['val_losses'])}"
            for k, v in res.items()
        )
        + f". SwiGLU 8/3 has {100 * (swi['ffn_parameters'] / gelu['ffn_parameters'] - 1):+.1f}% the FFN parameters "
        f"of GELU 4x (3·D·F with F = 8/3·D rounded up to a multiple of 8, against 2·D·4D); GELU 4x minus SwiGLU 8/3: "
        f"{gap.text()} (GELU 4x minus SwiGLU 4x, which has 1.5x the FFN parameters: {wide_gap.text()}). "
        + rule(len(seed_list))
    )

    def plot(fig):
        ax1, ax2 = fig.subplots(1, 2)
        plot_curves(ax1, res, "training loss (nats/byte)")
        ax2.bar(list(res), [v["val_loss"] for v in res.values()], yerr=[v["val_std"] for v in res.values()])
        ax2.set_ylim(min(v["val_loss"] for v in res.values()) - 0.1, max(v["val_loss"] for v in res.values()) + 0.05)
        ax2.set_ylabel(f"validation loss (mean ± std, {len(seed_list)} seeds)")

    numbers = dict(d_model=d, layers=layers, steps=steps, seeds=seed_list, runs=res, gap=gap.to_dict())
    return Finding(verdict, summary, dict(numbers, wide_gap=wide_gap.to_dict(), rule=rule(len(seed_list))), plot)
