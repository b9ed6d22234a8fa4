"""Datasets as class-indexed ``uint8`` stores, plus downloads and caches.

Everything here runs on the host with numpy and Pillow; nothing imports
TensorFlow or touches an accelerator at import time. Move a store to the
device with :func:`jmeta.tasks.episodes.put_on_device` and sample episodes
there with :class:`jmeta.tasks.episodes.EpisodeSampler`.

Where files live: the data root is the ``data_dir`` argument, else the
``JMETA_DATA_DIR`` environment variable, else ``~/.cache/jmeta/data``;
decoded caches go to ``cache_dir``, ``JMETA_CACHE_DIR``, ``<data root>/cache``
(if writable) or ``~/.cache/jmeta/cache`` (see :mod:`jmeta.data.paths`).

Example:
  >>> from jmeta.data import load_omniglot
  >>> train = load_omniglot("train", rotations=True)   # [4800, 20, 28, 28, 1]
"""

from jmeta.data.download import fetch, safe_extract
from jmeta.data.errors import (ChecksumError, CorruptDataError, DataError, DataNotFoundError,
                               DownloadError, PickleNotAllowedError, UnsafeArchiveError)
from jmeta.data.miniimagenet import MINIIMAGENET_CLASSES, MINIIMAGENET_SPLITS, load_miniimagenet
from jmeta.data.omniglot import (OMNIGLOT_BASE_URL, OMNIGLOT_SHA256, OMNIGLOT_SPLITS,
                                 download_omniglot, load_omniglot)
from jmeta.data.paths import (CACHE_DIR_ENV, DATA_DIR_ENV, default_data_dir, resolve_cache_dir,
                              resolve_data_dir)
from jmeta.data.store import ClassStore, load_store, save_store
from jmeta.data.tfds import from_tfds

__all__ = [
    "CACHE_DIR_ENV",
    "ChecksumError",
    "ClassStore",
    "CorruptDataError",
    "DATA_DIR_ENV",
    "DataError",
    "DataNotFoundError",
    "DownloadError",
    "MINIIMAGENET_CLASSES",
    "MINIIMAGENET_SPLITS",
    "OMNIGLOT_BASE_URL",
    "OMNIGLOT_SHA256",
    "OMNIGLOT_SPLITS",
    "PickleNotAllowedError",
    "UnsafeArchiveError",
    "default_data_dir",
    "download_omniglot",
    "fetch",
    "from_tfds",
    "load_miniimagenet",
    "load_omniglot",
    "load_store",
    "resolve_cache_dir",
    "resolve_data_dir",
    "safe_extract",
    "save_store",
]
