"""Task batches: the one data structure every algorithm consumes.

A :class:`TaskBatch` holds the support and query sets of one task or of a
batch of tasks (a leading task axis). It is a pytree (a ``NamedTuple``), so it
passes through ``jit``, ``vmap``, ``lax.map`` and sharding unchanged.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple

import jax

Array = Any


class TaskBatch(NamedTuple):
    """Support and query sets of a task, or of a batch of tasks.

    Attributes:
      support_x: inputs of the support set, ``[..., n_support, *x_shape]``.
      support_y: targets of the support set, ``[..., n_support, *y_shape]``.
      query_x: inputs of the query set, ``[..., n_query, *x_shape]``.
      query_y: targets of the query set, ``[..., n_query, *y_shape]``.

    A single task has no leading axis; a batch of ``B`` tasks has a leading
    axis of size ``B`` on all four arrays (``...`` above).
    """

    support_x: Array
    support_y: Array
    query_x: Array
    query_y: Array

    @property
    def num_tasks(self) -> int:
        """Size of the leading task axis (raises for a single task).

        Shapes alone cannot always tell a single task from a batch (a single
        task with inputs ``[5, 1]`` looks like 5 tasks of one scalar input),
        so a batch is recognised by its full layout: the inputs have at least
        one per-example axis (``x_shape`` non-empty, as in every jmeta task
        family: give scalar inputs a trailing axis of size 1), i.e.
        ``support_x`` is ``[tasks, examples, *x_shape]`` with at least 3 axes,
        and the four arrays pass :func:`validate_task_batch` with
        ``batched=True`` (a shared task axis, matching example axes).

        Raises:
          ValueError: for a single task (or arrays that do not form a batch).
        """
        sx = _shape(self.support_x)
        if len(sx) < 3:
            raise ValueError(f"a single task has no task axis: support_x has shape {sx}, a batch of tasks "
                             "is [tasks, examples, *x_shape] with at least one input axis")
        try:
            validate_task_batch(self, batched=True)
        except ValueError as e:
            raise ValueError(f"TaskBatch has no task axis (a single task, or not a batch of tasks): {e}") from None
        return int(sx[0])

    def validate(self, *, batched: bool = True) -> "TaskBatch":
        """Checks that shapes agree and returns ``self``.

        Args:
          batched: whether the arrays carry a leading task axis.

        Raises:
          ValueError: naming the array and the shapes that disagree.
        """
        validate_task_batch(self, batched=batched)
        return self


def _shape(a) -> tuple:
    return tuple(getattr(a, "shape", ()))


def validate_task_batch(task: TaskBatch, *, batched: bool = True) -> None:
    """Raises ``ValueError`` if the support/query arrays of ``task`` disagree.

    Rules: x and y of one set have the same leading example axis; support and
    query inputs have the same per-example shape; support and query targets
    have the same per-example shape; with ``batched``, all four arrays share
    the leading task axis; every set holds at least one example.
    """
    if not isinstance(task, TaskBatch):
        raise TypeError(f"expected a TaskBatch, got {type(task).__name__}")
    names = ("support_x", "support_y", "query_x", "query_y")
    shapes = {n: _shape(getattr(task, n)) for n in names}
    lead = 1 if batched else 0
    for n, s in shapes.items():
        if len(s) < lead + 1:
            raise ValueError(
                f"TaskBatch.{n} has shape {s}: expected at least {lead + 1} axes "
                f"({'[tasks, examples, ...]' if batched else '[examples, ...]'})")
    if batched:
        b = {n: s[0] for n, s in shapes.items()}
        if len(set(b.values())) != 1:
            raise ValueError(f"TaskBatch arrays disagree on the task axis: {b}")
    for xs, ys in (("support_x", "support_y"), ("query_x", "query_y")):
        nx, ny = shapes[xs][lead], shapes[ys][lead]
        if nx != ny:
            raise ValueError(
                f"TaskBatch.{xs} has {nx} examples but TaskBatch.{ys} has {ny} "
                f"(shapes {shapes[xs]} and {shapes[ys]})")
        if nx == 0:
            raise ValueError(f"TaskBatch.{xs} holds no examples: K and the query "
                             f"size must be at least 1")
    if shapes["support_x"][lead + 1:] != shapes["query_x"][lead + 1:]:
        raise ValueError(
            f"support and query inputs differ per example: support_x "
            f"{shapes['support_x']} vs query_x {shapes['query_x']}")
    if shapes["support_y"][lead + 1:] != shapes["query_y"][lead + 1:]:
        raise ValueError(
            f"support and query targets differ per example: support_y "
            f"{shapes['support_y']} vs query_y {shapes['query_y']}")


def task_at(batch: TaskBatch, i) -> TaskBatch:
    """The ``i``-th task of a batch (works with traced ``i``)."""
    return jax.tree.map(lambda a: a[i], batch)


# -- the sampler signature -------------------------------------------------------------------------------------
def check_no_data(owner: str, data: Any) -> None:
    """Refuses data given to a data-free task family (``None`` or an empty pytree such as ``()`` is fine)."""
    if data is not None and jax.tree.leaves(data):
        raise TypeError(f"{owner} samples without data (data must be None or an empty pytree such as ()); got "
                         f"a pytree with {len(jax.tree.leaves(data))} array(s)")


def sample_tasks(sample_fn: Callable[..., TaskBatch], key: Any, num_tasks: int, data: Any = None) -> TaskBatch:
    """``sample_fn(key, num_tasks, data)``: how jmeta calls every sampler.

    One signature for every task family: ``sample(key, num_tasks, data) -> TaskBatch``, where ``data`` is a
    pytree of device arrays passed *into* the compiled step as an argument (so that a large dataset is not
    embedded in the program as a constant), and ``None`` for families that need none
    (:meth:`jmeta.tasks.Sinusoid.sample`, :meth:`jmeta.tasks.EpisodeSampler.sample` with the images as
    ``data``).

    A ``sample_fn(key, num_tasks)`` of two arguments (the form before this signature) still works when
    ``data`` is ``None``, with a ``DeprecationWarning``: it goes in the next release.

    Raises:
      TypeError: if ``sample_fn`` takes only ``(key, num_tasks)`` but ``data`` is given.
    """
    try:
        return sample_fn(key, num_tasks, data)
    except TypeError as e:
        # Only a call that failed binding its arguments (no frame of sample_fn's own ran) falls back; a
        # TypeError raised inside sample_fn propagates unchanged. No signature is read.
        if e.__traceback__ is None or e.__traceback__.tb_next is not None:
            raise
        first_error = e
    try:
        tasks = sample_fn(key, num_tasks)
    except TypeError as e2:
        if e2.__traceback__ is None or e2.__traceback__.tb_next is not None:
            raise
        raise TypeError(f"sample_fn must take (key, num_tasks, data); calling it so failed with: "
                        f"{first_error}") from None
    if data is not None and jax.tree.leaves(data):
        raise TypeError("data was given, but sample_fn takes only (key, num_tasks): the data would be ignored; "
                        "give a sample_fn(key, num_tasks, data)") from None
    warnings.warn("a sample_fn taking (key, num_tasks) is deprecated: jmeta calls sample_fn(key, num_tasks, data) "
                  "(data is None for data-free families); add the data argument (this form goes in the next "
                  "release)", DeprecationWarning, stacklevel=3)
    return tasks
