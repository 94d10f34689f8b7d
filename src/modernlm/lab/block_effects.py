"""The four modern blocks' effects against model size: from the modern block (RMSNorm, SwiGLU, RoPE, GQA), each one is
switched back to its 2017 counterpart in turn (LayerNorm, a 4x GELU MLP, learned positions, MHA) at two sizes; the
effect of a block is the ablated model's validation loss minus the modern one's, over seeds."""

from __future__ import annotations

from ..config import ModelConfig
from . import Finding, experiment
from ._seeds import difference, pm, rule, seeds
from ._train import compare_seeds, tiny_config

TOLERANCE = 0.02  # nats: what "negligible" allows
ABLATIONS = {  # label: the 2017 counterpart of one modern block
    "LayerNorm for RMSNorm": dict(norm="layernorm"),
    "GELU 4x for SwiGLU": dict(ffn="gelu"),
    "learned positions for RoPE": dict(positions="learned"),
    "MHA for GQA": dict(n_kv_heads=None),
}


def configs(d: int, layers: int) -> dict[str, ModelConfig]:
    """The modern block (4 heads, 2 KV heads) and one config per ablation, at width d and depth `layers`."""
    base = dict(d_model=d, n_layers=layers, n_heads=4, n_kv_heads=2, ffn_multiple_of=8, max_seq_len=64)
    out = {"modern": tiny_config(**base)}
    for label, change in ABLATIONS.items():
        fields = {**base, **change}
        if change.get("ffn") == "gelu":
            fields["ffn_hidden"] = 4 * d
        if "n_kv_heads" in change:
            fields["n_kv_heads"] = fields["n_heads"]
        out[label] = tiny_config(**fields)
    return out


@experiment(
    "block-effects-vs-size",
    "On a small (10M) model the effects of the four modern blocks (RMSNorm, SwiGLU, RoPE, GQA) are negligible; they "
    "show at scale",
    "study cards on the modern block (the Modern Blocks exercise); Narang et al. 2021 (Do Transformer Modifications "
    "Transfer?)",
)
def block_effects_vs_size(quick: bool) -> Finding:
    sizes = [(32, 2)] if quick else [(32, 2), (96, 3)]
    steps = 8 if quick else 200
    seed_list = seeds(quick)
    res, effects = {}, {}
    for d, layers in sizes:
        key = f"{layers} x {d}"
        res[key] = compare_seeds(configs(d, layers), steps, seed_list, batch_size=8 if quick else 16)
        modern = res[key]["modern"]["val_losses"]
        effects[key] = {k: difference(v["val_losses"], modern) for k, v in res[key].items() if k != "modern"}
    small, large = effects[next(iter(effects))], effects[list(effects)[-1]]
    negligible_small = all(e.negligible(TOLERANCE) for e in small.values())
    shows_large = any(e.counts and abs(e.mean) >= TOLERANCE for e in large.values())
    verdict = "confirmed" if negligible_small and shows_large and len(sizes) > 1 else "depends"
    if not negligible_small:
        verdict = "refuted"
    params = {k: v["modern"]["parameters"] for k, v in res.items()}
    summary = (
        f"{steps} steps of {8 if quick else 16} x 64 bytes, {len(seed_list)} seeds, modern block: RMSNorm, SwiGLU 8/3, "
        "RoPE, 4 heads with 2 KV heads. Ablated minus modern validation loss (positive: the modern block helps): "
        + "; ".join(
            f"{key} ({params[key]:,} parameters, modern loss {pm(res[key]['modern']['val_losses'])}): "
            + ", ".join(f"{k} {e.text()}" for k, e in per.items())
            for key, per in effects.items()
        )
        + f". At the smallest size every effect is {'negligible' if negligible_small else 'NOT negligible'} (within "
        f"noise or under {TOLERANCE} nats); at the largest size {'some effect shows' if shows_large else 'none shows'}"
        ". These models are 25-1000x smaller than 10M parameters, the size the claim names. " + rule(len(seed_list))
    )

    def plot(fig):
        ax = fig.subplots(1, 1)
        labels = list(ABLATIONS)
        width = 0.8 / len(effects)
        for i, (key, per) in enumerate(effects.items()):
            xs = [j + i * width for j in range(len(labels))]
            ax.bar(xs, [per[k].mean for k in labels], width, yerr=[per[k].std for k in labels], label=key)
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels, fontsize=7)
        ax.set_ylabel("ablated minus modern validation loss (nats)")
        ax.legend()

    numbers = dict(sizes=sizes, steps=steps, seeds=seed_list, runs=res, parameters=params, rule=rule(len(seed_list)))
    numbers["effects"] = {key: {k: e.to_dict() for k, e in per.items()} for key, per in effects.items()}
    return Finding(verdict, summary, numbers, plot)
