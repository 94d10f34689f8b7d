"""Every file modernlm writes goes through here, so that a kill at any moment leaves either the old file or the new one.

A file is written under a temporary name beside its target (`.NAME.tmp-PID-RANDOM`), flushed and fsynced, then renamed
onto the target with `os.replace` (atomic on POSIX and Windows), and the directory is fsynced so the rename itself
survives a power cut. A directory is staged the same way and renamed into place. Temporary names carry the writer's
process id, so `clean_stale` can remove the leftovers of a killed writer (and only those) on the next start.

This module sits on the lowest floor: it imports nothing of modernlm and no torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_TMP = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}$")


def temp_name(target: Path) -> Path:
    """A fresh temporary path beside `target`, named after it and this process."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """fsync every file under `path` (a file or a directory), then the directories themselves."""
    if path.is_file():
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        return
    for sub in sorted(path.rglob("*")):
        if sub.is_file():
            with open(sub, "rb+") as f:
                os.fsync(f.fileno())
    for sub in [path, *(p for p in path.rglob("*") if p.is_dir())]:
        _fsync_dir(sub)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once (os.umask can only be read by setting it)


def _usual_mode(path: Path) -> None:
    """Give the temporary the mode a plain open() would: some writers (safetensors) create files 0600, so weights
    would be private where every other file of the directory is 0644."""
    mode = stat.S_IMODE(path.stat().st_mode)
    base = 0o777 if path.is_dir() else 0o666
    os.chmod(path, (base | (mode & 0o111)) & ~_UMASK)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write the file (or directory) `target` at; on a clean exit it is fsynced and renamed
    onto `target`, replacing what was there. On an exception the temporary is removed and `target` is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(target)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written at the temporary path {tmp} for {target}")
        _usual_mode(tmp)
        _fsync_tree(tmp)
        if target.is_dir() and tmp.is_dir():
            # os.replace cannot replace a non-empty directory: move the old one aside (a name clean_stale leaves
            # alone, so a kill between the two renames loses nothing), put the new one in place, remove the old one
            old = target.with_name(f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `target` atomically."""
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(target)


def write_text(target: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `target` atomically."""
    return write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike, data: Any, indent: int | None = 2, **kwargs: Any) -> Path:
    """Write `data` as JSON (UTF-8, a trailing newline) to `target` atomically."""
    return write_text(target, json.dumps(data, indent=indent, ensure_ascii=False, **kwargs) + "\n")


def append_line(target: str | os.PathLike, line: str) -> None:
    """Append one line to a log file (metrics.jsonl) and flush it. An append is not a rewrite: a kill can only cut the
    last line short, and readers of such logs skip a torn last line."""
    with open(target, "a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()


def copy_file(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy `source` onto `target` atomically."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return Path(target)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale(directory: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Remove the temporary files and directories that killed writers left in `directory` (and, `recursive`, in its
    subdirectories): those whose process is gone; a live writer's temporaries are kept. Returns what was removed."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        match = _TMP.match(path.name)
        if match and not _alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
        elif recursive and path.is_dir() and not path.is_symlink():
            removed += clean_stale(path, recursive=True)
    return removed
