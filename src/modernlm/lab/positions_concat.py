"""Adding against concatenating token and position embeddings, at the same width D: added, a learned (T, D) table is
summed into all D dimensions; concatenated (positions='learned_concat'), a (T, D/4) table fills the last quarter and
the tokens the first three. Validation loss at equal steps, and how far apart the trained token and position vectors
of the added model lie: their mean |cosine|, against sqrt(2 / (pi D)) for random directions."""

from __future__ import annotations

import math

import torch

from ..analysis import parameter_counts
from . import Finding, experiment
from ._seeds import difference, plot_curves, pm, rule, seeds
from ._train import compare_seeds, tiny_config

TOLERANCE = 0.02
SEQ = 64


def mean_abs_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean |cos| over all pairs of rows of a (N, D) and b (M, D)."""
    a, b = torch.nn.functional.normalize(a.double(), dim=-1), torch.nn.functional.normalize(b.double(), dim=-1)
    return float((a @ b.T).abs().mean())


def _overlap(model) -> dict[str, float]:
    """Mean |cos| between the embeddings of the bytes the corpus uses (tab, newline, printable ASCII) and the position
    vectors, and among the position vectors themselves (the added model only)."""
    if model.config.positions != "learned":
        return {}
    used = torch.tensor([9, 10, *range(32, 127)])
    tokens, pos = model.embed.weight.detach()[used], model.pos_embed.weight.detach()[:SEQ]
    return dict(token_position=mean_abs_cosine(tokens, pos), token_token=mean_abs_cosine(tokens, tokens))


@experiment(
    "add-vs-concat-positions",
    "Adding position embeddings to token embeddings works as well as concatenating them at the same width: in many "
    "dimensions the model keeps the two nearly orthogonal, so the sum loses little",
    "Vaswani et al. 2017 section 3.5 (positions are summed); study cards on positional encodings",
)
def add_vs_concat(quick: bool) -> Finding:
    d, layers, steps = (32, 2, 10) if quick else (64, 2, 300)
    base = dict(d_model=d, n_layers=layers, max_seq_len=SEQ)
    configs = {
        "added (learned)": tiny_config(**base, positions="learned"),
        "concatenated (learned, D/4)": tiny_config(**base, positions="learned_concat"),
        "RoPE (reference)": tiny_config(**base, positions="rope"),
    }
    seed_list = seeds(quick)
    res = compare_seeds(configs, steps, seed_list, seq_len=SEQ, batch_size=8 if quick else 16, measure=_overlap)
    for label, cfg in configs.items():
        res[label]["formula_parameters"] = parameter_counts(cfg)["total"]
        res[label]["position_parameters"] = parameter_counts(cfg)["positions"]
    added, concat = res["added (learned)"], res["concatenated (learned, D/4)"]
    cost = difference(added["val_losses"], concat["val_losses"])  # > 0: adding is worse
    verdict = "confirmed" if cost.mean <= 0 or cost.negligible(TOLERANCE) else "refuted"
    overlap = {k: sum(v) / len(v) for k, v in added["measured"].items()}
    random = math.sqrt(2 / (math.pi * d))  # E|cos| of two random directions in D dimensions (large D)
    summary = (
        f"{layers} layers, {d} wide, byte-level, {steps} steps of {8 if quick else 16} x {SEQ}, "
        f"{len(seed_list)} seeds: "
        + "; ".join(
            f"{k}: {v['position_parameters']:,} position parameters ({v['parameters']:,} in all), validation loss "
            f"{pm(v['val_losses'])}"
            for k, v in res.items()
        )
        + f". Added minus concatenated: {cost.text()}. In the trained added model the mean |cos| between the byte "
        f"embeddings and the position vectors is {overlap['token_position']:.3f} (among bytes: "
        f"{overlap['token_token']:.3f}; random directions in {d} dimensions: {random:.3f}). Adding "
        f"{'costs nothing measurable' if verdict == 'confirmed' else 'costs more than'} (tolerance {TOLERANCE} "
        "nats). " + rule(len(seed_list))
    )

    def plot(fig):
        ax1, ax2 = fig.subplots(1, 2)
        plot_curves(ax1, res)
        labels = ["byte-position", "byte-byte", "random"]
        ax2.bar(labels, [overlap["token_position"], overlap["token_token"], random])
        ax2.set_ylabel("mean |cos|, trained added model")

    numbers = dict(d_model=d, layers=layers, steps=steps, seeds=seed_list, runs=res, overlap=overlap)
    numbers.update(added_minus_concat=cost.to_dict(), random_cosine=random, rule=rule(len(seed_list)))
    return Finding(verdict, summary, numbers, plot)
