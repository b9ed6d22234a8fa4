"""The classes defined in ``jmeta/``, read with ``ast`` (the conformance tests' registry scans)."""

from __future__ import annotations

import ast
import pathlib

import jmeta

PKG = pathlib.Path(jmeta.__file__).resolve().parent


def classes_in_jmeta() -> dict[str, tuple[set[str], set[str]]]:
    """``{qualified name: (defined methods, base names)}`` of every class in ``jmeta/``."""
    out = {}
    for path in PKG.rglob("*.py"):
        module = ".".join(path.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
                bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                out[f"{module}:{node.name}"] = (methods, bases)
    return out
