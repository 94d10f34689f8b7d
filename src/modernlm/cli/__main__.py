"""`modernlm VERB ...`: each verb module exposes add_parser(subparsers), which sets `func` to its run(args)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# module names under modernlm.cli
VERBS = ["info", "generate", "chat", "train", "finetune", "tokenizer", "flops", "memory", "lab"]
VERBS += ["embed", "fill_mask", "classify", "eval"]  # the other members' verbs (issue 11)
VERBS += ["export"]  # issue 12 (eval is shared with it)
VERBS += ["serve"]  # issue 14
VERBS += ["align"]  # issue 17
VERBS += ["inspect"]  # issue 29


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modernlm", description="The modern transformer, end to end, in PyTorch.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS:
        importlib.import_module(f"modernlm.cli.{verb}").add_parser(sub)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (it may be replaced after the handler is made)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

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


def _lenient_stdin() -> None:
    """Bytes on stdin that are not UTF-8 reach the verbs as lone surrogates, which text.from_user replaces with a
    notice, instead of a UnicodeDecodeError in the middle of a read (text.py has the rule)."""
    reconfigure = getattr(sys.stdin, "reconfigure", None)
    if reconfigure is not None:
        try:
            reconfigure(errors="surrogateescape")
        except (ValueError, OSError):  # a closed or detached stdin: nothing will be read from it
            pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):  # a verb that hands its arguments on (eval harness)
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.passthrough_args = extra
    _show_notices()
    _lenient_stdin()
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except (ValueError, TypeError, OSError) as e:  # user mistakes: the library's message, no traceback
        if isinstance(e, TypeError) and not _ours(e):
            raise  # a bug, not a mistake of the user: keep the traceback for the report
        print(f"modernlm {args.verb}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _ours(error: BaseException) -> bool:
    """Raised by modernlm's own checks (their messages name the value and the fix), not by a library below."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "modernlm" in tb.tb_frame.f_code.co_filename


def _one_line(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.filename and str(error.filename) not in text:
        text = f"{text}: {error.filename}"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
