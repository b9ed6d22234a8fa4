"""``import jmeta`` is cheap and side-effect free."""

from __future__ import annotations

import subprocess
import sys

CHECK = r"""
import sys, time
t = time.perf_counter()
import jmeta
dt = time.perf_counter() - t
heavy = [m for m in ("tensorflow", "tensorflow_datasets", "torch", "flax", "optax", "orbax", "matplotlib")
         if m in sys.modules]
import jax._src.xla_bridge as xb
init = xb.backends_are_initialized() if hasattr(xb, "backends_are_initialized") else bool(xb._backends)
print(repr((dt, heavy, init)))
"""


def test_import_jmeta_is_cheap_and_touches_no_device():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True).stdout
    dt, heavy, backends = eval(out.strip().splitlines()[-1])
    assert heavy == [], f"import jmeta pulled in {heavy}"
    assert backends is False, "import jmeta initialised a JAX backend"


def test_public_api_resolves_lazily():
    import jmeta

    for name in jmeta.__all__:
        assert getattr(jmeta, name) is not None, name


def _type_checking_imports():
    """``{name: module}`` of the ``from ... import`` lines under ``if TYPE_CHECKING:`` in jmeta/__init__.py."""
    import ast
    import pathlib

    import jmeta

    tree = ast.parse(pathlib.Path(jmeta.__file__).read_text())
    blocks = [n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", None) == "TYPE_CHECKING"]
    assert len(blocks) == 1, "jmeta/__init__.py should have one `if TYPE_CHECKING:` block"
    names = {}
    for node in ast.walk(blocks[0]):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                assert alias.name not in names, f"{alias.name} imported twice under TYPE_CHECKING"
                names[alias.asname or alias.name] = node.module
    return names


def test_type_checking_imports_match_the_lazy_exports():
    """What type checkers and IDEs see (the TYPE_CHECKING imports) is exactly what ``jmeta.X`` resolves to."""
    import importlib

    import jmeta

    seen = _type_checking_imports()
    submodules = {n for n, m in seen.items() if m == "jmeta"}
    exports = {n: m for n, m in seen.items() if m != "jmeta"}
    assert submodules == set(jmeta._SUBMODULES)
    assert exports == jmeta._EXPORTS
    for name, module in jmeta._EXPORTS.items():
        obj = getattr(importlib.import_module(module), name)
        assert getattr(jmeta, name) is obj, name
        mod_all = getattr(importlib.import_module(module), "__all__", None)
        assert mod_all is None or name in mod_all, f"{module}.__all__ lacks {name}"
    for name in jmeta._SUBMODULES:
        assert getattr(jmeta, name) is importlib.import_module(f"jmeta.{name}"), name
    assert sorted(dir(jmeta)) == sorted(jmeta.__all__)
