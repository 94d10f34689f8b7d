"""The command line: one module per verb, each a thin shell over the library."""

import argparse


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (sizes, counts, steps), refused with the value otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value
