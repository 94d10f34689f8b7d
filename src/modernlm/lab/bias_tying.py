"""Biases on and off (q/k/v, output and MLP projections), and the embedding tied to the LM head or not: parameters
(checked against modernlm.analysis) and validation loss after the same steps."""

from __future__ import annotations

from ..analysis import parameter_counts
from . import Finding, experiment
from ._seeds import difference, plot_curves, pm, rule, seeds
from ._train import compare_seeds, tiny_config

TOLERANCE = 0.02  # nats: what 'nothing' and 'little cost' allow


@experiment(
    "bias-and-tying",
    "Biases in the projections add few parameters and nothing to the loss (so modern models drop them); tying the "
    "embedding and the LM head saves V·D parameters at little or no cost",
    "Chowdhery et al. 2022 (PaLM: no biases); Press & Wolf 2017 (weight tying); study cards on the modern block",
)
def bias_and_tying(quick: bool) -> Finding:
    d, layers, steps = (64, 2, 30) if quick else (96, 3, 400)
    base = dict(d_model=d, n_layers=layers, ffn_multiple_of=8)
    configs = {
        "no bias, untied": tiny_config(**base),
        "biases, untied": tiny_config(**base, qkv_bias=True, out_bias=True, mlp_bias=True),
        "no bias, tied": tiny_config(**base, tie_embeddings=True),
    }
    seed_list = seeds(quick)
    res = compare_seeds(configs, steps, seed_list, batch_size=8 if quick else 16)
    for label, cfg in configs.items():
        res[label]["formula_parameters"] = parameter_counts(cfg)["total"]
    ref, bias, tied = (res[k] for k in configs)
    bias_share = bias["parameters"] / ref["parameters"] - 1
    saved = ref["parameters"] - tied["parameters"]
    gain = difference(ref["val_losses"], bias["val_losses"])  # > 0: biases lower the loss
    cost = difference(tied["val_losses"], ref["val_losses"])  # > 0: tying raises the loss
    bias_ok = bias_share < 0.02 and (gain.mean <= 0 or gain.negligible(TOLERANCE))  # few parameters, no real gain
    tie_ok = saved == 256 * d and (cost.mean <= 0 or cost.negligible(TOLERANCE))
    verdict = "confirmed" if bias_ok and tie_ok else "refuted" if not (bias_ok or tie_ok) else "depends"
    summary = (
        f"{layers} layers, {d} wide, byte vocabulary V=256, {steps} AdamW steps, {len(seed_list)} seeds: "
        + "; ".join(
            f"{k}: {v['parameters']:,} parameters (analysis: {v['formula_parameters']:,}), validation loss "
            f"{pm(v['val_losses'])}"
            for k, v in res.items()
        )
        + f". Biases add {100 * bias_share:.2f}% parameters; the loss without them minus with them: {gain.text()}. "
        f"Tying saves {saved:,} = V·D = 256·{d} parameters ({100 * saved / ref['parameters']:.0f}% of this small "
        f"model, under 2% of a 7B one); tied minus untied: {cost.text()}. Bias claim "
        f"{'holds' if bias_ok else 'does not hold'}, tying claim {'holds' if tie_ok else 'does not hold'}. "
        + rule(len(seed_list))
        + f" 'Nothing' / 'little cost' allows a real difference under {TOLERANCE} nats."
    )

    def plot(fig):
        ax1, ax2 = fig.subplots(1, 2)
        plot_curves(ax1, res)
        ax2.bar(list(res), [v["val_loss"] for v in res.values()], yerr=[v["val_std"] for v in res.values()])
        ax2.set_ylim(min(v["val_loss"] for v in res.values()) - 0.1, max(v["val_loss"] for v in res.values()) + 0.05)
        ax2.set_ylabel(f"validation loss (mean ± std, {len(seed_list)} seeds)")

    numbers = dict(d_model=d, layers=layers, steps=steps, seeds=seed_list, runs=res)
    numbers.update(bias_gain=gain.to_dict(), tie_cost=cost.to_dict(), rule=rule(len(seed_list)))
    return Finding(verdict, summary, numbers, plot)
