"""Regularisation on a small corpus, where a tiny model overfits within a few hundred steps: dropout (everywhere, or on
the attention weights only) against none, and AdamW's decoupled weight decay against an L2 term in Adam's gradient
(Loshchilov & Hutter 2019: Adam divides the L2 gradient by its second moment, so weights with large gradients are
barely decayed). Training loss is measured on the training bytes, validation loss on held-out ones; the gap is the
overfitting."""

from __future__ import annotations

import torch

from ..config import ModelConfig
from . import Finding, experiment
from ._seeds import difference, mean_std, plot_curves, pm, rule, seeds
from ._train import compare_seeds, corpus, evaluate, tiny_config

WINDOWS = 32  # evaluation windows of 64 bytes, on the training bytes and on held-out ones (8 in quick runs)


def small_corpus(quick: bool) -> torch.Tensor:
    """(N,) the first 20 KB of the training bytes (a few hundred steps of 16 x 64 see each byte ~10 times)."""
    return corpus()[0][: 8_000 if quick else 20_000]


def _fit(configs: dict[str, ModelConfig], quick: bool, **kw) -> tuple[dict, tuple[int, ...], int]:
    """Train each config on the small corpus over the seeds; add train/validation loss and their gap per seed."""
    data, seed_list = small_corpus(quick), seeds(quick)
    steps = 10 if quick else 300

    windows = 8 if quick else WINDOWS

    def measure(model):
        return dict(train=evaluate(model, 64, windows, data=data), val=evaluate(model, 64, windows))

    res = compare_seeds(configs, steps, seed_list, data=data, measure=measure, batch_size=8 if quick else 16, **kw)
    for r in res.values():
        m = r["measured"]
        gaps = [v - t for t, v in zip(m["train"], m["val"], strict=True)]
        r.update(train_losses=m["train"], val_losses=m["val"], gaps=gaps)
        r["val_loss"], r["val_std"] = mean_std(m["val"])
    return res, seed_list, steps


def _text(res: dict) -> str:
    return "; ".join(
        f"{k}: training bytes {pm(v['train_losses'])}, held-out {pm(v['val_losses'])}, gap {pm(v['gaps'])}"
        for k, v in res.items()
    )


def _plot(res: dict, seed_list):
    def plot(fig):
        ax1, ax2 = fig.subplots(1, 2)
        plot_curves(ax1, res, fontsize=7)
        labels, xs = list(res), range(len(res))
        for off, key, name in ((-0.2, "train_losses", "training bytes"), (0.2, "val_losses", "held-out bytes")):
            means = [sum(v[key]) / len(v[key]) for v in res.values()]
            ax2.bar([x + off for x in xs], means, 0.4, label=name)
        ax2.set_xticks(list(xs), labels, fontsize=7)
        ax2.set_ylabel(f"loss (mean of {len(seed_list)} seeds)")
        ax2.legend()

    return plot


