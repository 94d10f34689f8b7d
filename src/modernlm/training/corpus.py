"""Where training text comes from: the running Python's standard library (the default corpus, on every machine with
no download), plain text files, directories, globs, and Hugging Face `datasets`; with a deterministic train /
validation split by document (a hash of its name, so adding a file never moves another one across the split).
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..text import binary_offset, decode_lenient
from .document import Document
from .hf_datasets import hf_documents

STDLIB = "stdlib"
_SKIP_STDLIB_DIRS = {"site-packages", "dist-packages", "__pycache__"}


@dataclass
class Corpus:
    """The documents of a run, split once: `train` and `val` lists, and a fingerprint for caches."""

    train: list[Document]
    val: list[Document]
    fingerprint: str
    split_by_tokens: bool  # too few documents to split by file: the last val_fraction of the tokens is validation

    def sample(self, max_bytes: int) -> Iterator[str]:
        """Training texts spread over the corpus (ordered by a hash of their names) up to about `max_bytes`."""
        total = 0
        for doc in sorted(self.train, key=lambda d: _hash(d.name)):
            if total >= max_bytes:
                return
            text = doc.read()
            if text:
                total += len(text.encode("utf-8"))
                yield text


def load_corpus(sources: list[str], val_fraction: float) -> Corpus:
    """The documents named by `sources` ("stdlib", files, directories, globs, "hf:NAME[:SPLIT[:COLUMN]]"), split.

    Raises FileNotFoundError for a path or glob that names nothing, ValueError for a source with no documents."""
    docs: list[Document] = []
    for source in sources:
        found = _documents(str(source))
        if not found:
            raise ValueError(f"the data source {source!r} holds no documents; give a file, directory or glob with text")
        docs.extend(found)
    val = [d for d in docs if _hash(d.name) < val_fraction]
    train = [d for d in docs if _hash(d.name) >= val_fraction]
    by_tokens = not val or not train
    if by_tokens:
        train, val = docs, []
    key = hashlib.sha256()
    for d in docs:
        key.update(f"{d.name}\0{d.size}\0{d.stamp}\n".encode())
    key.update(f"{val_fraction}".encode())
    return Corpus(train, val, key.hexdigest(), by_tokens)


def _documents(source: str) -> list[Document]:
    if source == STDLIB:
        return _stdlib_documents()
    if source.startswith("hf:"):
        return hf_documents(source[3:])
    path = Path(source).expanduser()
    if path.is_file():
        return [_file_document(path, path.name, alone=True)]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path)))
        return [_file_document(p, p.relative_to(path).as_posix()) for p in files]
    if any(c in source for c in "*?["):
        matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True))
        files = [p for p in matches if p.is_file()]
        if not files:
            raise FileNotFoundError(f"the glob {source!r} matches no file; check the pattern (quote it in the shell)")
        return [_file_document(p, p.as_posix()) for p in files]
    raise FileNotFoundError(
        f"no such file, directory or glob: {source!r}; give a text file, a directory, a glob such as 'texts/*.txt', "
        f"'{STDLIB}' (the Python standard library's source) or 'hf:NAME' (a Hugging Face dataset)"
    )


def stdlib_root() -> Path:
    """The running interpreter's standard library directory."""
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_documents() -> list[Document]:
    root = stdlib_root()
    files = sorted(p for p in root.rglob("*.py") if not _SKIP_STDLIB_DIRS & set(p.relative_to(root).parts[:-1]))
    if not files:
        raise ValueError(f"found no .py files under the standard library directory {root}; give --data PATHS instead")
    return [_file_document(p, p.relative_to(root).as_posix()) for p in files]


def _file_document(path: Path, name: str, alone: bool = False) -> Document:
    """A text file as a document. `alone`: named by itself, so a binary file is an error rather than skipped."""
    stat = path.stat()
    if alone:
        with open(path, "rb") as f:
            at = binary_offset(f.read(1 << 16))
        if at is not None:
            raise ValueError(
                f"{path} is not a text file (a NUL byte at offset {at}): training reads text; give text files, a "
                "directory of them or a glob"
            )
    return Document(name, stat.st_size, lambda: _read_text(path, name), f"{stat.st_mtime_ns}")


_NOTICED: set[str] = set()  # notices about a file are given once per process


def _read_text(path: Path, name: str) -> str | None:
    """The file's text; None (with a notice) for a binary file in a directory of texts. Bytes that are not UTF-8
    are replaced with U+FFFD, with a notice (text.py's rule for training text)."""
    data = path.read_bytes()
    at = binary_offset(data)
    if at is not None:
        _notice(name, f"skipped {name}: not a text file (a NUL byte at offset {at})")
        return None
    text, bad = decode_lenient(data)
    if bad is not None:
        _notice(name, f"{name} is not valid UTF-8 (first bad byte at offset {bad}): those bytes read as U+FFFD")
    return text


def _notice(key: str, message: str) -> None:
    if key not in _NOTICED:
        _NOTICED.add(key)
        logging.getLogger("modernlm").info(message)


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _hash(name: str) -> float:
    """A number in [0, 1) fixed by the document's name."""
    return int(hashlib.sha256(name.encode("utf-8")).hexdigest()[:12], 16) / 16**12
