"""The family's small tasks scored on their held-out data, as `modernlm eval task` reports them: a ViT on the digits
(accuracy, macro F1), an encoder-decoder on the dates (exact match, chrF, BLEU). The data and the predictions come
from objectives.py, the metrics from eval/metrics.py."""

from __future__ import annotations

import torch

from ..eval.metrics import accuracy, bleu, chrf, exact_match, f1
from .objectives import date_examples, digits, seq2seq_predictions

TASKS = ("digits", "dates")


def evaluate_digits(model) -> dict:
    if model.config.family != "vit":
        raise ValueError(
            f"--task digits needs a ViT (train one: modernlm train --objective image-classification); "
            f"this model is a {model.config.family}"
        )
    data = digits()
    with torch.no_grad():
        predicted = model(data["x_test"]).argmax(-1).tolist()
    return {"accuracy": accuracy(predicted, data["y_test"].tolist()), "f1": f1(predicted, data["y_test"].tolist())}


def evaluate_dates(model, tokenizer) -> dict:
    if model.config.family != "seq2seq":
        raise ValueError(
            f"--task dates needs an encoder-decoder (train one: modernlm train --objective seq2seq); "
            f"this model is a {model.config.family}"
        )
    test = date_examples(200, seed=1338)
    predicted = seq2seq_predictions(model, tokenizer, [s for s, _ in test])
    references = [t for _, t in test]
    return {m.__name__: m(predicted, references) for m in (exact_match, chrf, bleu)}
