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
