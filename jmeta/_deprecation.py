"""Old import paths kept for one release.

A module that moved leaves a shim at its old path; the shim calls :func:`moved`, which warns once (a
``DeprecationWarning`` naming the new path, attributed to the line that imported the old path) and makes the
old name an alias of the new module, so ``jmeta.train.runner is jmeta.run.runner``: every name, private ones
included, is the same object, and ``monkeypatch.setattr`` on the old path patches the code that runs.
"""

from __future__ import annotations

import importlib
import sys
import types
import warnings

__all__ = ["moved", "renamed_module"]


def moved(old: str, new: types.ModuleType) -> None:
    """Make the module being imported as ``old`` an alias of ``new``, with a ``DeprecationWarning``.

    Args:
      old: the shim's ``__name__`` (the old dotted path).
      new: the module's new home, already imported.
    """
    # stacklevel: 1 here, 2 the shim, 3 the importing line (warnings skips importlib's own frames)
    warnings.warn(f"{old} moved to {new.__name__}: import {new.__name__} instead ({old} is a deprecated alias "
                  "that goes in the next release)", DeprecationWarning, stacklevel=3)
    sys.modules[old] = new


def renamed_module(old: str, new: str) -> None:
    """Answer ``from old import name`` from module ``new``, warning on first use, without a file at ``old``.

    For a module whose old path is also an attribute of its package that is not the module
    (``jmeta.train.evaluate`` is the function): a shim file there would replace that attribute when
    imported. Instead ``sys.modules[old]`` holds a stand-in, so importing ``old`` never reloads and never
    rebinds the package's attribute.

    Args:
      old: the old dotted path (no file there any more).
      new: the dotted path of the module that answers for it.
    """
    stand_in = types.ModuleType(old, f"Deprecated: renamed :mod:`{new}`; this alias goes in the next release.")
    warned = []

    def __getattr__(name: str):
        if name.startswith("__") and name != "__all__":  # import machinery and introspection probing dunders
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        target = importlib.import_module(new)
        if not warned:
            warned.append(True)
            warnings.warn(f"{old} was renamed {new}: import {new} instead ({old} is a deprecated alias that goes "
                          "in the next release)", DeprecationWarning, stacklevel=2)
        return getattr(target, name)

    stand_in.__getattr__ = __getattr__
    sys.modules.setdefault(old, stand_in)
