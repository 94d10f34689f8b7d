"""`modernlm export --format gguf --type f16|q8_0|q4_0|q4_k_m MODEL OUT.gguf`: a GGUF file llama.cpp and transformers
load."""

from __future__ import annotations

import sys
from pathlib import Path

from ..checkpoints.gguf import read_gguf_metadata
from ..export import export_gguf
from ..export.gguf import TYPES
from ..loading import load_tokenizer
from .common import load_for


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a model as a GGUF file (llama.cpp)")
    p.add_argument("model", help="model source: an embedded name, a Hugging Face or run directory, a .gguf file")
    p.add_argument("out", help="the .gguf file to write")
    p.add_argument("--format", default="gguf", choices=["gguf"], help="output format (default: gguf)")
    p.add_argument("--type", default="f16", choices=list(TYPES),
                   help="matrix type; q4_k_m: llama-quantize's Q4_K_M mix (default: f16)")  # fmt: skip
    p.add_argument("--name", default=None, help="general.name in the file (default: the model source's name)")
    p.set_defaults(func=run)


def run(args) -> int:
    if not args.out.endswith(".gguf"):
        raise ValueError(f"the output {args.out!r} should end in .gguf")
    model, _ = load_for(args, tokenizer=False)
    path = model.source  # the source resolved once, for the tokenizer and the GGUF metadata too
    try:
        tokenizer = load_tokenizer(path)
    except (ValueError, FileNotFoundError) as e:  # weights alone still make a file transformers loads
        print(f"[no tokenizer written: {e}]", file=sys.stderr)
        tokenizer = None
    pre = read_gguf_metadata(path).get("tokenizer.ggml.pre") if path.is_file() else None  # None: inferred
    name = args.name or Path(str(args.model)).stem
    out = export_gguf(model, tokenizer, args.out, kind=args.type, name=name, tokenizer_pre=pre)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {args.type})")
    return 0
