"""The 2017 block (post-LayerNorm, ReLU MLP, sinusoidal positions, biases, scaled tied embeddings: the `gpt-2017`
preset) against the 2024 block (pre-RMSNorm, SwiGLU, RoPE, GQA, no biases: the `llama` preset), both shrunk to the
same width, depth and heads, trained on the same byte corpus for the same training FLOPs (modernlm.analysis)."""

from __future__ import annotations

from ..analysis import training_flops
from ..config import preset
from . import Finding, experiment
from ._seeds import difference, pm, rule, seeds
from ._train import compare_seeds

SEQ = 64


def _configs(d: int, layers: int) -> dict:
    shape = dict(vocab_size=256, d_model=d, n_layers=layers, n_heads=4, max_seq_len=SEQ)
    return {  # dropout off in both: runs this short underfit, and dropout is regularisation, not architecture
        "2017 block": preset("gpt-2017", **shape, ffn_hidden=4 * d, dropout=0.0),
        "2024 block": preset("llama", **shape, n_kv_heads=2, ffn_multiple_of=8),
    }


@experiment(
    "gpt2017-vs-llama",
    "The 2024 (Llama) block reaches a lower loss than the 2017 (Vaswani) block for the same training compute",
    "Touvron et al. 2023; Narang et al. 2021 (Do Transformer Modifications Transfer?); study cards on the modern block",
)
def gpt2017_vs_llama(quick: bool) -> Finding:
    d, layers, steps = (64, 2, 40) if quick else (96, 3, 400)
    configs = _configs(d, layers)
    per_token = {k: training_flops(c, SEQ)["per_token"] for k, c in configs.items()}
    budget = steps * 16 * SEQ * min(per_token.values())  # the cheaper block gets `steps` steps
    n_steps = {k: round(budget / (16 * SEQ * f)) for k, f in per_token.items()}
    seed_list = seeds(quick)
    res = compare_seeds(configs, n_steps, seed_list, seq_len=SEQ)
    old, new = res["2017 block"], res["2024 block"]
    gap = difference(old["val_losses"], new["val_losses"])  # > 0: the 2024 block is better
    verdict = "confirmed" if gap.sign > 0 else "refuted" if gap.sign < 0 else "depends"
    summary = (
        f"Both at {d} wide, {layers} layers, 4 heads, byte vocabulary, batch 16 x {SEQ}, AdamW lr 3e-3 with clipping, "
        f"a budget of {budget / 1e12:.3f} TFLOPs (training matmul FLOPs from modernlm.analysis), {len(seed_list)} "
        "seeds: "
        + "; ".join(
            f"{k}: {v['parameters']:,} parameters, {per_token[k] / 1e6:.2f} MFLOPs per token, {v['steps']} "
            f"steps, validation loss {pm(v['val_losses'])} nats/byte"
            for k, v in res.items()
        )
        + f". The 2017 block's loss minus the 2024 block's: {gap.text()}. "
        + rule(len(seed_list))
    )

    def plot(fig):
        ax = fig.subplots(1, 1)
        for k, v in res.items():
            flops = [i * 16 * SEQ * per_token[k] for i in range(len(v["losses"]))]
            ax.plot(flops, v["losses"], label=k, lw=0.8)
        ax.set_xlabel("training FLOPs")
        ax.set_ylabel("training loss (nats/byte)")
        ax.legend()

    return Finding(
        verdict,
        summary,
        dict(
            d_model=d,
            layers=layers,
            flops_per_token=per_token,
            budget=budget,
            runs=res,
            seeds=seed_list,
            gap=gap.to_dict(),
            rule=rule(len(seed_list)),
        ),  # fmt: skip
        plot,
    )
