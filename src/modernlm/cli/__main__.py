"""`modernlm VERB ...`: each verb module exposes add_parser(subparsers), which sets `func` to its run(args)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# module names under modernlm.cli
VERBS = ["info", "generate", "chat", "train", "finetune", "tokenizer", "flops", "memory", "lab"]
VERBS += ["eval", "export"]  # issue 12


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modernlm", description="The modern transformer, end to end, in PyTorch.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS:
        importlib.import_module(f"modernlm.cli.{verb}").add_parser(sub)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a notice comes (a handler bound to the stream of the first call would
    write to a closed one after a test, or a caller, swaps sys.stderr)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _show_notices() -> None:
    """The library's notices (a one-time conversion, ...) as plain lines on stderr."""
    log = logging.getLogger("modernlm")
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[%(message)s]"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _show_notices()
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
