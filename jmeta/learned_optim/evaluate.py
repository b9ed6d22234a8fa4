"""Evaluating optimizers (learned or hand-designed) on optimizee task families.

:func:`loss_curves` runs any optax optimizer on a batch of fresh tasks
(``vmap`` over tasks, ``lax.scan`` over steps) and returns the loss curves;
:func:`tune_learning_rate` grid-searches a hand-designed optimizer's learning
rate (all candidates in one compiled, ``vmap``-ed program) by the median final
loss; :func:`baseline_optimizers` gives the paper's baselines.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = Any
PyTree = Any

__all__ = ["loss_curves", "tune_learning_rate", "baseline_optimizers", "steps_to_reach"]


def baseline_optimizers() -> dict[str, Callable[[Array], optax.GradientTransformation]]:
    """``{name: lr -> GradientTransformation}`` for SGD, momentum (0.9), RMSprop, Adam."""
    return {
        "sgd": lambda lr: optax.sgd(lr),
        "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
        "rmsprop": lambda lr: optax.rmsprop(lr),
        "adam": lambda lr: optax.adam(lr),
    }


def _curves(make_opt, hyper, task_family, key, num_tasks, num_steps):
    """Unjitted body: losses ``[num_tasks, num_steps + 1]`` (entry 0 = initial loss)."""

    def one(k):
        k_task, k_init, k_steps = jax.random.split(k, 3)
        task = task_family.sample(k_task)
        params = task.init(k_init)
        opt = make_opt(hyper)
        opt_state = opt.init(params)

        def body(carry, kk):
            params, opt_state = carry
            loss, g = jax.value_and_grad(task.loss)(params, kk)
            updates, opt_state = opt.update(g, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        keys = jax.random.split(k_steps, num_steps + 1)
        (params, _), losses = jax.lax.scan(body, (params, opt_state), keys[:-1])
        final = task.loss(params, keys[-1])
        return jnp.concatenate([losses, final[None]])

    return jax.vmap(one)(jax.random.split(key, num_tasks))


def _build(make_opt, task_family, num_tasks, num_steps, grid):
    if grid:
        return jax.jit(jax.vmap(lambda lr, k: _curves(make_opt, lr, task_family, k, num_tasks, num_steps)[:, -1],
                                in_axes=(0, None)))
    return jax.jit(lambda h, k: _curves(make_opt, h, task_family, k, num_tasks, num_steps))


_build_cached = functools.lru_cache(maxsize=32)(_build)


def _compiled(make_opt, task_family, num_tasks, num_steps, *, grid: bool):
    """The jitted curves function, kept across calls for the same optimizer factory and family.

    A new ``jax.jit`` per call compiled anew every time (seconds per call for
    an LSTM optimizer); unhashable arguments fall back to an uncached build.
    """
    try:
        hash((make_opt, task_family))
    except TypeError:
        return _build(make_opt, task_family, num_tasks, num_steps, grid)
    return _build_cached(make_opt, task_family, num_tasks, num_steps, grid)


def loss_curves(
    make_opt: Callable[[Any], optax.GradientTransformation],
    hyper: Any,
    task_family: Any,
    *,
    key: Array,
    num_tasks: int,
    num_steps: int,
) -> np.ndarray:
    """Optimizee loss curves of an optimizer on fresh tasks of a family.

    ``losses[i, t]`` is task ``i``'s loss (on step ``t``'s minibatch) at the
    parameters after ``t`` updates; ``t = 0`` is the initial loss.

    Args:
      make_opt: ``hyper -> GradientTransformation``, e.g. ``lopt.opt_fn`` with
        ``hyper = theta`` or ``optax.adam`` with ``hyper = lr``. ``hyper`` is
        traced, so one compilation serves all values of the same shape.
      hyper: the argument of ``make_opt`` (a pytree of arrays).
      task_family: has ``sample(key) -> task``.
      key: a ``jax.random.key``; the same key gives the same tasks, data and
        initializations for every optimizer.
      num_tasks: tasks to run (vmapped).
      num_steps: optimizer steps per task.

    Returns:
      ``np.ndarray`` of shape ``[num_tasks, num_steps + 1]``.
    """
    if not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    fn = _compiled(make_opt, task_family, num_tasks, num_steps, grid=False)
    return np.asarray(fn(hyper, key))


def tune_learning_rate(
    make_opt: Callable[[Array], optax.GradientTransformation],
    learning_rates: Sequence[float],
    task_family: Any,
    *,
    key: Array,
    num_tasks: int,
    num_steps: int,
) -> tuple[float, np.ndarray]:
    """Grid search of a learning rate by the median (over tasks) final loss.

    All learning rates run in one compiled program (``vmap`` over the grid).
    Non-finite final losses count as ``+inf``.

    Args:
      make_opt: ``lr -> GradientTransformation``.
      learning_rates: candidates (e.g. ``np.logspace(-4, 0, 13)``).
      task_family, key, num_tasks, num_steps: as in :func:`loss_curves`.

    Returns:
      ``(best_lr, medians)`` with ``medians[j]`` the median final loss of
      ``learning_rates[j]``.
    """
    lrs = np.asarray(list(learning_rates), dtype=np.float64)
    if lrs.ndim != 1 or lrs.size == 0 or not np.all(lrs > 0):
        raise ValueError(f"learning_rates must be a non-empty list of positive numbers, got {learning_rates!r}")
    fn = _compiled(make_opt, task_family, num_tasks, num_steps, grid=True)
    finals = np.asarray(fn(jnp.asarray(lrs, jnp.result_type(float)), key))
    finals = np.where(np.isfinite(finals), finals, np.inf)
    medians = np.median(finals, axis=1)
    return float(lrs[int(np.argmin(medians))]), medians


def steps_to_reach(curve: np.ndarray, target: float) -> int | None:
    """First index ``t`` with ``curve[t] <= target`` (None if never)."""
    idx = np.nonzero(np.asarray(curve) <= target)[0]
    return int(idx[0]) if idx.size else None
