"""The one rule for text that is not UTF-8, wherever text enters modernlm.

- Text from a person (command-line arguments, standard input, `--system`, chat lines): bytes that are not UTF-8 are
  replaced with U+FFFD, and a notice says where. A chat goes on; nothing is refused for a stray byte.
- Structured files (JSON configs, JSONL data): refused with the file, line and byte offset, since a replaced byte
  silently changes the data. The fix is to save the file as UTF-8.
- Training text (corpus files): a file that is binary (NUL bytes) is refused when named alone and skipped, with a
  notice, in a directory or glob; other bytes that are not UTF-8 are replaced with U+FFFD, with a notice naming the
  files (the standard library itself holds a few Latin-1 test files).

Python decodes undecodable bytes of argv (and of stdin, as `cli.__main__` configures it) as lone surrogates
(`surrogateescape`); `from_user` turns them into U+FFFD. This module imports nothing of modernlm and no torch.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("modernlm")
REPLACEMENT = "\ufffd"


class TextError(ValueError):
    """A file that is not UTF-8 text where text is needed; the message names the file, line and byte offset."""


def from_user(text: str, where: str = "the input") -> str:
    """`text` typed or piped in, with undecodable bytes (lone surrogates) replaced by U+FFFD and a notice."""
    if not any("\ud800" <= c <= "\udfff" for c in text):
        return text
    raw = text.encode("utf-8", errors="surrogateescape")
    offset = next(i for i, c in enumerate(text) if "\ud800" <= c <= "\udfff")  # in characters, if not bytes
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        offset = e.start
    cleaned = raw.decode("utf-8", errors="replace")
    # A lone surrogate that was not an escaped byte (an API caller's str) cannot round-trip: replace it too.
    cleaned = "".join(REPLACEMENT if "\ud800" <= c <= "\udfff" else c for c in cleaned)
    log.warning("%s is not valid UTF-8 (first bad byte at offset %d): replaced with U+FFFD", where, offset)
    return cleaned


def decode_strict(data: bytes, path: str | os.PathLike) -> str:
    """UTF-8 bytes of a structured file as text; TextError naming line and byte offset otherwise."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise TextError(
            f"{path}: line {line} is not UTF-8 (byte {e.start}: {data[e.start : e.start + 1]!r}); save the file "
            "as UTF-8 (for example: iconv -f latin1 -t utf-8 IN > OUT)"
        ) from None


def read_strict(path: str | os.PathLike) -> str:
    """A structured file's text (JSON, JSONL), refusing bytes that are not UTF-8."""
    return decode_strict(Path(path).read_bytes(), path)


def binary_offset(data: bytes, window: int = 1 << 16) -> int | None:
    """The offset of the first NUL byte in the first `window` bytes (text never holds one), or None."""
    at = data.find(b"\0", 0, window)
    return None if at < 0 else at


def decode_lenient(data: bytes) -> tuple[str, int | None]:
    """(text, offset of the first byte that is not UTF-8 or None): the bytes with bad ones replaced by U+FFFD."""
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return data.decode("utf-8", errors="replace"), e.start


def too_deep(where) -> str:
    """The message for JSON nested deeper than Python's parser recurses (a hostile file: json raises RecursionError)."""
    return f"{where} nests its JSON arrays/objects too deeply to read (hundreds of levels); no real file does: fix it"


def read_json(path: str | os.PathLike, what: str = "JSON file", error: type[ValueError] = ValueError):
    """A JSON file's value; `error` naming the file (and the fix) when it is not UTF-8 or not JSON."""
    import json

    try:
        return json.loads(read_strict(path))
    except TextError as e:
        raise error(str(e)) from None
    except json.JSONDecodeError as e:
        raise error(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); fix or restore this {what}"
        ) from None
    except RecursionError:
        raise error(too_deep(path)) from None
