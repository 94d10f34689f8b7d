"""`modernlm fill-mask --model BERT_DIR "Paris is the [MASK] of France."`: the likeliest tokens at each [MASK]."""

from __future__ import annotations

from .common import load_for


def add_parser(sub) -> None:
    p = sub.add_parser("fill-mask", help="predict the [MASK] tokens of a text with a masked-LM encoder (BERT)")
    p.add_argument("text", help="a text with one or more [MASK]")
    p.add_argument("--model", required=True, help="a BertForMaskedLM directory (or a modernlm MLM run)")
    p.add_argument("--top-k", type=int, default=5, help="candidates per mask (default 5)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..embedding import fill_mask

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    results = fill_mask(*load_for(args), args.text, top_k=args.top_k)
    for m, candidates in enumerate(results):
        print(f"[MASK] {m + 1}: " + "  ".join(f"{token} ({p:.3f})" for token, p in candidates))
    return 0
