"""Biases on and off (q/k/v, output and MLP projections), and the embedding tied to the LM head or not: parameters
(checked against modernlm.analysis) and validation loss after the same steps."""

from __future__ import annotations

from ..analysis import parameter_counts
from . import Finding, experiment
from ._train import compare, tiny_config


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
    res = compare(configs, steps)
    for label, cfg in configs.items():
        res[label]["formula_parameters"] = parameter_counts(cfg)["total"]
    ref, bias, tied = (res[k] for k in configs)
    bias_share = bias["parameters"] / ref["parameters"] - 1
    saved = ref["parameters"] - tied["parameters"]
    bias_gain, tie_cost = ref["val_loss"] - bias["val_loss"], tied["val_loss"] - ref["val_loss"]
    bias_ok = bias_share < 0.02 and bias_gain < 0.02  # few parameters, no real gain
    tie_ok = saved == 256 * d and tie_cost < 0.02
    verdict = "confirmed" if bias_ok and tie_ok else "refuted" if not (bias_ok or tie_ok) else "depends"
    summary = (
        f"{layers} layers, {d} wide, byte vocabulary V=256, {steps} AdamW steps: "
        + "; ".join(
            f"{k}: {v['parameters']:,} parameters (analysis: {v['formula_parameters']:,}), validation loss "
            f"{v['val_loss']:.3f}"
            for k, v in res.items()
        )
        + f". Biases add {100 * bias_share:.2f}% parameters and change the loss by {-bias_gain:+.3f} nats; tying "
        f"saves {saved:,} = V·D = 256·{d} parameters ({100 * saved / ref['parameters']:.0f}% of this small model, "
        f"under 2% of a 7B one) and changes the loss by {tie_cost:+.3f} nats. Bias claim "
        f"{'holds' if bias_ok else 'does not hold'}, tying claim {'holds' if tie_ok else 'does not hold'} (threshold: "
        "0.02 nats, about the noise of runs this short)."
    )

    def plot(fig):
        ax1, ax2 = fig.subplots(1, 2)
        for k, v in res.items():
            ax1.plot(v["losses"], label=k, lw=0.8)
        ax1.set_xlabel("step")
        ax1.set_ylabel("training loss")
        ax1.legend()
        ax2.bar(list(res), [v["parameters"] for v in res.values()])
        ax2.set_ylabel("parameters")

    return Finding(verdict, summary, dict(d_model=d, layers=layers, steps=steps, runs=res), plot)
