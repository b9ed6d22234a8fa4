"""The environment contract of jmeta's meta-RL: pure functions, the task an argument.

An environment is a frozen dataclass of *static* sizes (``obs_size``, ``action_size``, ``horizon``,
``discrete``) with three pure methods; nothing is hidden state, so a whole meta-batch of rollouts
(tasks x episodes x horizon) is ``vmap`` over tasks and episodes of a ``lax.scan`` over the horizon, inside
one compiled program:

* ``sample_tasks(key, n) -> task``: a pytree of arrays with a leading axis ``n`` (goal positions, arm
  probabilities, target velocities, ...). ``jax.tree.map(lambda a: a[i], task)`` is task ``i``.
* ``reset(key, task) -> (state, obs)``: the first observation of one episode of one task (no task axis).
* ``step(state, action, task) -> (state, obs, reward, done)``: one transition. ``reward`` is a float32
  scalar, ``done`` a bool scalar; after ``done`` the caller masks the rest of the episode (environments
  with a fixed horizon never set it).

``action`` is a float vector ``[action_size]`` for continuous environments and an int32 scalar in
``[0, action_size)`` for discrete ones (``discrete=True``). ``obs`` is a float32 vector ``[obs_size]``.

:func:`check_env` validates the static fields with one clear error each; :func:`task_axis_size` checks a
task pytree's leading axis.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax

from jmeta import validate

PyTree = Any

__all__ = ["Env", "check_env", "task_axis_size", "index_task"]


@runtime_checkable
class Env(Protocol):
    """Structural type of a jmeta environment (see the module docstring)."""

    obs_size: int
    action_size: int
    horizon: int
    discrete: bool

    def sample_tasks(self, key: jax.Array, n: int) -> PyTree: ...

    def reset(self, key: jax.Array, task: PyTree) -> tuple[PyTree, jax.Array]: ...

    def step(self, state: PyTree, action: jax.Array, task: PyTree) -> tuple[PyTree, jax.Array, jax.Array, jax.Array]: ...


def check_env(env: Any, *, discrete: bool | None = None, user: str = "this algorithm") -> Any:
    """Returns ``env`` if it has the contract's static fields and methods, else a ``TypeError``/``ValueError``.

    Args:
      env: the environment.
      discrete: if given, the kind of action space ``user`` needs (a ``ValueError`` naming ``user`` if not).
      user: who needs it, for that error (e.g. ``"MAMLRL"``).
    """
    missing = [m for m in ("sample_tasks", "reset", "step") if not callable(getattr(env, m, None))]
    if missing:
        raise TypeError(f"env must have methods sample_tasks, reset and step (jmeta.rl.envs.Env); "
                        f"{type(env).__name__} lacks {', '.join(missing)}")
    for name in ("obs_size", "action_size"):
        validate.integer(f"env.{name}", getattr(env, name, None), min=1)
    validate.integer("env.horizon", getattr(env, "horizon", None), min=1)
    validate.flag("env.discrete", getattr(env, "discrete", None))
    if discrete is not None and env.discrete != discrete:
        raise ValueError(f"{user} needs an environment with {'discrete' if discrete else 'continuous'} actions; "
                         f"{type(env).__name__} has discrete={env.discrete}")
    return env


def task_axis_size(task: PyTree, what: str = "task") -> int:
    """The common leading axis of a task pytree, or a ``ValueError`` naming the leaves that disagree."""
    leaves = jax.tree_util.tree_leaves_with_path(task)
    if not leaves:
        raise ValueError(f"{what} is an empty pytree; expected arrays with a leading task axis")
    sizes = {}
    for path, leaf in leaves:
        shape = getattr(leaf, "shape", ())
        if len(shape) == 0:
            raise ValueError(f"{what}{jax.tree_util.keystr(path)} is a scalar; every leaf needs a leading task axis")
        sizes[jax.tree_util.keystr(path)] = shape[0]
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{what} leaves disagree on the task axis: {sizes}")
    return next(iter(sizes.values()))


def index_task(task: PyTree, i) -> PyTree:
    """Task ``i`` of a batched task pytree."""
    return jax.tree.map(lambda a: a[i], task)