@experiment(
    "dropout-overfitting",
    "Dropout (and attention dropout) reduces overfitting on a small corpus: a smaller gap between training and "
    "validation loss and a lower validation loss",
    "Srivastava et al. 2014 (dropout); Vaswani et al. 2017 section 5.4; study cards on regularisation",
)
def dropout_overfitting(quick: bool) -> Finding:
    base = dict(d_model=64, n_layers=2)
    configs = {
        "no dropout": tiny_config(**base),
        "dropout 0.1": tiny_config(**base, dropout=0.1),
        "dropout 0.2": tiny_config(**base, dropout=0.2),
        "attention dropout 0.2 only": tiny_config(**base, attn_dropout=0.2, resid_dropout=0.0, embed_dropout=0.0),
    }
    res, seed_list, steps = _fit(configs, quick)
    none = res["no dropout"]
    diffs = {k: difference(none["val_losses"], v["val_losses"]) for k, v in res.items() if k != "no dropout"}
    gaps = {k: difference(none["gaps"], v["gaps"]) for k, v in res.items() if k != "no dropout"}
    helps = [k for k in diffs if diffs[k].sign > 0 and gaps[k].sign > 0]
    hurts = [k for k in diffs if diffs[k].sign < 0]
    verdict = "confirmed" if helps and not hurts else "refuted" if hurts and not helps else "depends"
    summary = (
        f"2 layers, 64 wide, {steps} steps of {8 if quick else 16} x 64 bytes on the first "
        f"{len(small_corpus(quick)):,} bytes of the corpus, {len(seed_list)} seeds; loss over "
        f"{8 if quick else WINDOWS} windows: "
        + _text(res)
        + ". Validation loss without dropout minus with: "
        + ", ".join(f"{k} {d.text()}" for k, d in diffs.items())
        + "; the gap without minus with: "
        + ", ".join(f"{k} {d.text()}" for k, d in gaps.items())
        + f". Dropout helps (both count) for: {', '.join(helps) or 'none'}. "
        + rule(len(seed_list))
    )
    numbers = dict(steps=steps, corpus_bytes=len(small_corpus(quick)), seeds=seed_list, runs=res)
    numbers.update(
        val_gain={k: d.to_dict() for k, d in diffs.items()}, gap_gain={k: d.to_dict() for k, d in gaps.items()}
    )
    return Finding(verdict, summary, dict(numbers, rule=rule(len(seed_list))), _plot(res, seed_list))


@experiment(
    "adamw-vs-l2",
    "AdamW's decoupled weight decay regularises better than the same decay as an L2 term in Adam, whose adaptive "
    "scaling weakens the decay of weights with large gradients",
    "Loshchilov & Hutter 2019 (Decoupled Weight Decay Regularization); study cards on optimizers",
)
def adamw_vs_l2(quick: bool) -> Finding:
    cfg = tiny_config(d_model=64, n_layers=2)
    settings = {  # label: (optimizer, weight decay on matrices)
        "no decay": ("adamw", 0.0),
        "AdamW 0.1": ("adamw", 0.1),
        "AdamW 1.0": ("adamw", 1.0),
        "Adam + L2 0.1": ("adam_l2", 0.1),
        "Adam + L2 0.001": ("adam_l2", 0.001),
    }
    res = {}
    for label, (opt, wd) in settings.items():
        one, seed_list, steps = _fit({label: cfg}, quick, optimizer=opt, weight_decay=wd)
        res.update(one)
    none = res["no decay"]
    diffs = {k: difference(none["val_losses"], v["val_losses"]) for k, v in res.items() if k != "no decay"}
    best_w = max((k for k in diffs if k.startswith("AdamW")), key=lambda k: diffs[k].mean)
    best_l2 = max((k for k in diffs if k.startswith("Adam +")), key=lambda k: diffs[k].mean)
    head = difference(res[best_l2]["val_losses"], res[best_w]["val_losses"])  # > 0: AdamW better
    verdict = "confirmed" if head.sign > 0 else "refuted" if head.sign < 0 else "depends"
    summary = (
        f"2 layers, 64 wide, lr 3e-3, {steps} steps of {8 if quick else 16} x 64 bytes on the first "
        f"{len(small_corpus(quick)):,} bytes, decay on matrices only, {len(seed_list)} seeds: "
        + _text(res)
        + ". Validation loss without decay minus with: "
        + ", ".join(f"{k} {d.text()}" for k, d in diffs.items())
        + f". Best L2 ({best_l2}) minus best AdamW ({best_w}): {head.text()}. "
        + rule(len(seed_list))
    )
    numbers = dict(steps=steps, corpus_bytes=len(small_corpus(quick)), seeds=seed_list, runs=res, settings=settings)
    numbers.update(val_gain={k: d.to_dict() for k, d in diffs.items()}, l2_minus_adamw=head.to_dict())
    return Finding(verdict, summary, dict(numbers, rule=rule(len(seed_list))), _plot(res, seed_list))
