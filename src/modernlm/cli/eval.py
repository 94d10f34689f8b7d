"""`modernlm eval`: perplexity of a decoder on held-out text, a trained member on its task, or predictions scored
against references.

modernlm eval perplexity --model M [--quantize Q] [--text FILE]    (held-out English shipped in modernlm/eval/)
modernlm eval context --model M --scaling yarn,dynamic,none --factor 4   (long context: cli/eval_context.py)
modernlm eval task --model runs/digits-vit --task digits            (accuracy, macro F1)
modernlm eval task --model runs/dates-t5 --task dates               (exact match, chrF, BLEU)
modernlm eval scores --predictions out.txt --references ref.txt --metrics exact_match,chrf,bleu,rouge
modernlm eval harness --model modernlm --model_args source=M --tasks T    (lm-evaluation-harness, model registered)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..eval.metrics import score_files
from ..eval.perplexity import STRIDE, WINDOW
from ..training.evaluate import TASKS, evaluate_dates, evaluate_digits
from . import positive_int
from .common import add_model_args, load_for
from .eval_context import add_context_parser


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="perplexity, a member on its task, or predictions against references")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    ppl = kinds.add_parser("perplexity", help="perplexity on held-out English text (shipped) or --text FILE")
    add_model_args(ppl)
    ppl.add_argument("--text", default=None, help="a UTF-8 text file (default: the held-out text shipped in eval/)")
    ppl.add_argument("--window", type=positive_int, default=WINDOW, help=f"tokens per window (default: {WINDOW})")
    ppl.add_argument("--stride", type=positive_int, default=STRIDE,
                     help=f"window step; the overlap is context (default: {STRIDE})")  # fmt: skip
    ppl.add_argument("--json", action="store_true", help="print JSON")
    ppl.set_defaults(func=run_perplexity)
    add_context_parser(kinds)
    task = kinds.add_parser("task", help="a trained member on its task: digits (a ViT), dates (a seq2seq run)")
    task.add_argument("--model", "-m", required=True, help="a model source (a run directory)")
    task.add_argument("--task", required=True, choices=TASKS)
    task.set_defaults(func=run_task)
    scores = kinds.add_parser("scores", help="predictions scored against references, one per line each")
    scores.add_argument("--predictions", type=Path, required=True, help="a text file, one prediction per line")
    scores.add_argument("--references", type=Path, required=True, help="a text file, one reference per line")
    scores.add_argument(
        "--metrics",
        default="exact_match,chrf,bleu,rouge",
        help="comma-separated: accuracy, f1, exact_match, chrf, bleu, rouge (default: the generation ones)",
    )
    scores.set_defaults(func=run_scores)
    harness = kinds.add_parser(
        "harness",
        help="lm-evaluation-harness's command line with the `modernlm` model registered (same arguments as lm_eval)",
        add_help=False,
    )
    harness.set_defaults(func=run_harness, passthrough=True)  # every argument after `harness` goes to lm_eval


def run_perplexity(args) -> int:
    from ..eval.perplexity import text_perplexity
    from ..text import read_strict

    if args.text is not None and not Path(args.text).is_file():
        raise FileNotFoundError(f"--text {args.text}: no such file; give a UTF-8 text file")
    if args.stride > args.window:
        raise ValueError(f"--stride {args.stride} is larger than --window {args.window}: some tokens would be skipped")
    text = read_strict(args.text) if args.text else None
    t0 = time.perf_counter()
    model, tokenizer = load_for(args)
    result = text_perplexity(model, tokenizer, text, window=args.window, stride=args.stride)  # the one definition
    out = {
        "model": args.model,
        "quantize": args.quantize,
        "dtype": args.dtype,
        "text": args.text or "held-out English (modernlm/eval/heldout.txt)",
        "tokens": result.tokens,
        "perplexity": result.perplexity,
        "nll": result.nll,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        what = args.quantize or args.dtype
        print(f"perplexity {result.perplexity:.3f} ({what}) over {result.tokens} tokens of {out['text']}")
        print(f"[{time.perf_counter() - t0:.1f} s]", file=sys.stderr)
    return 0


def run_harness(args) -> int:
    try:
        from ..eval.harness import main
    except ImportError as e:
        raise ValueError(f"`modernlm eval harness` needs lm-eval: pip install 'modernlm[harness]' ({e})") from None
    main(args.passthrough_args)
    return 0


def run_task(args) -> int:
    model, tokenizer = load_for(args, tokenizer=args.task == "dates")
    result = evaluate_digits(model) if args.task == "digits" else evaluate_dates(model, tokenizer)
    print(json.dumps(result, indent=2))
    return 0


def run_scores(args) -> int:
    print(json.dumps(score_files(args.predictions, args.references, args.metrics), indent=2))
    return 0
