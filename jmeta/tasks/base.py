"""Task batches: the one data structure every algorithm consumes.

A :class:`TaskBatch` holds the support and query sets of one task or of a
batch of tasks (a leading task axis). It is a pytree (a ``NamedTuple``), so it
passes through ``jit``, ``vmap``, ``lax.map`` and sharding unchanged.
"""

from __future__ import annotations

from typing import Any, NamedTuple

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
