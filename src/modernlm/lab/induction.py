"""Previous-token and induction heads in SmolLM2 (Elhage et al. 2021; Olsson et al. 2022): on random tokens repeated
once, an induction head attends from each token of the repeat to the token that followed its first occurrence
(n - 1 positions back), which lets the model predict the repeat; a previous-token head attends to the token just
before. Scores from modernlm.inspect, per head, on several seeds of random tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..inspect import induction_scores, prev_token_scores, repeated_tokens
from ..threads import one_thread
from . import Finding, experiment
from ._inside import MODEL, rule, smollm2
from ._seeds import difference, pm, seeds

MARGIN = 0.3  # a head "exists" when its score counts above the uniform baseline and exceeds it by this much
LOW = 1000  # random tokens from ids >= LOW: no special tokens


@one_thread()
@torch.no_grad()
def _scores(model, n: int, batch: int, seed: int) -> dict:
    """Per-head scores (L, H) on one seed's repeated tokens, the uniform baselines, and the losses of each half."""
    ids = repeated_tokens(model.config.vocab_size, n, batch, seed, low=LOW)  # (B, 2n)
    out = model(ids, output_attentions=True)
    loss = F.cross_entropy(out.logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")  # (B, 2n - 1)
    t = torch.arange(2 * n, dtype=torch.float64)
    return dict(
        induction=induction_scores(out.attentions, n),
        prev=prev_token_scores(out.attentions),
        uniform_induction=float((1 / (t[n:] + 1)).mean()),  # a head spread evenly over its causal window
        uniform_prev=float((1 / (t[1:] + 1)).mean()),
        loss_first=float(loss[:, : n - 1].mean()),  # predicting random tokens
        loss_repeat=float(loss[:, n:].mean()),  # predicting the repeat (its first token is random too)
    )


def _best(per_seed: list[torch.Tensor], uniform: list[float]) -> dict:
    """The head with the highest mean score over seeds, its scores, and its difference from the uniform baseline."""
    mean = torch.stack(per_seed).mean(0)  # (L, H)
    layer, head = divmod(int(mean.argmax()), mean.shape[1])
    scores = [float(s[layer, head]) for s in per_seed]
    d = difference(scores, uniform)
    return dict(layer=layer, head=head, scores=scores, diff=d, exists=d.counts and d.mean > MARGIN,
                n_heads_over=int((mean > MARGIN).sum()), mean=mean)  # fmt: skip


@experiment(
    "induction-heads",
    "A trained transformer has previous-token heads and induction heads: on a repeated random sequence, some heads "
    "attend from each token to the token that followed its earlier occurrence, and the repeat is predicted",
    "Elhage et al. 2021 (A Mathematical Framework for Transformer Circuits); Olsson et al. 2022 (In-context Learning "
    "and Induction Heads); study material on heads learning different relationships",
)
def induction_heads(quick: bool) -> Finding:
    n, batch = (12, 2) if quick else (25, 4)
    seed_list = seeds(quick)
    model, _ = smollm2()
    runs = [_scores(model, n, batch, s) for s in seed_list]
    ind = _best([r["induction"] for r in runs], [r["uniform_induction"] for r in runs])
    prev = _best([r["prev"] for r in runs], [r["uniform_prev"] for r in runs])
    learn = difference([r["loss_first"] for r in runs], [r["loss_repeat"] for r in runs])
    both = ind["exists"] and prev["exists"]
    verdict = "confirmed" if both else "depends" if ind["exists"] or prev["exists"] else "refuted"
    summary = (
        f"{MODEL}: {batch} sequences of {n} random tokens repeated once, per seed, {len(seed_list)} seeds. Best "
        f"induction head (highest mean score): layer {ind['layer']} head {ind['head']}, score {pm(ind['scores'])} "
        f"(its attention on the token after the earlier occurrence; uniform attention would give "
        f"{runs[0]['uniform_induction']:.3f}; minus uniform {ind['diff'].text('')}); {ind['n_heads_over']} heads "
        f"score over {MARGIN}. Best previous-token head: layer {prev['layer']} head {prev['head']}, score "
        f"{pm(prev['scores'])} (uniform {runs[0]['uniform_prev']:.3f}; minus uniform {prev['diff'].text('')}); "
        f"{prev['n_heads_over']} heads over {MARGIN}. Loss on the first half "
        f"{pm([r['loss_first'] for r in runs])}, on the repeat {pm([r['loss_repeat'] for r in runs])} nats/token "
        f"(first minus repeat {learn.text()}): the repeat is predicted in context. A head exists when its score "
        f"minus the uniform baseline counts and exceeds {MARGIN}. " + rule(len(seed_list), "seed")
    )

    def plot(fig):
        for ax, (name, best) in zip(fig.subplots(1, 2), (("induction", ind), ("previous-token", prev)), strict=True):
            im = ax.imshow(best["mean"].numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1)
            ax.set(xlabel="head", ylabel="layer", title=f"{name} score (mean over seeds)")
            fig.colorbar(im, ax=ax)

    numbers = dict(model=MODEL, n=n, batch=batch, seeds=seed_list, margin=MARGIN, rule=rule(len(seed_list), "seed"))
    for name, best in (("induction", ind), ("previous_token", prev)):
        numbers[name] = dict(layer=best["layer"], head=best["head"], scores=best["scores"], exists=best["exists"],
                             difference=best["diff"].to_dict(), heads_over_margin=best["n_heads_over"],
                             mean_scores=torch.round(best["mean"], decimals=4).tolist())  # fmt: skip
    numbers["loss"] = dict(first=[r["loss_first"] for r in runs], repeat=[r["loss_repeat"] for r in runs],
                           difference=learn.to_dict())  # fmt: skip
    return Finding(verdict, summary, numbers, plot)
