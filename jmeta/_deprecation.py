"""Old import paths kept for one release.

A module that moved leaves a shim at its old path; the shim calls :func:`moved`, which warns once (a
``DeprecationWarning`` naming the new path, attributed to the line that imported the old path) and makes the
old name an alias of the new module, so ``jmeta.train.runner is jmeta.run.runner``: every name, private ones
included, is the same object, and ``monkeypatch.setattr`` on the old path patches the code that runs.
"""

from __future__ import annotations

import sys
import types
import warnings

__all__ = ["moved"]


def moved(old: str, new: types.ModuleType) -> None:
    """Make the module being imported as ``old`` an alias of ``new``, with a ``DeprecationWarning``.

    Args:
      old: the shim's ``__name__`` (the old dotted path).
      new: the module's new home, already imported.
    """
    warnings.warn(f"{old} moved to {new.__name__}: import {new.__name__} instead ({old} is a deprecated alias "
                  "that goes in the next release)", DeprecationWarning, stacklevel=3)  # 1 here, 2 the shim, 3 the import (importlib's frames skipped)
    sys.modules[old] = new
