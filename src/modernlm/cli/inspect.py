"""`modernlm inspect --model M --prompt TEXT --out DIR`: see inside a decoder on one prompt. Writes inspect.json (the
data: attention probabilities, the logit lens, residual-stream norms, attention entropy, the head-ablation table) and
the pictures of each into DIR; `--layer L [--head H]` adds one layer's or one head's map; `--html` one self-contained
page of it all."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..files import clean_stale, write_json, write_text
from ..text import from_user
from .common import add_model_args, load_for


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="attention maps, the logit lens, residual norms, entropy and head ablations")
    add_model_args(p)
    p.add_argument("--prompt", "-p", required=True, help="the text to look inside the model with")
    p.add_argument("--out", type=Path, default=Path("inspect-out"), help="directory (default: inspect-out)")
    p.add_argument("--layer", type=non_negative, default=None, help="also draw this layer's heads (with --head: one)")
    p.add_argument("--head", type=non_negative, default=None, help="with --layer: draw this head's map on its own")
    p.add_argument("--ablate", type=non_negative, default=None, metavar="N",
                   help="ablate the heads of N layers, evenly spaced (0: none; default: all layers on models of up "
                   "to 320 heads, else 8)")  # fmt: skip
    p.add_argument("--html", action="store_true", help="also write index.html, one page with every picture inlined")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..inspect.figures import write_all
    from ..inspect.page import html_page
    from ..inspect.report import analyse

    if args.head is not None and args.layer is None:
        raise ValueError("--head needs --layer: which layer's head to draw")
    model, tokenizer = load_for(args)
    data = analyse(model, tokenizer, from_user(args.prompt, "--prompt"), ablate=args.ablate)
    args.out.mkdir(parents=True, exist_ok=True)
    clean_stale(args.out)
    files = {"data": write_json(args.out / "inspect.json", {"model": str(args.model), **data}, indent=None)}
    files.update(write_all(data, args.out, (args.layer, args.head)))
    if args.html:
        pictures = {name: path for name, path in files.items() if name != "data"}
        files["html"] = write_text(args.out / "index.html", html_page(data, pictures, str(args.model)))
    lens = data["logit_lens"]
    print(f"{len(data['tokens'])} tokens, {data['layers']} layers x {data['heads']} heads; next token "
          f"{lens['answer']!r} (p = {lens['answer_prob_by_layer'][-1]:.3f})", file=sys.stderr)  # fmt: skip
    for path in files.values():
        print(path)
    return 0
