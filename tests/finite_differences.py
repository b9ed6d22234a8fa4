"""Directional central finite differences against ``jax.grad``: the shared gradient check of the test suite.

Importable from any test module (pytest puts ``tests/`` on ``sys.path`` for the root ``conftest.py``).
Use it in float64 (the ``x64`` fixture).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def fd_relative_error(f, x, *, seed=0, eps=1e-6, n_dirs=3, normalize=True, args=()):
    """``(max relative error, grad)``: ``jax.grad(f)(x)`` against central differences of the scalar ``f``.

    Along ``n_dirs`` random Gaussian directions ``v`` (unit norm over the whole pytree when
    ``normalize``), compares ``<grad, v>`` with ``(f(x + eps v) - f(x - eps v)) / (2 eps)``; the error of
    a direction is ``|fd - an| / max(|an|, 1e-8)``.

    ``f(x, *args)``: ``args`` (e.g. the task) go into the compiled program as arguments, not as constants, so
    tests that check the same function on other data (same shapes) load the program from the compilation cache.
    The value and the gradient come from one compiled program (``f(x)`` and ``jax.grad(f)(x)`` side by side: the
    value is ``f``'s own, not a custom VJP's forward), the directions and their dot products are NumPy float64 on
    the host (no op-by-op device work).
    """
    def fd_value_and_grad(x, *args):  # a fixed name: the cache key holds the program's name
        return f(x, *args), jax.grad(f)(x, *args)

    vg = jax.jit(fd_value_and_grad)
    _, g = vg(x, *args)
    leaves, treedef = jax.tree.flatten(x)
    xs = [np.asarray(a) for a in leaves]
    gs = [np.asarray(a) for a in jax.tree.leaves(g)]
    rng = np.random.default_rng(seed)
    errs = []
    for _ in range(n_dirs):
        v = [rng.normal(size=np.shape(a)) for a in leaves]
        if normalize:
            vn = np.sqrt(sum(np.sum(a * a) for a in v))
            v = [a / vn for a in v]
        plus = jax.tree.unflatten(treedef, [jnp.asarray(a + eps * b) for a, b in zip(xs, v)])
        minus = jax.tree.unflatten(treedef, [jnp.asarray(a - eps * b) for a, b in zip(xs, v)])
        fd = (float(vg(plus, *args)[0]) - float(vg(minus, *args)[0])) / (2 * eps)
        an = float(sum(np.sum(a * b) for a, b in zip(gs, v)))
        errs.append(abs(fd - an) / max(abs(an), 1e-8))
    return max(errs), g
