"""`modernlm eval`: score predictions against references, or a model on its task.

modernlm eval --predictions out.txt --references ref.txt --metrics exact_match,chrf,bleu,rouge
modernlm eval --model runs/digits-vit --task digits        (accuracy, macro F1)
modernlm eval --model runs/dates-t5 --task dates           (exact match, chrF, BLEU)
modernlm eval --model smollm2-135m-instruct --perplexity notes.txt
"""

from __future__ import annotations

import json
from pathlib import Path

TASKS = ("digits", "dates")


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="metrics: accuracy/F1, exact match, chrF/BLEU, ROUGE, perplexity")
    p.add_argument("--predictions", type=Path, help="a text file, one prediction per line")
    p.add_argument("--references", type=Path, help="a text file, one reference per line")
    p.add_argument(
        "--metrics",
        default="exact_match,chrf,bleu,rouge",
        help="comma-separated: accuracy, f1, exact_match, chrf, bleu, rouge (default: the generation ones)",
    )
    p.add_argument("--model", help="a model source to evaluate on --task or --perplexity")
    p.add_argument("--task", choices=TASKS, help="digits (a ViT run) or dates (a seq2seq run)")
    p.add_argument("--perplexity", type=Path, help="a text file: the decoder's perplexity over it")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.predictions or args.references:
        result = score_files(args.predictions, args.references, args.metrics)
    elif args.model and (args.task or args.perplexity):
        result = score_model(args.model, args.task, args.perplexity)
    else:
        raise ValueError("give --predictions and --references, or --model with --task or --perplexity")
    print(json.dumps(result, indent=2))
    return 0


def score_files(predictions: Path | None, references: Path | None, metrics: str) -> dict:
    from ..eval.metrics import METRICS

    if predictions is None or references is None:
        raise ValueError("--predictions and --references go together: one line per example in each")
    names = [m.strip() for m in metrics.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}")
    preds = predictions.read_text(encoding="utf-8").splitlines()
    refs = references.read_text(encoding="utf-8").splitlines()
    return {name: METRICS[name](preds, refs) for name in names}


def score_model(source: str, task: str | None, text: Path | None) -> dict:
    from .. import load_model, load_tokenizer

    model = load_model(source)
    if text is not None:
        from ..eval.metrics import perplexity

        return {"perplexity": perplexity(model, load_tokenizer(source).encode(text.read_text(encoding="utf-8")))}
    if task == "digits":
        return evaluate_digits(model)
    return evaluate_dates(model, load_tokenizer(source))


def evaluate_digits(model) -> dict:
    import torch

    from ..eval.metrics import accuracy, f1
    from ..training.objectives import digits

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
    from ..eval.metrics import bleu, chrf, exact_match
    from ..training.objectives import date_examples, seq2seq_predictions

    if model.config.family != "seq2seq":
        raise ValueError(
            f"--task dates needs an encoder-decoder (train one: modernlm train --objective seq2seq); "
            f"this model is a {model.config.family}"
        )
    test = date_examples(200, seed=1338)
    predicted = seq2seq_predictions(model, tokenizer, [s for s, _ in test])
    references = [t for _, t in test]
    return {m.__name__: m(predicted, references) for m in (exact_match, chrf, bleu)}
