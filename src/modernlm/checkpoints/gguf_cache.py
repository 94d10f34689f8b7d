"""A converted copy of each GGUF file, so only the first load pays for parsing and dequantizing it.

Reading a GGUF file with the `gguf` package costs seconds (its metadata parser walks the vocabulary string by string;
SmolLM2's 49k tokens and merges take ~5 s here) and dequantizing costs more. The first load therefore writes what it
read into `$MODERNLM_CACHE/gguf/<key>/` (default `~/.cache/modernlm`) in modernlm's own format: the float32 weights
as safetensors, the config as JSON, and the tokenizer as tokenizer.json with its chat template. Later loads read
that directory (memory-mapped safetensors, well under a second).

The key covers the file's absolute path, size and modification time, and `FORMAT`, which changes whenever the
conversion does; a stale or broken entry is never read, it is rebuilt (an incomplete one at once; a damaged one when
reading it fails, `rebuild`). A directory appears only complete (it is written under a temporary name and swapped in).
`MODERNLM_GGUF_CACHE=0` turns the cache off; an unwritable or full cache directory turns it off too, with one
warning, and loading goes on from the GGUF file itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import warnings
from pathlib import Path

from safetensors.torch import save_file

from ..files import atomic_dir, clean_stale, write_json

FORMAT = 2  # bump when the conversion (names, dtypes, config fields, tokenizer) changes; 2: SentencePiece vocabularies
DONE = "converted.json"  # written last: its presence means the directory is complete
log = logging.getLogger("modernlm")


def cache_root() -> Path:
    return Path(os.environ.get("MODERNLM_CACHE", Path.home() / ".cache" / "modernlm"))


def enabled() -> bool:
    return os.environ.get("MODERNLM_GGUF_CACHE", "1").lower() not in ("0", "false", "no", "off")


def entry_dir(path: Path) -> Path:
    """Where the converted copy of the GGUF file at `path` lives (whether or not it exists yet)."""
    path = path.resolve()
    stat = path.stat()
    key = f"{FORMAT}|{path}|{stat.st_size}|{stat.st_mtime_ns}"
    return cache_root() / "gguf" / f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def converted(path: str | os.PathLike) -> Path | None:
    """The converted directory of a GGUF file, converting it now if needed; None when the cache is off or unusable.

    Errors in the GGUF file itself (truncated, unsupported) propagate: they would stop a direct load as well."""
    if not enabled():
        return None
    path = Path(path)
    directory = entry_dir(path)
    if (directory / DONE).is_file():
        return directory
    return _write_entry(path, directory)


def rebuild(path: str | os.PathLike, problem: Exception) -> Path | None:
    """Convert a GGUF file again because its cached copy could not be read (`problem`); the damaged copy is replaced
    whole. None when the cache cannot be written (the caller loads the GGUF file directly)."""
    path = Path(path)
    directory = entry_dir(path)
    log.warning("the cached conversion %s is damaged (%s); converting %s again", directory, problem, path.name)
    (directory / DONE).unlink(missing_ok=True)  # so that a kill during the rebuild leaves no entry marked complete
    return _write_entry(path, directory)


def _write_entry(path: Path, directory: Path) -> Path | None:
    """Convert `path` into `directory` (staged whole, then swapped in); an unwritable or full cache is a warning
    (once per cache) and None."""
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        for stale in clean_stale(directory.parent) + _clean_legacy(directory.parent):
            log.info("removed %s, left by an interrupted conversion", stale.name)
        log.info("converting %s once into %s (later loads take about a second)", path.name, directory)
        with atomic_dir(directory) as staging:  # an incomplete entry (no DONE) is replaced
            _convert(path, staging)
    except OSError as e:
        if str(cache_root()) not in _WARNED:
            _WARNED.add(str(cache_root()))
            warnings.warn(f"cannot write the GGUF cache in {cache_root()} ({e}); loading {path} directly", stacklevel=4)
        return None
    return directory


_WARNED: set[str] = set()  # caches already warned about in this process: one warning, not one per load


def _clean_legacy(root: Path) -> list[Path]:
    """Staging directories of older versions (`.tmp-XXXXXXXX`, no writer id), removed once an hour old."""
    old = [p for p in root.glob(".tmp-*") if p.is_dir() and time.time() - p.stat().st_mtime > 3600]
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return old


def _convert(path: Path, out: Path) -> None:
    from ..tokenizer import TokenizerError
    from .gguf import load_gguf, tokenizer_from_gguf
    from .native import CONFIG_NAME, WEIGHTS_NAME

    config, state_dict = load_gguf(path)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, out / WEIGHTS_NAME, metadata={"format": "modernlm"})
    config.to_json(out / CONFIG_NAME)
    tokenizer = None
    try:
        tokenizer_from_gguf(path).save(out)
        tokenizer = "tokenizer.json"
    except TokenizerError:  # the model still loads; load_tokenizer reports the tokenizer's problem itself
        pass
    info = {"source": str(path.resolve()), "format": FORMAT, "tokenizer": tokenizer}
    write_json(out / DONE, info)
