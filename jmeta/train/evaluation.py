r"""Evaluation over held-out tasks: mean and 95% confidence interval per adaptation step.

For every task ``algorithm.evaluate`` returns its query metrics after
``0..N`` adaptation steps; :func:`evaluate` runs it on ``num_tasks`` tasks
(in jitted batches) and reports, per metric and step, the mean over tasks and
the half-width of the 95% confidence interval of that mean,

.. math:: \mathrm{ci95} = 1.96\,\frac{s}{\sqrt{n}},

with :math:`s` the sample standard deviation over the ``n`` tasks (as in the
MAML, ProtoNets and MetaOptNet evaluation protocols).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

import jax
import numpy as np

from jmeta import validate
from jmeta.tasks.base import sample_tasks

if TYPE_CHECKING:
    from jmeta.algorithms.base import MetaLearner

PyTree = Any


def mean_ci95(values) -> tuple[float, float]:
    """``(mean, 1.96 * std / sqrt(n))`` of a 1-d array (``ddof=1``)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("mean_ci95 needs at least one value")
    if v.size == 1:
        return float(v[0]), float("nan")
    return float(v.mean()), float(1.96 * v.std(ddof=1) / math.sqrt(v.size))


def task_statistics(values, *, higher_is_better: bool = False) -> dict:
    """Per-column statistics of a ``[tasks, steps]`` array of a metric.

    Returns ``{"mean", "ci95", "median", "nonfinite"}``, each a list over the
    columns. The mean and CI include every task, so a task whose adaptation
    diverged (NaN/inf) makes them non-finite, as it should. The median ranks
    a non-finite value as the worst one (``+inf``, or ``-inf`` when
    ``higher_is_better``), so one diverged task does not hide the typical
    task; ``nonfinite`` counts those tasks.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"task_statistics needs a [tasks, steps] array with at least one task, got shape {arr.shape}")
    finite = np.isfinite(arr)
    ranked = np.where(finite, arr, -np.inf if higher_is_better else np.inf)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf inside the std: NaN is the answer
        stats = [mean_ci95(arr[:, j]) for j in range(arr.shape[1])]
    return {"mean": [s[0] for s in stats], "ci95": [s[1] for s in stats],
            "median": [float(np.median(ranked[:, j])) for j in range(arr.shape[1])],
            "nonfinite": [int((~finite[:, j]).sum()) for j in range(arr.shape[1])]}


def eval_batch_keys(key, num_tasks: int, batch_size: int) -> list:
    """``[(sample_key, adapt_key), ...]``: the keys of each batch :func:`evaluate` draws, in order.

    Batch ``i`` holds ``min(batch_size, num_tasks)`` tasks sampled with
    ``sample_fn(sample_key, ...)``; the last batch is cut to ``num_tasks``. Tools that
    replay a run's evaluation tasks use this to draw exactly the same ones.
    """
    bs = min(batch_size, num_tasks)
    return [tuple(jax.random.split(jax.random.fold_in(key, i))) for i in range(-(-num_tasks // bs))]


def evaluate(algorithm: MetaLearner, meta_params: PyTree, model_state: PyTree, sample_fn: Callable, key, *,
             num_tasks: int = 600, num_steps: int | None = None, batch_size: int = 100, data=None,
             return_per_task: bool = False, task_parallel: str = "vmap",
             progress: Callable[[int], None] | None = None) -> dict:
    """Evaluates an algorithm on ``num_tasks`` freshly sampled tasks.

    Args:
      algorithm: a jmeta algorithm.
      meta_params, model_state: what training produced.
      sample_fn: ``sample_fn(key, num_tasks, data) -> TaskBatch`` (held-out tasks).
      key: evaluation key (use one disjoint from training keys).
      num_tasks: tasks to evaluate (``>= 1``; the papers use 600).
      num_steps: adaptation steps (default: the algorithm's evaluation steps).
      batch_size: tasks per compiled batch.
      data: ``sample_fn``'s data (an argument of the compiled program; ``None`` for data-free families).
      return_per_task: include the per-task arrays under ``"per_task"``.
      task_parallel: ``"vmap"`` (vectorise the tasks of a batch) or ``"map"``
        (one task after another inside the compiled program: much faster for
        convolutions on XLA:CPU, see ``jmeta.ops.recommended_task_parallel``).
      progress: called with the number of tasks done after each batch.

    Returns:
      ``{"num_tasks": n, "num_steps": N, "<metric>": {"mean": [N+1], "ci95":
      [N+1], "median": [N+1], "nonfinite": [N+1]}, ...}`` with plain Python
      floats (JSON-ready). The mean and CI include every task (a diverged
      task makes them NaN/inf, as it should); the median ranks a non-finite
      value as the worst one (``+inf`` loss, ``-inf`` accuracy), and
      ``nonfinite`` counts those tasks after each step.
    """
    num_tasks = validate.integer("num_tasks", num_tasks, min=1)
    batch_size = validate.integer("batch_size", batch_size, min=1)
    if task_parallel not in ("vmap", "map"):
        raise ValueError(f"task_parallel must be 'vmap' or 'map', got {task_parallel!r}")
    bs = min(batch_size, num_tasks)

    @jax.jit
    def run(mp, ms, ks, ke, d):
        tasks = sample_tasks(sample_fn, ks, bs, d)
        keys = jax.random.split(ke, bs)
        one = lambda t, kk: algorithm.evaluate(mp, ms, t, key=kk, num_steps=num_steps)  # noqa: E731
        if task_parallel == "map":
            return jax.lax.map(lambda a: one(*a), (tasks, keys))
        return jax.vmap(one)(tasks, keys)

    chunks = []
    for i, (ks, ke) in enumerate(eval_batch_keys(key, num_tasks, bs)):
        chunks.append(jax.device_get(run(meta_params, model_state, ks, ke, data)))
        if progress is not None:
            progress(min((i + 1) * bs, num_tasks))
    per_task = jax.tree.map(lambda *a: np.concatenate(a, axis=0)[:num_tasks], *chunks)
    out: dict = {"num_tasks": num_tasks}
    for name, arr in per_task.items():
        out[name] = task_statistics(arr, higher_is_better=name == "accuracy")
        out["num_steps"] = len(out[name]["mean"]) - 1
    if return_per_task:
        out["per_task"] = per_task
    return out
