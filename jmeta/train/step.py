r"""The meta-step: sample tasks, batch the task objective, average, differentiate, update.

:func:`make_meta_step` builds one pure function

    ``step(state, key, data=None) -> (state, metrics)``

that samples ``meta_batch_size`` tasks from ``sample_fn`` inside the compiled
program, evaluates ``algorithm.task_loss`` on every task, takes the gradient
of the mean objective with respect to the meta-parameters and applies an optax
meta-optimizer. The per-step key is ``fold_in(key, state.step)``, so a run is
a deterministic function of its seed and resumes exactly from any step.

How the tasks of a batch run is a strategy (``task_parallel``):

* ``"vmap"``: all tasks at once (best on GPU/TPU, and for MLPs everywhere);
* ``"map"``: one task after another in a ``lax.scan``, gradients accumulated;
* an integer ``c``: chunks of ``c`` tasks, ``vmap`` inside a chunk, a scan over
  chunks with gradient accumulation (meta-batches larger than memory).

The algorithm never knows which strategy ran; all give the same meta-gradient.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jmeta.tasks.base import TaskBatch, validate_task_batch

PyTree = Any


class TrainState(NamedTuple):
    """Everything a meta-training run carries from step to step.

    Attributes:
      step: number of meta-steps taken (int32 scalar).
      meta_params: the algorithm's meta-parameters (``{"params": ..., ...}``).
      model_state: the model's non-differentiated state (BatchNorm statistics).
      opt_state: the meta-optimizer's state.
    """

    step: jax.Array
    meta_params: PyTree
    model_state: PyTree
    opt_state: PyTree


def init_train_state(algorithm, params: PyTree, model_state: PyTree, meta_optimizer: optax.GradientTransformation,
                     *, key=None) -> TrainState:
    """Initial :class:`TrainState` from a model's parameters and state."""
    meta_params = algorithm.init(params, key=key)
    return TrainState(jnp.zeros((), jnp.int32), meta_params, model_state, meta_optimizer.init(meta_params))


def _resolve_chunk(task_parallel, batch_size: int) -> int:
    if task_parallel == "vmap":
        return batch_size
    if task_parallel == "map":
        return 1
    if isinstance(task_parallel, int) and not isinstance(task_parallel, bool) and task_parallel >= 1:
        if batch_size % task_parallel:
            raise ValueError(f"task_parallel chunk size {task_parallel} must divide meta_batch_size {batch_size}")
        return task_parallel
    raise ValueError(f"task_parallel must be 'vmap', 'map' or a positive chunk size dividing the meta-batch, "
                     f"got {task_parallel!r}")


def _mean_state(states, old):
    """Mean of per-task model states over the leading axis, keeping dtypes."""
    return jax.tree.map(lambda s, o: jnp.mean(s.astype(jnp.float32), axis=0).astype(o.dtype)
                        if jnp.issubdtype(o.dtype, jnp.floating) else s[-1], states, old)


def batched_loss_and_grad(algorithm, meta_params, model_state, tasks: TaskBatch, keys, step, *,
                          task_parallel="vmap"):
    """Mean task objective over a task batch, its gradient, and mean metrics.

    Returns ``(objective, grads, metrics, new_model_state)``.
    """
    b = tasks.support_x.shape[0]
    chunk = _resolve_chunk(task_parallel, b)

    def chunk_objective(mp, chunk_tasks, chunk_keys):
        def one(task, k):
            return algorithm.task_loss(mp, model_state, task, key=k, step=step)

        obj, aux = jax.vmap(one)(chunk_tasks, chunk_keys)
        return jnp.mean(obj), aux

    vg = jax.value_and_grad(chunk_objective, has_aux=True)
    if chunk == b:
        (obj, aux), grads = vg(meta_params, tasks, keys)
        metrics = jax.tree.map(jnp.mean, aux["metrics"])
        new_state = _mean_state(aux["model_state"], model_state)
        return obj, grads, metrics, new_state

    n = b // chunk
    split = jax.tree.map(lambda a: a.reshape(n, chunk, *a.shape[1:]), (tasks, keys))

    def body(acc, xs):
        ct, ck = xs
        (obj, aux), g = vg(meta_params, ct, ck)
        acc = jax.tree.map(jnp.add, acc, g)
        return acc, (obj, jax.tree.map(jnp.mean, aux["metrics"]), _mean_state(aux["model_state"], model_state))

    zeros = jax.tree.map(jnp.zeros_like, meta_params)
    gsum, (objs, metrics, states) = jax.lax.scan(body, zeros, split)
    grads = jax.tree.map(lambda g: g / n, gsum)
    metrics = jax.tree.map(jnp.mean, metrics)
    new_state = _mean_state(states, model_state)
    return jnp.mean(objs), grads, metrics, new_state


