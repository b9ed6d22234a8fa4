"""Directional central finite differences against ``jax.grad``: the shared gradient check of the test suite.

Importable from any test module (pytest puts ``tests/`` on ``sys.path`` for the root ``conftest.py``).
Use it in float64 (the ``x64`` fixture).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def fd_relative_error(f, x, *, seed=0, eps=1e-6, n_dirs=3, normalize=True):
    """``(max relative error, grad)``: ``jax.grad(f)(x)`` against central differences of the scalar ``f``.

    Along ``n_dirs`` random Gaussian directions ``v`` (unit norm over the whole pytree when
    ``normalize``), compares ``<grad, v>`` with ``(f(x + eps v) - f(x - eps v)) / (2 eps)``; the error of
    a direction is ``|fd - an| / max(|an|, 1e-8)``.
    """
    g = jax.jit(jax.grad(f))(x)
    f = jax.jit(f)
    leaves, treedef = jax.tree.flatten(x)
    rng = np.random.default_rng(seed)
    errs = []
    for _ in range(n_dirs):
        v = jax.tree.unflatten(treedef, [jnp.asarray(rng.normal(size=np.shape(a))) for a in leaves])
        if normalize:
            vn = jnp.sqrt(sum(jnp.sum(a * a) for a in jax.tree.leaves(v)))
            v = jax.tree.map(lambda a: a / vn, v)
        fd = (f(jax.tree.map(lambda a, b: a + eps * b, x, v)) - f(jax.tree.map(lambda a, b: a - eps * b, x, v)))
        fd = float(fd) / (2 * eps)
        an = float(sum(jnp.sum(a * b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(v))))
        errs.append(abs(fd - an) / max(abs(an), 1e-8))
    return max(errs), g
