"""The logit lens (nostalgebraist 2020): the residual stream after each block, read through the final norm and the LM
head, is a prediction of the next token; in a trained model it agrees more and more with the final prediction as
depth grows. Measured on SmolLM2 over several prompts with modernlm.inspect.logit_lens."""

from __future__ import annotations

import torch

from ..inspect import logit_lens
from ..threads import one_thread
from . import Finding, experiment
from ._inside import MODEL, prompts, rule, smollm2
from ._seeds import difference, pm


@one_thread()
@torch.no_grad()
def _curves(model, ids: list[int]) -> tuple[list[float], list[float]]:
    """Per layer (the embeddings, then each block): the share of positions whose top token is the final one, and
    the mean KL divergence KL(final || layer) in nats."""
    lens, logits = logit_lens(model, torch.tensor([ids]))  # (L + 1, 1, T, V), (1, T, V)
    top = lens.argmax(-1)[:, 0]  # (L + 1, T)
    final = logits[0].log_softmax(-1)  # (T, V)
    kl = [float((final.exp() * (final - layer[0].log_softmax(-1))).sum(-1).mean()) for layer in lens]
    return (top == logits[0].argmax(-1)).float().mean(-1).tolist(), kl


def _thirds(curve: list[float]) -> tuple[float, float, float]:
    """Mean of the first, middle and last third of the blocks before the last (the embeddings and the last block's
    output, the final prediction itself, left out)."""
    inner = curve[1:-1]
    k = len(inner) // 3
    parts = (inner[:k], inner[k : len(inner) - k], inner[len(inner) - k :])
    return tuple(sum(p) / len(p) for p in parts)


@experiment(
    "logit-lens-depth",
    "Read through the final norm and the LM head, the residual stream's prediction agrees more and more with the "
    "model's final prediction as depth grows (the logit lens)",
    "nostalgebraist 2020 (interpreting GPT: the logit lens); Belrose et al. 2023 (the tuned lens); study material on "
    "the residual stream every block writes into",
)
def logit_lens_depth(quick: bool) -> Finding:
    model, tokenizer = smollm2()
    texts = prompts(quick)
    runs = [_curves(model, tokenizer.encode(p)) for p in texts]
    thirds = [_thirds(agree) for agree, _ in runs]
    early, middle, late = ([t[i] for t in thirds] for i in range(3))
    rise1, rise2 = difference(middle, early), difference(late, middle)
    rise = difference(late, early)
    up = rise.sign > 0 and rise1.mean >= 0 and rise2.mean >= 0
    verdict = "confirmed" if up and rise2.sign > 0 else "depends" if rise.sign > 0 else "refuted"
    L = len(runs[0][0]) - 1
    mean = [sum(r[0][i] for r in runs) / len(runs) for i in range(L + 1)]
    kl = [sum(r[1][i] for r in runs) / len(runs) for i in range(L + 1)]
    summary = (
        f"{MODEL}, {len(texts)} prompts: at each layer, the share of positions whose top next token (the residual "
        f"stream through the final norm and the LM head) is the final one. Blocks 1..{L - 1} in thirds: first "
        f"{pm(early)}, middle {pm(middle)}, last {pm(late)} (over prompts). Middle minus first {rise1.text('')}, last "
        f"minus middle {rise2.text('')}, last minus first {rise.text('')}. Mean over prompts by layer: "
        + ", ".join(f"{a:.2f}" for a in mean)
        + f". KL(final || layer) falls from {kl[1]:.1f} nats after block 0 to {kl[L - 1]:.1f} before the last. "
        "Rising needs the last third over the first and the middle (the differences count) and no fall between. "
        + rule(len(texts), "prompt")
    )

    def plot(fig):
        ax1, ax2 = fig.subplots(1, 2)
        for agree, _ in runs:
            ax1.plot(agree, color="grey", alpha=0.4, lw=0.8)
        ax1.plot(mean, "o-", ms=3, label="mean over prompts")
        ax1.set(xlabel="layer (0: the embeddings)", ylabel="share of positions agreeing with the final top token")
        ax1.legend()
        ax2.plot(range(1, L + 1), kl[1:], "o-", ms=3)
        ax2.set(xlabel="layer", ylabel="KL(final || layer), nats", yscale="log")

    numbers = dict(model=MODEL, prompts=list(texts), agreement=[r[0] for r in runs], kl=[r[1] for r in runs],
                   thirds=dict(first=early, middle=middle, last=late), middle_minus_first=rise1.to_dict(),
                   last_minus_middle=rise2.to_dict(), last_minus_first=rise.to_dict(),
                   rule=rule(len(texts), "prompt"))  # fmt: skip
    return Finding(verdict, summary, numbers, plot)