def _takes_data(sample_fn) -> bool:
    """Whether ``sample_fn`` accepts a third positional argument ``data``."""
    import inspect

    try:
        sig = inspect.signature(sample_fn)
    except (TypeError, ValueError):
        return False
    pos = [p for p in sig.parameters.values()
           if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    if any(p.kind == p.VAR_POSITIONAL for p in pos):
        return True
    if len(pos) < 2:
        raise TypeError(f"sample_fn must take (key, num_tasks[, data]), its signature is {sig}")
    return len(pos) >= 3


def make_meta_step(
    algorithm,
    sample_fn: Callable[..., TaskBatch],
    meta_optimizer: optax.GradientTransformation,
    *,
    meta_batch_size: int,
    task_parallel="vmap",
    jit: bool = True,
):
    """Builds ``step(state, key, data=None) -> (state, metrics)``.

    Args:
      algorithm: any jmeta algorithm (see :mod:`jmeta.algorithms.base`).
      sample_fn: ``sample_fn(key, num_tasks)`` or ``sample_fn(key, num_tasks,
        data)`` returning a :class:`~jmeta.tasks.TaskBatch`; ``data`` (e.g. a
        device-resident uint8 dataset) is passed through from ``step``'s
        argument so it is not baked into the program as a constant.
      meta_optimizer: any optax transformation.
      meta_batch_size: tasks per meta-step, ``>= 1``.
      task_parallel: ``"vmap"``, ``"map"`` or a chunk size (module docstring).
      jit: return the jitted step (default) or the plain function.

    Returns:
      ``step``; ``metrics`` holds the mean over tasks of the algorithm's
      metrics (``loss``: post-adaptation query loss, ...), ``objective`` (the
      differentiated quantity) and ``grad_norm``.
    """
    if isinstance(meta_batch_size, bool) or not isinstance(meta_batch_size, int) or meta_batch_size < 1:
        raise ValueError(f"meta_batch_size must be an integer >= 1, got {meta_batch_size!r}")
    _resolve_chunk(task_parallel, meta_batch_size)
    if not isinstance(meta_optimizer, optax.GradientTransformation):
        raise TypeError(f"meta_optimizer must be an optax.GradientTransformation, got {type(meta_optimizer).__name__}")

    takes_data = _takes_data(sample_fn)

    def sample(key, data):
        if takes_data:
            return sample_fn(key, meta_batch_size, data)
        if data is not None:
            raise TypeError("step() got data, but sample_fn takes only (key, num_tasks)")
        return sample_fn(key, meta_batch_size)

    def step(state: TrainState, key, data=None):
        k = jax.random.fold_in(key, state.step)
        k_sample, k_tasks = jax.random.split(k)
        tasks = sample(k_sample, data)
        validate_task_batch(tasks)
        keys = jax.random.split(k_tasks, meta_batch_size)
        obj, grads, metrics, new_model_state = batched_loss_and_grad(
            algorithm, state.meta_params, state.model_state, tasks, keys, state.step,
            task_parallel=task_parallel)
        updates, opt_state = meta_optimizer.update(grads, state.opt_state, state.meta_params)
        meta_params = optax.apply_updates(state.meta_params, updates)
        metrics = dict(metrics, objective=obj, grad_norm=optax.global_norm(grads))
        return TrainState(state.step + 1, meta_params, new_model_state, opt_state), metrics

    return jax.jit(step) if jit else step
