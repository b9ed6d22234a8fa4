"""``"module:qualname"`` references, resolved on demand (registries name classes without importing them)."""

from __future__ import annotations

import importlib
from typing import Any, Mapping

__all__ = ["resolve", "resolve_all"]


def resolve(ref: str) -> Any:
    """The object ``ref = "package.module:name"`` names (imports the module)."""
    module, sep, qualname = ref.partition(":")
    if not sep or not module or not qualname:
        raise ValueError(f"a reference must read 'package.module:name', got {ref!r}")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def resolve_all(refs: Mapping[str, str]) -> dict[str, Any]:
    """``{name: resolve(ref)}`` for a registry ``{name: ref}``."""
    return {name: resolve(ref) for name, ref in refs.items()}
