"""`modernlm tokenizer train --data FILES --vocab-size N --out DIR`: a byte-level BPE tokenizer (tokenizer.json that
transformers loads); `modernlm tokenizer encode --tokenizer DIR --text TEXT`: its ids and pieces."""

from __future__ import annotations

from pathlib import Path

from . import positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer, or encode text with one")
    verbs = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = verbs.add_parser("train", help="train on text files, directories, globs or 'stdlib'")
    t.add_argument("--data", nargs="+", default=["stdlib"], help="sources, as for `modernlm train` (default: stdlib)")
    t.add_argument(
        "--vocab-size", type=positive_int, default=4096, help="ids in all, bytes and the special token included"
    )
    t.add_argument("--out", type=Path, required=True, help="directory for tokenizer.json and tokenizer_config.json")
    e = verbs.add_parser("encode", help="show the ids and pieces of a text")
    e.add_argument("--tokenizer", required=True, help="a tokenizer directory or model source")
    e.add_argument("--text", required=True)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.action == "train":
        from ..tokenizer import Tokenizer
        from ..training import train_bpe_files

        out = train_bpe_files(args.data, args.vocab_size, args.out)
        built = Tokenizer.from_directory(out).vocab_size
        short = "" if built >= args.vocab_size else f"; {args.vocab_size} were asked for, the text has too few merges"
        print(f"wrote {out / 'tokenizer.json'} ({built} ids{short})")
        return 0
    from ..loading import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    ids = tokenizer.encode(args.text)
    print(ids)
    print([tokenizer.decode([i]) for i in ids])
    print(f"{len(ids)} tokens for {len(args.text)} characters")
    return 0
