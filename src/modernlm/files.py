"""Every file modernlm writes goes through here, so that a kill at any moment leaves either the old file or the new one.

A file is written under a temporary name beside its target (`.NAME.tmp-PID-RANDOM`), flushed and fsynced, then renamed
onto the target with `os.replace` (atomic on POSIX and Windows), and the directory is fsynced so the rename itself
survives a power cut. A directory is staged whole the same way (`atomic_dir`) and swapped for the old one in one step
(Linux's renameat2 RENAME_EXCHANGE; elsewhere the old one is renamed aside to `.NAME.old-PID-RANDOM` first and put back
by the next run if a kill fell between the two renames), so a reader sees the old directory or the new one, never a
mix. Temporary names carry the writer's process id, so `clean_stale` can remove the leftovers of a killed writer (and
only those) on the next start; every write first removes its own target's dead leftovers.
A full disk is one clear `DiskFullError` (an OSError) naming the path and the bytes the write needed.

This module sits on the lowest floor: it imports nothing of modernlm and no torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import json
import os
import re
import secrets
import shutil
import stat
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

_TMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")
_OLD = re.compile(r"^\.(?P<name>.+)\.old-(?P<pid>\d+)-[0-9a-f]{8}$")  # an old directory renamed aside for a swap
_FULL = (errno.ENOSPC, errno.EDQUOT)
_DENIED = (errno.EROFS, errno.EACCES, errno.EPERM)


class WriteError(OSError):
    """A write the disk refused (full, read-only, no permission); the message names the path, the bytes and the fix.
    Whatever was at the target before is intact."""


def temp_name(target: Path) -> Path:
    """A fresh temporary path beside `target`, named after it and this process."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _old_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}")


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # fsync needs no write access (a carried-over read-only file)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """fsync every file under `path` (a file or a directory), then the directories themselves."""
    if path.is_file():
        _fsync_file(path)
        return
    subs = sorted(p for p in path.rglob("*") if not p.is_symlink())
    for sub in subs:
        if sub.is_file():
            _fsync_file(sub)
    for sub in [path, *(p for p in subs if p.is_dir())]:
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


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _size(path: Path) -> int:
    """The bytes written under `path` so far (0 if it is gone)."""
    try:
        if path.is_file():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    except OSError:
        return 0


