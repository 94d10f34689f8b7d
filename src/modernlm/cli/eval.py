"""`modernlm eval perplexity --model M [--quantize Q]`: perplexity on held-out English text (or --text FILE)."""

from __future__ import annotations

import json
import sys
import time

from .generate import add_model_args


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model: perplexity on held-out text")
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    ppl = tasks.add_parser("perplexity", help="perplexity on held-out English text (shipped) or --text FILE")
    add_model_args(ppl)
    ppl.add_argument("--text", default=None, help="a UTF-8 text file (default: the held-out text shipped in eval/)")
    ppl.add_argument("--window", type=int, default=512, help="tokens per window (default: 512)")
    ppl.add_argument("--stride", type=int, default=256, help="window step; the overlap is context (default: 256)")
    ppl.add_argument("--json", action="store_true", help="print JSON")
    ppl.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..eval.perplexity import heldout_text, perplexity
    from ..loading import load_model, load_tokenizer

    if args.text is not None and not Path(args.text).is_file():
        raise FileNotFoundError(f"--text {args.text}: no such file; give a UTF-8 text file")
    text = Path(args.text).read_text(encoding="utf-8") if args.text else heldout_text()
    tokenizer = load_tokenizer(args.model)
    ids = tokenizer.encode(text)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and ids[:1] != [bos]:
        ids = [bos, *ids]  # the first word is scored given BOS, as a model sees a document start
    t0 = time.perf_counter()
    model = load_model(args.model, dtype=args.dtype, device=args.device, quantize=args.quantize)
    result = perplexity(model, ids, window=args.window, stride=args.stride)
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
