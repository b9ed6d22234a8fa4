"""Atomic file writes (private): a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not supported on every platform
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(dest: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None) -> Iterator[Any]:
    """Opens a temporary file beside ``dest``; on success fsyncs and renames it over ``dest``.

    On any exception the temporary file is removed and ``dest`` is untouched,
    so a reader never sees a half-written file. The file gets the permissions
    a plain ``open(dest, "w")`` would give it (``0o666`` less the umask), not
    the ``0o600`` of a temporary file, so shared data and cache folders stay
    readable by the other users they are shared with.
    """
    dest = Path(dest)
    with naming(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with contextlib.suppress(OSError, AttributeError):  # os.fchmod: not on every platform
            os.fchmod(fd, 0o666 & ~_umask())
        with naming(dest), os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        with naming(dest):
            os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(dest.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


#: errno values of an output that cannot be written for reasons outside the program (a full disk, a quota,
#: a read-only file system, no permission): reported as one line naming the path (:func:`output_error_message`).
OUTPUT_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EROFS, errno.EACCES,
                                      errno.EPERM, errno.EFBIG) if e is not None)


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Re-raises an :class:`OSError` that names no file (a failed ``write``/``flush``/``fsync``), or one of
    :data:`OUTPUT_ERRNOS` naming a temporary file, as the same error naming ``path``: the message says
    which output could not be written."""
    try:
        yield
    except OSError as e:
        if e.errno is not None and (e.filename is None or e.errno in OUTPUT_ERRNOS):
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e
        raise


_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def output_error(e: BaseException, path: str | os.PathLike) -> OSError | None:
    """The :data:`OUTPUT_ERRNOS` error behind ``e`` (itself, a cause, or one that a library such as
    TensorStore/orbax only reports in its message) as an :class:`OSError` naming ``path``; else ``None``."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in OUTPUT_ERRNOS:
            return e if e.filename is not None else OSError(e.errno, e.strerror, str(path))
        m = _OS_ERROR_CODE.search(str(e))
        if m and int(m.group(1)) in OUTPUT_ERRNOS:
            code = int(m.group(1))
            return OSError(code, os.strerror(code), str(path))
        e = e.__cause__ or e.__context__
    return None


def output_error_message(e: BaseException) -> str | None:
    """One line for an :data:`OUTPUT_ERRNOS` :class:`OSError`: the path, the cause and what to do; else None."""
    if not isinstance(e, OSError) or e.errno not in OUTPUT_ERRNOS:
        return None
    path = e.filename if e.filename is not None else "an output file"
    cause = e.strerror or os.strerror(e.errno)
    if e.errno in (errno.EACCES, errno.EPERM):  # reading or writing
        return f"{path}: {cause} (no permission: fix the permissions, or use another folder)"
    hint = {errno.ENOSPC: "the disk is full: free space there, or write elsewhere",
            errno.EROFS: "the file system is mounted read-only: write elsewhere",
            errno.EFBIG: "the file grew past the file system's size limit: write elsewhere"}.get(
        e.errno, "the disk quota is used up: free space there, or write elsewhere")
    return f"cannot write {path}: {cause} ({hint})"


def check_writable(folder: str | os.PathLike) -> None:
    """Creates ``folder`` (and parents) and writes, syncs and removes a small file in it, so that a read-only
    file system, a missing permission or a full disk is found before long work, not after it.

    Raises:
      OSError: naming ``folder`` (:func:`output_error_message` words it as one line).
    """
    folder = Path(folder)
    with naming(folder):
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".jmeta-write-test.", suffix=".tmp")
        try:
            os.write(fd, b"\0" * 4096)  # one page: a full disk refuses it
            os.fsync(fd)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
