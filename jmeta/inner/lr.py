r"""Learning rates as meta-parameters, and the optax transformation that applies them.

Learned inner learning rates are stored *unconstrained*, as ``log(lr)``, so
the meta-optimizer can move them freely while the rate stays positive
(``lr = exp(log_lr)``). Four granularities:

================  ===================================  ============================
``kind``          shape of ``log_lr``                  used by
================  ===================================  ============================
``"scalar"``      one scalar                           learned inner lr (Li et al. 2017, Antoniou et al. 2019)
``"per_layer"``   a scalar per parameter leaf          per-layer learning rates
``"per_param"``   same shape as each parameter leaf    Meta-SGD (Li et al. 2017)
``"per_layer_per_step"``  ``[K]`` per leaf               MAML++ LSLR (Antoniou et al. 2019)
================  ===================================  ============================
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any

LR_KINDS = ("scalar", "per_layer", "per_param", "per_layer_per_step", "per_param_per_step")


def _floating_dtypes(params: PyTree):
    return [jnp.result_type(p) for p in jax.tree.leaves(params) if jnp.issubdtype(jnp.result_type(p), jnp.floating)]


def init_log_lr(params: PyTree, lr: float, kind: str, num_steps: int = 1) -> PyTree:
    """Initial unconstrained (log) learning rates of the given ``kind``, in the params' floating dtype.

    The per-leaf kinds take each floating leaf's dtype; ``"scalar"`` (and any
    non-floating leaf) takes the promoted dtype of the floating leaves. So
    float32 parameters give float32 rates and float64 parameters float64 ones
    (float32 when ``params`` has no floating leaf).

    Args:
      params: the parameters that are adapted (for the shapes and dtype).
      lr: initial learning rate, ``> 0``.
      kind: one of :data:`LR_KINDS`.
      num_steps: number of inner steps (for the ``*_per_step`` kinds).
    """
    if not lr > 0:
        raise ValueError(f"a learned inner learning rate must start positive, got lr={lr!r}")
    if kind not in LR_KINDS:
        raise ValueError(f"learned lr kind must be one of {LR_KINDS}, got {kind!r}")
    v = math.log(float(lr))
    floats = _floating_dtypes(params)
    tree_dtype = jnp.result_type(*floats) if floats else jnp.dtype(jnp.float32)

    def dt(p):
        d = jnp.result_type(p)
        return d if jnp.issubdtype(d, jnp.floating) else tree_dtype

    if kind == "scalar":
        return jnp.asarray(v, tree_dtype)
    if kind == "per_layer":
        return jax.tree.map(lambda p: jnp.asarray(v, dt(p)), params)
    if kind == "per_param":
        return jax.tree.map(lambda p: jnp.full(jnp.shape(p), v, dt(p)), params)
    if kind == "per_layer_per_step":
        return jax.tree.map(lambda p: jnp.full((max(num_steps, 1),), v, dt(p)), params)
    return jax.tree.map(lambda p: jnp.full((max(num_steps, 1), *jnp.shape(p)), v, dt(p)), params)


class ScaleByLearnedLRState(NamedTuple):
    count: jax.Array


def scale_by_learned_lr(log_lr: PyTree, kind: str = "scalar") -> optax.GradientTransformation:
    r"""Scales updates by ``-exp(log_lr)``, with any granularity of :data:`LR_KINDS`.

    .. math:: u \leftarrow -\exp(\ell)\, u

    where :math:`\ell` is a scalar, one scalar per leaf, one value per
    coordinate, or (``*_per_step``) the row of step ``count`` of a ``[K, ...]``
    table. ``log_lr`` may be a traced meta-parameter: the transformation is
    built inside the differentiated function.

    Args:
      log_lr: unconstrained learning rates (see :func:`init_log_lr`).
      kind: one of :data:`LR_KINDS`.
    """
    if kind not in LR_KINDS:
        raise ValueError(f"learned lr kind must be one of {LR_KINDS}, got {kind!r}")
    per_step = kind.endswith("_per_step")

    def init_fn(params):
        del params
        return ScaleByLearnedLRState(count=jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        if kind == "scalar":
            lr = jnp.exp(log_lr)
            new = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
        else:
            def one(u, l):
                if per_step:
                    l = l[jnp.minimum(state.count, l.shape[0] - 1)]
                return (-jnp.exp(l) * u).astype(u.dtype)

            new = jax.tree.map(one, updates, log_lr)
        return new, ScaleByLearnedLRState(count=state.count + 1)

    return optax.GradientTransformation(init_fn, update_fn)
