"""Heads in one layer attend differently: the study material's "heads learn different relationships in parallel".
For each layer of SmolLM2, the mean pairwise total-variation distance between its heads' attention patterns
(modernlm.inspect.pattern_distances: 0 when two heads attend alike, 1 when they never look at the same tokens), against
the same architecture at its random initialisation, whose heads all attend nearly uniformly."""

from __future__ import annotations

import torch

from ..inspect import pattern_distances
from ..model import Transformer
from ..threads import one_thread
from . import Finding, experiment
from ._inside import MODEL, prompts, rule, smollm2
from ._seeds import difference, pm

SKIP = 4  # queries from this position on: the first rows have too few keys to differ in
NEAR = 0.1  # two heads this close (mean total-variation distance) attend nearly alike


@one_thread()
@torch.no_grad()
def _distances(model, ids: list[int]) -> torch.Tensor:  # (L, H, H)
    out = model(torch.tensor([ids]), output_attentions=True)
    return torch.stack([pattern_distances(a[:, :, SKIP:]) for a in out.attentions])


def _layer_means(d: torch.Tensor) -> list[float]:  # (L, H, H) -> per layer, the mean over pairs of different heads
    H = d.shape[-1]
    return (d.sum((1, 2)) / (H * (H - 1))).tolist()


def _measure(quick: bool) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The prompts, and each prompt's pairwise distances (prompts, L, H, H) in SmolLM2 and at initialisation."""
    model, tokenizer = smollm2()
    torch.manual_seed(0)
    initial = Transformer(model.config).eval()  # the same architecture, random weights
    texts = list(prompts(quick))
    ids = [tokenizer.encode(text) for text in texts]
    return texts, torch.stack([_distances(model, i) for i in ids]), torch.stack([_distances(initial, i) for i in ids])


@experiment(
    "heads-differ",
    "The heads of one layer learn different relationships: their attention patterns differ from each other, where "
    "at initialisation they all attend alike",
    "study material on multi-head attention (heads learn different relationships in parallel, e.g. syntax vs "
    "semantics); Vaswani et al. 2017 section 3.2.2; Clark et al. 2019 (What does BERT look at?)",
)
def heads_differ(quick: bool) -> Finding:
    texts, trained, initial = _measure(quick)
    by_prompt = torch.tensor([_layer_means(d) for d in trained])  # (prompts, L)
    by_prompt_init = torch.tensor([_layer_means(d) for d in initial])
    per_prompt, per_prompt_init = by_prompt.mean(1).tolist(), by_prompt_init.mean(1).tolist()
    gap = difference(per_prompt, per_prompt_init)
    per_layer = [difference(a.tolist(), b.tolist()) for a, b in zip(by_prompt.T, by_prompt_init.T, strict=True)]
    apart = sum(d.sign > 0 for d in per_layer)  # layers whose heads differ more than at initialisation (counts)
    layers, layers_init = by_prompt.mean(0), by_prompt_init.mean(0)  # (L,) mean over prompts
    mean_matrix = trained.mean(0)  # (L, H, H) over prompts
    pairs = torch.ones(mean_matrix.shape[-1], mean_matrix.shape[-1], dtype=torch.bool).triu(1)  # (H, H)
    near, n_pairs = int((mean_matrix[:, pairs] < NEAR).sum()), mean_matrix.shape[0] * int(pairs.sum())
    verdict = "confirmed" if gap.sign > 0 and apart == len(per_layer) else "depends" if gap.sign > 0 else "refuted"
    low = int(layers.argmin())
    summary = (
        f"{MODEL}, {len(texts)} prompts, queries from position {SKIP}: the mean total-variation distance between "
        f"two heads of a layer is {pm(per_prompt)} (mean over layers), against {pm(per_prompt_init)} for the same "
        f"architecture at initialisation (trained minus initial {gap.text('')}). By layer, from "
        f"{float(layers.min()):.2f} (layer {low}) to {float(layers.max()):.2f} (layer {int(layers.argmax())}); "
        f"at initialisation at most {float(layers_init.max()):.3f}; in {apart} of {len(per_layer)} layers the gap "
        f"counts. Pairs of heads of a layer closer than {NEAR} (near duplicates): {near} of {n_pairs}. Attending "
        "differently needs the gap to count overall and in every layer. " + rule(len(texts), "prompt")
    )

    def plot(fig):
        ax1, ax2 = fig.subplots(1, 2)
        ax1.plot(layers.numpy(), "o-", ms=3, label="trained")
        ax1.plot(layers_init.numpy(), "s--", ms=3, label="at initialisation")
        ax1.set(xlabel="layer", ylabel="mean distance between two heads", ylim=(0, 1))
        ax1.legend()
        im = ax2.imshow(mean_matrix[low].numpy(), vmin=0, vmax=1, cmap="magma")
        ax2.set(xlabel="head", ylabel="head", title=f"layer {low} (the most alike), distances")
        fig.colorbar(im, ax=ax2)

    numbers = dict(model=MODEL, prompts=texts, skip=SKIP, per_prompt=per_prompt, per_prompt_initial=per_prompt_init,
                   difference=gap.to_dict(), layers=layers.tolist(), layers_initial=layers_init.tolist(),
                   layers_apart=apart, near_pairs=near, pairs=n_pairs, rule=rule(len(texts), "prompt"))  # fmt: skip
    return Finding(verdict, summary, numbers, plot)
