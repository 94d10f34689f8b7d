"""`modernlm VERB ...`: each verb module exposes add_parser(subparsers), which sets `func` to its run(args)."""

from __future__ import annotations

import argparse
import importlib
import sys

VERBS = ["info", "generate", "chat"]  # module names under modernlm.cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modernlm", description="The modern transformer, end to end, in PyTorch.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS:
        importlib.import_module(f"modernlm.cli.{verb}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError) as e:  # user mistakes: the library's message, no traceback
        print(f"modernlm {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
