"""The causal mask's lower triangle, looked at: in SmolLM2's attention probabilities (output_attentions, the explicit
softmax with -inf above the diagonal) every weight on a later token is exactly 0.0, in every layer and head, and each
row still sums to 1; so changing the later tokens leaves the earlier positions' logits as they were."""

from __future__ import annotations

import torch

from ..threads import one_thread
from . import Finding, experiment
from ._inside import MODEL, prompts, smollm2

PREFIX_TOLERANCE = 1e-4  # logits of the same prefix inside two sequences (measured: exactly equal on one CPU thread)


@one_thread()
@torch.no_grad()
def _look(model, ids: list[int]) -> dict:
    """Above the diagonal: the largest weight and how many weights were checked; the rows' largest distance from a
    sum of 1; the earlier positions' logits when the second half of the tokens is replaced."""
    x = torch.tensor([ids])  # (1, T)
    out = model(x, output_attentions=True)
    T = x.shape[1]
    above = torch.ones(T, T, dtype=torch.bool).triu(1)
    future = torch.stack([a[0][:, above] for a in out.attentions])  # (L, H, T(T-1)/2)
    sums = torch.stack([a[0].sum(-1) for a in out.attentions])  # (L, H, T)
    half = T // 2
    other = x.clone()
    g = torch.Generator().manual_seed(0)
    other[0, half:] = torch.randint(1000, model.config.vocab_size, (T - half,), generator=g)  # other later tokens
    plain = model(x)  # (1, T, V) through SDPA, as the logits of other are
    changed = (model(other)[0, :half] - plain[0, :half]).abs().max()
    return dict(tokens=T, max_above=float(future.max()), checked=future.numel(),
                nonzero_above=int((future != 0).sum()), row_sum_error=float((sums - 1).abs().max()),
                prefix_logit_change=float(changed), eager_vs_sdpa=float((out.logits - plain).abs().max()))  # fmt: skip


@experiment(
    "causal-mask-zero",
    "The causal mask gives exactly zero attention above the diagonal: no token sees a later one, so the earlier "
    "positions' outputs do not depend on what follows",
    "study material on causal masking (the lower triangle); Vaswani et al. 2017 section 3.2.3",
)
def causal_mask_zero(quick: bool) -> Finding:
    model, tokenizer = smollm2()
    texts = prompts(quick)
    runs = [_look(model, tokenizer.encode(p)) for p in texts]
    zero = all(r["nonzero_above"] == 0 for r in runs)
    prefix = max(r["prefix_logit_change"] for r in runs)
    verdict = "confirmed" if zero and prefix < PREFIX_TOLERANCE else "refuted"
    checked = sum(r["checked"] for r in runs)
    summary = (
        f"{MODEL}, {len(texts)} prompts of {min(r['tokens'] for r in runs)}-{max(r['tokens'] for r in runs)} tokens, "
        f"{model.config.n_layers} layers x {model.config.n_heads} heads: of the {checked:,} attention weights above "
        f"the diagonal, {sum(r['nonzero_above'] for r in runs)} are not exactly 0.0 (the largest is "
        f"{max(r['max_above'] for r in runs)!r}); every row sums to 1 within "
        f"{max(r['row_sum_error'] for r in runs):.1e}. Replacing the second half of the tokens changes the first "
        f"half's logits by at most {prefix!r} (tolerance {PREFIX_TOLERANCE:g}). (The explicit softmax that shows "
        f"the weights and SDPA, which never forms them, give logits {max(r['eager_vs_sdpa'] for r in runs):.1e} "
        "apart: float rounding.) No seeds: the mask is exact, so one nonzero weight would refute the claim."
    )

    def plot(fig):
        x = torch.tensor([tokenizer.encode(texts[0])])
        with torch.no_grad():
            pattern = model(x, output_attentions=True).attentions[0][0, 0]  # (T, T) layer 0, head 0
        ax1, ax2 = fig.subplots(1, 2)
        ax1.imshow(pattern.numpy(), cmap="viridis")
        ax1.set(title="layer 0, head 0: probabilities", xlabel="key", ylabel="query")
        ax2.imshow((pattern == 0).numpy(), cmap="gray_r")
        ax2.set(title="exactly 0.0 (black)", xlabel="key", ylabel="query")

    numbers = dict(model=MODEL, prompts=list(texts), runs=runs, prefix_tolerance=PREFIX_TOLERANCE)
    return Finding(verdict, summary, numbers, plot)
