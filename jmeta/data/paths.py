"""Where datasets and decoded caches live.

Data root (raw files such as ``omniglot/images_background.zip``), first match wins:

1. the ``data_dir`` argument of a loader;
2. the environment variable ``JMETA_DATA_DIR``;
3. ``$XDG_CACHE_HOME/jmeta/data``, i.e. ``~/.cache/jmeta/data`` by default.

Cache folder (decoded ``.npz`` arrays), first match wins:

1. the ``cache_dir`` argument of a loader;
2. the environment variable ``JMETA_CACHE_DIR``;
3. ``<data root>/cache`` if it exists and is writable, or can be created;
4. ``$XDG_CACHE_HOME/jmeta/cache`` (for a read-only data root).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_DIR_ENV", "CACHE_DIR_ENV", "default_data_dir", "resolve_data_dir",
           "resolve_cache_dir"]

DATA_DIR_ENV = "JMETA_DATA_DIR"
CACHE_DIR_ENV = "JMETA_CACHE_DIR"

PathLike = str | os.PathLike


def _xdg_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME")
    return Path(base).expanduser() if base else Path.home() / ".cache"


def default_data_dir() -> Path:
    """The data root used when no ``data_dir`` is given (see module doc)."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return _xdg_cache() / "jmeta" / "data"


def resolve_data_dir(data_dir: PathLike | None = None) -> Path:
    """``data_dir`` as a ``Path``, or :func:`default_data_dir` when ``None``."""
    if data_dir is None:
        return default_data_dir()
    if not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"data_dir must be a path (str or os.PathLike) or None, "
                        f"got {type(data_dir).__name__}")
    return Path(data_dir).expanduser()


def _writable_dir(path: Path) -> bool:
    if path.is_dir():
        return os.access(path, os.W_OK | os.X_OK)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def resolve_cache_dir(cache_dir: PathLike | None = None,
                      data_dir: PathLike | None = None) -> Path:
    """The folder for decoded caches (see module doc); created if missing."""
    if cache_dir is not None:
        path = Path(cache_dir).expanduser()
    elif os.environ.get(CACHE_DIR_ENV):
        path = Path(os.environ[CACHE_DIR_ENV]).expanduser()
    else:
        candidate = resolve_data_dir(data_dir) / "cache"
        path = candidate if _writable_dir(candidate) else _xdg_cache() / "jmeta" / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path
