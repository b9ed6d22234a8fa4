r"""Mixed precision for the meta-step: low-precision compute, float32 parameters and gradients.

The recipe (Micikevicius et al. 2018, "Mixed Precision Training"; bfloat16
needs no loss scaling, Kalamkar et al. 2019):

* the meta-parameters, the optimizer state and the meta-gradient stay in
  float32 (the "master weights");
* inside one task's objective the floating-point leaves of the
  meta-parameters, the model state and the task's arrays are cast to the
  compute dtype (e.g. ``jnp.bfloat16``), so the inner loop and its
  differentiation run in bfloat16;
* the objective and metrics come back as float32, and the cast's transpose
  returns each task's meta-gradient in float32, where tasks are averaged:

.. math::
    g = \frac{1}{B}\sum_{\tau=1}^{B} \underbrace{\mathrm{f32}\big(\nabla_{\theta_{16}}
        L_\tau(\theta_{16})\big)}_{\text{per task}},\qquad \theta_{16} = \mathrm{bf16}(\theta).

:func:`jmeta.train.make_meta_step` uses this with ``compute_dtype=``; the
helpers here are public so other trainers can do the same. Integer leaves
(class labels, counters) and typed keys are never cast.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any

#: Dtypes accepted as ``compute_dtype``.
COMPUTE_DTYPES = ("float32", "bfloat16", "float16", "float64")


def canonical_compute_dtype(dtype) -> jnp.dtype | None:
    """Validates a ``compute_dtype`` option; ``None`` means "no casting".

    Raises:
      ValueError: if ``dtype`` is not a floating dtype in :data:`COMPUTE_DTYPES`.
    """
    if dtype is None:
        return None
    try:
        d = jnp.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"compute_dtype must be None or one of {COMPUTE_DTYPES}, got {dtype!r}") from e
    if d.name not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be None or one of {COMPUTE_DTYPES}, got {dtype!r}")
    return d


def _is_float(x) -> bool:
    dt = getattr(x, "dtype", None)
    if dt is None or jax.dtypes.issubdtype(dt, jax.dtypes.prng_key):
        return False
    return jnp.issubdtype(dt, jnp.floating)


def cast_floating(tree: PyTree, dtype) -> PyTree:
    """Casts every floating-point leaf of ``tree`` to ``dtype``; other leaves pass through."""
    if dtype is None:
        return tree
    return jax.tree.map(lambda x: x.astype(dtype) if _is_float(x) else x, tree)


def restore_dtypes(tree: PyTree, like: PyTree) -> PyTree:
    """Casts each floating leaf of ``tree`` back to the dtype of the matching leaf of ``like``."""
    return jax.tree.map(lambda x, ref: x.astype(ref.dtype) if _is_float(x) and _is_float(ref) else x, tree, like)


def to_float32(tree: PyTree) -> PyTree:
    """Casts every floating leaf to float32 (metrics, objectives)."""
    return jax.tree.map(lambda x: x.astype(jnp.float32) if _is_float(x) else x, tree)


def mixed_precision_task_loss(algorithm, compute_dtype):
    """``task_loss`` of ``algorithm`` run in ``compute_dtype``, float32 in and out.

    Returns ``f(meta_params, model_state, task, *, key, step) -> (objective,
    aux)`` with the same contract as ``algorithm.task_loss``: the
    meta-parameters and the task are cast to ``compute_dtype`` on entry; the
    model state (BatchNorm running statistics) is not: its updates are small
    differences that bfloat16 rounds away (running variances of a Conv4 block
    ended 1.3-2% low after 300 steps when it was cast), so a model keeps its
    activations in the compute dtype itself (jmeta's Conv4 and ResNet-12 cast
    BatchNorm's output back). The objective and metrics are float32 and the
    new model state has the dtypes of ``model_state``. Differentiating ``f``
    with respect to float32 meta-parameters gives a float32 gradient.
    """
    dtype = canonical_compute_dtype(compute_dtype)

    def f(meta_params, model_state, task, *, key=None, step=0):
        obj, aux = algorithm.task_loss(cast_floating(meta_params, dtype), model_state,
                                       cast_floating(task, dtype), key=key, step=step)
        aux = dict(aux)
        aux["metrics"] = to_float32(aux["metrics"])
        aux["model_state"] = restore_dtypes(aux["model_state"], model_state)
        return obj.astype(jnp.float32), aux

    return f


def tree_dtypes(tree: PyTree) -> set[str]:
    """The set of dtype names of a pytree's array leaves (for checks and tests)."""
    return {str(x.dtype) for x in jax.tree.leaves(tree) if hasattr(x, "dtype")}


__all__ = ["COMPUTE_DTYPES", "canonical_compute_dtype", "cast_floating", "mixed_precision_task_loss",
           "restore_dtypes", "to_float32", "tree_dtypes"]