def _renameat2():
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def swap(a: Path, b: Path) -> bool:
    """Exchange two paths in one atomic step (Linux's renameat2 with RENAME_EXCHANGE); False where the system or the
    file system cannot, and the caller falls back to two renames."""
    fn = _renameat2() if sys.platform.startswith("linux") else None
    if fn is None:
        return False
    if fn(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0:  # AT_FDCWD, RENAME_EXCHANGE
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _swap_in(tmp: Path, target: Path) -> None:
    """Put the complete `tmp` at `target`. A directory over a directory is exchanged in one step (the old one is left
    at `tmp`, which the caller removes), or else moved aside under a name `recover` puts back after a kill."""
    if tmp.is_dir() and target.is_dir() and not target.is_symlink():
        if swap(tmp, target):
            return
        old = _old_name(target)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def _disk_error(error: BaseException, target: Path, written: int, needed: int | None) -> WriteError | None:
    """A clear WriteError for a write the disk refused (an OSError, or a library's error carrying its text), or None."""
    if getattr(error, "target", None) == target:  # already this write's own WriteError
        return None
    code = getattr(error, "errno", None)
    text = str(error)
    if code not in _FULL and "No space left on device" not in text and "os error 28" not in text:
        if code in _DENIED:
            why = "the file system is read-only" if code == errno.EROFS else "permission denied"
            return _write_error(f"cannot write {target} ({why}); write it elsewhere or make {target.parent} writable",
                                target, code)  # fmt: skip
        return None
    free = shutil.disk_usage(_existing(target.parent)).free
    need = f"needs {needed:,} bytes" if needed else f"had written {written:,} bytes when the disk filled"
    return _write_error(
        f"no space left to write {target}: the write {need}, {free:,} bytes are free on its disk; free some space "
        "or write it elsewhere (what was there before is intact)", target, errno.ENOSPC
    )  # fmt: skip


def _write_error(message: str, target: Path, code: int) -> WriteError:
    out = WriteError(message)
    out.errno, out.target = code, target
    return out


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_space(target: str | os.PathLike, needed: int) -> None:
    """Refuse, before anything is written, a write of `needed` bytes that the disk holding `target` has no room for."""
    target = Path(target)
    free = shutil.disk_usage(_existing(target.parent)).free
    if needed > free:
        raise _write_error(
            f"no space left to write {target}: the write needs {needed:,} bytes and {free:,} are free on its disk; "
            "free some space or write it elsewhere (nothing was written)", target, errno.ENOSPC
        )  # fmt: skip


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path to write the file (or directory) `target` at; on a clean exit it is fsynced and renamed
    onto `target`, replacing what was there. On an exception the temporary is removed and `target` is untouched; a
    full or read-only disk is a WriteError naming the path and the bytes (`needed`: the size, when known, is checked
    before the write starts). The dead leftovers of earlier writes of `target` are removed first."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        recover(target)
        if needed:
            check_space(target, needed)
    except OSError as e:
        clear = _disk_error(e, target, 0, needed)
        if clear is None:
            raise
        raise clear from e
    tmp = temp_name(target)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written at the temporary path {tmp} for {target}")
        for path in (tmp, *(tmp.rglob("*") if tmp.is_dir() else ())):  # a directory's files too (atomic_dir)
            if not path.is_symlink():
                _usual_mode(path)
        _fsync_tree(tmp)
        _swap_in(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as e:
        full = _disk_error(e, target, _size(tmp), needed)
        if full is not None:
            raise full from e
        raise
    finally:
        _remove(tmp)


def _carry_over(old: Path, new: Path, replaces: Iterable[str]) -> None:
    """Hard-link (or copy) into `new` the entries of the directory `old` that the writer did not write and that match
    none of the `replaces` patterns (files the writer owns, written or not: an old shard the new save does not use)."""
    if not old.is_dir():
        return
    patterns = list(replaces)
    for entry in old.iterdir():
        name = entry.name
        if (new / name).exists() or _TMP.match(name) or _OLD.match(name):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), new / name)
        elif entry.is_dir():
            shutil.copytree(entry, new / name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, new / name)


def _link_or_copy(source, target) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


@contextlib.contextmanager
def atomic_dir(
    target: str | os.PathLike, replaces: Iterable[str] = ("*",), needed: int | None = None
) -> Iterator[Path]:
    """Yield an empty staging directory to write the directory `target` in; on a clean exit it replaces `target` as a
    whole, so a kill at any moment leaves the old directory or the new one, never a mix. Entries of the old directory
    that the writer did not write are kept unless a `replaces` pattern (fnmatch; default: everything) names them.
    A symbolic link to a directory is followed: the directory it points to is replaced, the link stays."""
    target = Path(target)
    if target.is_symlink() and target.is_dir():
        target = target.resolve()
    with atomic_path(target, needed=needed) as tmp:
        tmp.mkdir()
        yield tmp
        _carry_over(target, tmp, replaces)


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


def recover(target: str | os.PathLike) -> None:
    """Tidy what killed writes of `target` left beside it: their temporaries are removed, and an old directory moved
    aside for a swap is put back if the kill fell before the new one took its place (else removed)."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    for path in target.parent.glob(f".{glob_escape(target.name)}.*-*-*"):
        tmp, old = _TMP.match(path.name), _OLD.match(path.name)
        match = tmp or old
        if match is None or match.group("name") != target.name or _alive(int(match.group("pid"))):
            continue
        if old and not target.exists() and not target.is_symlink():
            os.replace(path, target)
        else:
            _remove(path)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def clean_stale(directory: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Remove the temporary files and directories that killed writers left in `directory` (and, `recursive`, in its
    subdirectories): those whose process is gone; a live writer's temporaries are kept. An old directory moved aside
    for a swap is put back where the kill left no new one (`recover`). Returns what was removed."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        match = _TMP.match(path.name) or _OLD.match(path.name)
        if match and not _alive(int(match.group("pid"))):
            recover(path.with_name(match.group("name")))
            removed.append(path)
        elif recursive and path.is_dir() and not path.is_symlink():
            removed += clean_stale(path, recursive=True)
    return removed
