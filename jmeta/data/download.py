"""Downloads with checksums, and safe zip extraction.

:func:`fetch` streams a URL to a file, verifying its sha256, and writes
atomically: the bytes go to a temporary file beside ``dest`` that is renamed
onto ``dest`` only once complete and verified. A truncated download, a wrong
checksum or an interrupted process never leaves a file at ``dest``.

Machines without internet: download the file elsewhere and place it where
jmeta looks for it, i.e. under the data root given by the ``data_dir``
argument or the ``JMETA_DATA_DIR`` environment variable (default
``~/.cache/jmeta/data``); the error messages name the exact path.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import socket
import stat
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable

from jmeta.data._cache import atomic_write, sha256_file
from jmeta.data.errors import (ChecksumError, CorruptDataError, DataNotFoundError, DownloadError,
                               UnsafeArchiveError)
from jmeta.data.paths import DATA_DIR_ENV

__all__ = ["fetch", "safe_extract"]

_ALLOWED_SCHEMES = ("http://", "https://")


def _manual_hint(url: str, dest: Path) -> str:
    return (f"If this machine is offline, download {url} elsewhere and place it at {dest} "
            f"(set the data root with the data_dir argument or the {DATA_DIR_ENV} environment "
            f"variable).")


def fetch(url: str, dest: str | os.PathLike, sha256: str | None, *, timeout: float = 60.0,
          overwrite: bool = False, chunk_size: int = 1 << 20,
          progress: Callable[[int, int | None], None] | None = None) -> Path:
    """Downloads ``url`` to ``dest`` unless a verified copy is already there.

    Args:
      url: an ``http://`` or ``https://`` URL.
      dest: the file to write (its folder is created).
      sha256: expected hex sha256 of the file. ``None`` skips verification
        (only for files without a published checksum).
      timeout: socket timeout in seconds (connect and each read).
      overwrite: download again even if ``dest`` exists with the right checksum.
      chunk_size: bytes read per step.
      progress: optional ``progress(bytes_done, total_or_None)`` callback.

    Returns:
      ``dest`` as a ``Path``.

    Raises:
      DownloadError: the host is unreachable, the server answered an HTTP
        error, or the body was shorter than its ``Content-Length``. The message
        names the URL and says where to place the file by hand.
      ChecksumError: the downloaded bytes do not match ``sha256``.
    """
    if not isinstance(url, str) or not url.lower().startswith(_ALLOWED_SCHEMES):
        raise ValueError(f"fetch: url must start with http:// or https://, got {url!r}")
    if sha256 is not None:
        sha256 = sha256.lower()
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"fetch: sha256 must be 64 hex digits, got {sha256!r}")
    dest = Path(dest).expanduser()

    if dest.is_file() and not overwrite:
        if sha256 is None or sha256_file(dest) == sha256:
            return dest
        # A stale or damaged copy: replace it (atomically) with a fresh download.

    digest = hashlib.sha256()
    done = 0
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "jmeta-data"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with atomic_write(dest) as f:
                while True:
                    block = response.read(chunk_size)
                    if not block:
                        break
                    f.write(block)
                    digest.update(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
                if total is not None and done != total:
                    raise DownloadError(
                        f"download of {url} was truncated: got {done} of {total} bytes. "
                        f"Try again. {_manual_hint(url, dest)}")
                if sha256 is not None and digest.hexdigest() != sha256:
                    raise ChecksumError(
                        f"download of {url} has sha256 {digest.hexdigest()}, expected {sha256}; "
                        f"nothing was written to {dest}. The file on the server changed or the "
                        f"transfer was corrupted. {_manual_hint(url, dest)}")
    except urllib.error.HTTPError as e:
        raise DownloadError(f"could not download {url}: HTTP {e.code} {e.reason}. "
                            f"{_manual_hint(url, dest)}") from e
    except http.client.IncompleteRead as e:
        raise DownloadError(f"download of {url} was truncated after {done + len(e.partial)} bytes"
                            f"{'' if e.expected is None else f' ({e.expected} more expected)'}. "
                            f"Try again. {_manual_hint(url, dest)}") from e
    except (urllib.error.URLError, socket.timeout, ConnectionError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"could not download {url}: {reason} (offline or host unreachable?). "
                            f"{_manual_hint(url, dest)}") from e
    return dest


def _member_target(root: Path, name: str) -> Path:
    """Where ``name`` would be extracted, refusing names that escape ``root``."""
    if not name or "\x00" in name:
        raise UnsafeArchiveError(f"archive member name {name!r} is empty or holds a NUL byte")
    norm = name.replace("\\", "/")
    pure = PurePosixPath(norm)
    if pure.is_absolute() or (len(norm) > 1 and norm[1] == ":"):
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute path; refusing to extract")
    if ".." in pure.parts:
        raise UnsafeArchiveError(f"archive member {name!r} contains '..' and would escape the "
                                 f"target folder; refusing to extract")
    target = (root / pure).resolve()
    if target != root and root not in target.parents:
        raise UnsafeArchiveError(f"archive member {name!r} resolves to {target}, outside {root}; "
                                 f"refusing to extract")
    return target


def safe_extract(archive: str | os.PathLike, target_dir: str | os.PathLike) -> list[Path]:
    """Extracts a zip archive, refusing members that would land outside ``target_dir``.

    Every member is checked before anything is written: absolute paths,
    drive letters, ``..`` components and symbolic links are refused.

    Args:
      archive: path of the ``.zip``.
      target_dir: folder to extract into (created if needed).

    Returns:
      The paths of the extracted files.

    Raises:
      UnsafeArchiveError: naming the offending member.
      DataNotFoundError: ``archive`` does not exist.
      CorruptDataError: ``archive`` is not a readable zip file.
    """
    archive = Path(archive)
    if not archive.is_file():
        raise DataNotFoundError(f"archive {archive} does not exist")
    root = Path(target_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    try:
        with zipfile.ZipFile(archive) as z:
            members = z.infolist()
            plan = []
            for info in members:
                target = _member_target(root, info.filename)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise UnsafeArchiveError(f"archive member {info.filename!r} is a symbolic link; "
                                             f"refusing to extract")
                plan.append((info, target))
            written = []
            for info, target in plan:
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                written.append(target)
            return written
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as e:
        raise CorruptDataError(f"{archive}: not a readable zip file ({e}); the file is truncated "
                               f"or corrupted: delete it and download it again") from e
