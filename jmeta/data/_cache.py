"""Checksums and atomic ``.npz`` caches (private helpers)."""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

from jmeta._io import atomic_write
from jmeta.data.errors import CorruptDataError

# Bump when the decoded layout changes so that stale caches are not reused.
CACHE_VERSION = 1

_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike, *, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file (memoised per path, size and mtime)."""
    path = Path(path)
    st = path.stat()
    memo_key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo_key in _SHA_MEMO:
        return _SHA_MEMO[memo_key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    digest = h.hexdigest()
    _SHA_MEMO[memo_key] = digest
    return digest


def save_npz_atomic(dest: str | os.PathLike, arrays: Mapping[str, np.ndarray],
                    *, compress: bool = False) -> Path:
    """Writes ``arrays`` to ``dest`` (``.npz``) atomically."""
    with atomic_write(dest) as f:
        (np.savez_compressed if compress else np.savez)(f, **arrays)
    return Path(dest)


def load_npz(path: str | os.PathLike, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Loads ``keys`` from an ``.npz`` (no pickle); clear error naming the file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise CorruptDataError(
                    f"{path}: expected arrays {list(keys)} in this .npz, missing {missing} "
                    f"(found {z.files})")
            return {k: z[k] for k in keys}
    except CorruptDataError:
        raise
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise CorruptDataError(
            f"{path}: cannot read this .npz ({type(e).__name__}: {e}); the file is "
            f"truncated or corrupted: delete it and fetch or rebuild it") from e


def cached_arrays(cache_path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """Arrays of a cache file, or ``None`` if absent or unreadable (warns then)."""
    if not cache_path.is_file():
        return None
    try:
        return load_npz(cache_path, keys)
    except CorruptDataError as e:
        warnings.warn(f"ignoring unreadable cache ({e}); decoding again", stacklevel=3)
        return None
