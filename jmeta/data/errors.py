"""Exceptions raised by the data layer.

Every error names the file, URL or argument at fault and says what would be
valid. They subclass the matching built-in exceptions, so code that already
catches ``FileNotFoundError``, ``ValueError`` or ``OSError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "DataError",
    "DataNotFoundError",
    "CorruptDataError",
    "ChecksumError",
    "DownloadError",
    "UnsafeArchiveError",
    "PickleNotAllowedError",
]


class DataError(Exception):
    """Base class of every error raised by :mod:`jmeta.data`."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data file is missing (the message lists where it was looked for)."""


class CorruptDataError(DataError, ValueError):
    """A data file exists but cannot be read (truncated, wrong format, ...)."""


class ChecksumError(CorruptDataError):
    """A file's sha256 differs from the expected one."""


class DownloadError(DataError, OSError):
    """A download failed (offline, unreachable host, HTTP error, truncated)."""


class UnsafeArchiveError(DataError, ValueError):
    """An archive member would be written outside the extraction folder."""


class PickleNotAllowedError(DataError, ValueError):
    """A pickle file would be loaded without the explicit opt-in (unpickling can run arbitrary code).

    Attributes:
      path: the pickle file.
    """

    def __init__(self, message: str, path=None):
        super().__init__(message)
        self.path = path
