"""Task metrics, each a plain function of predictions and references (lists, one item per example).

- classification: accuracy, macro-averaged F1, the confusion matrix;
- generation: exact match (after stripping outer whitespace), chrF and BLEU (sacrebleu, corpus level, 0-100),
  ROUGE-1/2/L F-measure (rouge-score, averaged over examples);
- language models: perplexity (exp of the mean next-token loss over a text) and masked-token accuracy
  (training/objectives.py, over the masked positions).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..text import read_strict


def _check(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references: give one per example")
    if not references:
        raise ValueError("no examples to score")


def accuracy(predictions: Sequence, references: Sequence) -> float:
    _check(predictions, references)
    return sum(p == r for p, r in zip(predictions, references, strict=True)) / len(references)


def f1(predictions: Sequence, references: Sequence) -> float:
    """Macro F1: the mean over the labels seen in either list of 2PR / (P + R) (0 where a label is never right)."""
    _check(predictions, references)
    scores = []
    for label in sorted(set(references) | set(predictions), key=str):
        tp = sum(p == label and r == label for p, r in zip(predictions, references, strict=True))
        fp = sum(p == label and r != label for p, r in zip(predictions, references, strict=True))
        fn = sum(p != label and r == label for p, r in zip(predictions, references, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def confusion_matrix(predictions: Sequence[int], references: Sequence[int], n_classes: int) -> list[list[int]]:
    """counts[true][predicted]."""
    _check(predictions, references)
    counts = [[0] * n_classes for _ in range(n_classes)]
    for p, r in zip(predictions, references, strict=True):
        counts[int(r)][int(p)] += 1
    return counts


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    _check(predictions, references)
    return sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True)) / len(references)


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu's defaults: character 6-grams, beta 2), 0-100."""
    import sacrebleu

    _check(predictions, references)
    return float(sacrebleu.corpus_chrf(list(predictions), [list(references)]).score)


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu's defaults: 13a tokenisation, 4-grams), 0-100."""
    import sacrebleu

    _check(predictions, references)
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures (rouge-score, with stemming), averaged over the examples."""
    from rouge_score import rouge_scorer

    _check(predictions, references)
    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    totals = dict.fromkeys(kinds, 0.0)
    for p, r in zip(predictions, references, strict=True):
        for kind, score in scorer.score(r, p).items():
            totals[kind] += score.fmeasure
    return {kind: total / len(references) for kind, total in totals.items()}


@torch.no_grad()
def perplexity(model, ids: Sequence[int], window: int | None = None) -> float:
    """exp(mean next-token cross-entropy) of a decoder over `ids`, in non-overlapping windows of the model's context
    (eval/perplexity.py computes it; this is its one-number form for the metrics table)."""
    from .perplexity import perplexity as sliding

    if getattr(model.config, "family", "decoder") != "decoder":
        raise ValueError(
            f"perplexity needs a decoder; this model is a {model.config.family} (use masked-token accuracy for an "
            "encoder)"
        )
    window = window or model.config.max_seq_len
    return sliding(model, list(ids), window=window, stride=window).perplexity


METRICS = {"accuracy": accuracy, "f1": f1, "exact_match": exact_match, "chrf": chrf, "bleu": bleu, "rouge": rouge}


def score_files(predictions: Path, references: Path, metrics: str) -> dict:
    """`metrics` (comma-separated names of METRICS) of a predictions file against a references file, one example
    per line each."""
    names = [m.strip() for m in metrics.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}")
    for path in (predictions, references):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file; give a text file with one example per line")
    preds, refs = read_strict(predictions).splitlines(), read_strict(references).splitlines()
    return {name: METRICS[name](preds, refs) for name in names}
