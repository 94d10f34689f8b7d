"""`modernlm embed --model all-minilm-l6-v2 "text" ...`: one sentence embedding per text (mean pooling, normalised)."""

from __future__ import annotations

import json

from .common import load_for


def add_parser(sub) -> None:
    p = sub.add_parser("embed", help="sentence embeddings of texts with an encoder (all-MiniLM-L6-v2, a BERT dir)")
    p.add_argument("texts", nargs="+", help="the texts to embed")
    p.add_argument("--model", default="all-minilm-l6-v2", help="an encoder source (default: all-minilm-l6-v2)")
    p.add_argument("--no-normalize", action="store_true", help="keep the raw mean-pooled vectors (no L2 norm)")
    p.add_argument("--max-len", type=int, default=256, help="tokens per text, [CLS] and [SEP] included (default 256)")
    p.add_argument("--similarity", action="store_true", help="print the cosine-similarity matrix instead")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..embedding import embed

    if args.max_len < 3:  # before the model loads
        raise ValueError(f"--max-len must be >= 3 ([CLS], a token of text, [SEP]), got {args.max_len}")
    model, tokenizer = load_for(args)
    vectors = embed(
        model, tokenizer, args.texts, normalize=not args.no_normalize, max_len=args.max_len
    )
    if args.similarity:
        unit = vectors / vectors.norm(dim=-1, keepdim=True)
        for text, row in zip(args.texts, (unit @ unit.T).tolist(), strict=True):
            print(" ".join(f"{v:6.3f}" for v in row), " ", text)
        return 0
    for text, vector in zip(args.texts, vectors.tolist(), strict=True):
        print(json.dumps({"text": text, "embedding": [round(v, 6) for v in vector]}))
    return 0
