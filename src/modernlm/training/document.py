"""One document of a training corpus, below corpus.py (files, directories, globs, the standard library) and
hf_datasets.py (Hugging Face `datasets` rows), which both make them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Document:
    """One text: `name` decides its side of the split; `read()` returns its text, or None for a binary file."""

    name: str
    size: int
    read: Callable[[], str | None]
    stamp: str = ""  # what changes when the text changes (size and mtime of a file), for the cache key
