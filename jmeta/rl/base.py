"""The contract every jmeta meta-RL algorithm shares, their registry, and the sharded meta-step.

A meta-RL algorithm is a frozen dataclass of hyperparameters holding its environment (``env``, a
:class:`jmeta.rl.envs.Env`) and policy (``policy``), with pure methods (:class:`MetaRLAlgorithm`):

* ``init(key=None, params=None) -> state``: the training state (a ``NamedTuple`` whose ``params`` are the
  meta-parameters) from the policy's initial parameters, or from ``params``.
* ``sample_task(meta_params, task, key)``: everything sampled for ONE task (no task axis) without gradient:
  MAML-RL's rollouts before and after each inner step, RL^2's trial.
* ``sample(meta_params, key, *, mesh=None, task_axis=None) -> (samples, ..., tasks)``: a meta-batch of
  ``meta_batch_size`` tasks drawn by :func:`draw_tasks` (tasks and one key per task from ``key``), and
  ``samples`` = ``sample_task`` ``vmap``-ped over them (the first element; the tasks are the last).
* ``meta_step(state, key, *, mesh=None, task_axis=None) -> (state, metrics)``: one meta-iteration (sampling,
  inner adaptation, post-adaptation rollouts, outer update); pure, compiled by :func:`make_rl_meta_step`.
* ``check_tasks(tasks) -> int``: the number of tasks of a batched task pytree, or one clear error.
* ``evaluate(meta_params, key, *, num_tasks=..., tasks=None) -> dict``: held-out returns with a ``"summary"``
  of ``{"return ...": ...}`` entries (host side).

``mesh`` splits the task axis of the meta-batch over the devices of a :class:`jax.sharding.Mesh` (the mesh
machinery of :mod:`jmeta.train.distributed`): the tasks and per-task keys are placed on the mesh's task axes
and every per-task intermediate (rollouts, inner steps, post-adaptation rollouts, the per-task outer terms)
is constrained the same way, so each device computes its share of the tasks; the task means of the outer
update (TRPO's surrogate, KL and Fisher-vector products; PPO's losses) are reduced across devices by the
compiler. The meta-parameters stay replicated. Results equal the one-device step up to the order of float
reductions.

Every meta-RL algorithm is listed in :data:`ALGORITHMS` (``tests/rl/test_rl_conformance.py`` runs each
through the same checks, and fails when a class implementing the contract is missing from the list).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax

from jmeta._refs import resolve_all

PyTree = Any
Array = Any

__all__ = ["ALGORITHMS", "ALGORITHM_BASES", "CompiledMetaStep", "MetaRLAlgorithm", "algorithm_classes",
           "check_task_mesh", "draw_tasks", "make_rl_meta_step", "shard_tasks"]


@runtime_checkable
class MetaRLAlgorithm(Protocol):
    """Structural type of a jmeta meta-RL algorithm (see the module docstring).

    The arguments before ``/`` are positional (implementations name them as they like); the keywords are
    accepted by every implementation, which may add keywords of its own with defaults.

    Attributes:
      env: the environment (:class:`jmeta.rl.envs.Env`).
      policy: the policy the algorithm meta-learns.
      meta_batch_size: tasks per meta-step.
    """

    env: Any
    policy: Any

    @property
    def meta_batch_size(self) -> int:
        """Tasks per meta-step."""
        ...

    def init(self, key: Array | None = None, params: PyTree | None = None) -> NamedTuple:
        """The initial training state (``state.params``: the meta-parameters)."""
        ...

    def sample_task(self, meta_params: PyTree, task: PyTree, key: Array, /) -> PyTree:
        """Everything sampled for one task (no task axis), without gradient."""
        ...

    def sample(self, meta_params: PyTree, key: Array, /, *, mesh: jax.sharding.Mesh | None = None,
               task_axis: str | tuple[str, ...] | None = None) -> tuple:
        """``(samples, ..., tasks)`` of a meta-batch: ``sample_task`` over :func:`draw_tasks` of ``key``."""
        ...

    def meta_step(self, state: NamedTuple, key: Array, /, *, mesh: jax.sharding.Mesh | None = None,
                  task_axis: str | tuple[str, ...] | None = None) -> tuple[NamedTuple, dict]:
        """One meta-iteration: ``(new_state, metrics)`` with device-scalar (or small vector) metrics."""
        ...

    def check_tasks(self, tasks: PyTree, /) -> int:
        """The number of tasks of a batched ``tasks`` pytree, or a ``ValueError``."""
        ...

    def evaluate(self, meta_params: PyTree, key: Array, /, *, num_tasks: int = ..., tasks: PyTree | None = None
                 ) -> dict:
        """Returns over held-out tasks: a dict with a ``"summary"`` of ``"return ..."`` entries."""
        ...


#: Every meta-RL algorithm under :class:`MetaRLAlgorithm`: ``name -> "module:Class"``, imported on use by
#: :func:`algorithm_classes`. Meta-SGD and ANIL are MAML-RL options (``learn_inner_lr=True``,
#: ``adapt_params=(...)``), not classes of their own.
ALGORITHMS: dict[str, str] = {
    "MAMLRL": "jmeta.rl.maml_rl:MAMLRL",
    "ProMP": "jmeta.rl.maml_rl:ProMP",
    "RL2": "jmeta.rl.rl2:RL2",
}

#: Shared bases implementing the contract for the algorithms above, not algorithms of their own (none yet).
ALGORITHM_BASES: dict[str, str] = {}


def algorithm_classes() -> dict[str, type]:
    """``{name: class}`` of :data:`ALGORITHMS` (imports their modules)."""
    return resolve_all(ALGORITHMS)


def draw_tasks(env, key: Array, n: int) -> tuple[PyTree, Array]:
    """``(tasks, keys)``: ``n`` tasks of ``env`` and one rollout key per task, both from ``key``.

    ``k_tasks, k_roll = split(key)``; ``tasks = env.sample_tasks(k_tasks, n)``; ``keys = split(k_roll, n)``.
    Every algorithm's :meth:`~MetaRLAlgorithm.sample` draws its meta-batch this way, so ``sample_task(params,
    tasks[i], keys[i])`` reproduces task ``i`` of the batch.
    """
    k_tasks, k_roll = jax.random.split(key)
    return env.sample_tasks(k_tasks, n), jax.random.split(k_roll, n)


def check_task_mesh(mesh: jax.sharding.Mesh | None, task_axis, num_tasks: int, what: str = "meta_batch_size"
                    ) -> tuple[str, ...] | None:
    """The mesh axes that split the tasks (``None`` without a mesh), or a clear error.

    Raises:
      TypeError: ``mesh`` is not a :class:`jax.sharding.Mesh`.
      ValueError: ``task_axis`` names no mesh axis, is given without a mesh, or the device count of the task
        axes does not divide ``num_tasks``.
    """
    from jmeta.train import distributed

    if mesh is None:
        if task_axis is not None:
            raise ValueError("task_axis is only meaningful with a mesh")
        return None
    axes = distributed.task_axes(mesh, task_axis)
    d = math.prod(mesh.shape[a] for a in axes)
    if num_tasks % d:
        raise ValueError(f"{what} ({num_tasks}) must be divisible by the {d} devices of the mesh's task axes "
                         f"{axes}: each device takes an equal share of the tasks")
    return axes


def shard_tasks(tree: PyTree, mesh: jax.sharding.Mesh | None, axes: tuple[str, ...] | None) -> PyTree:
    """Splits the leading (task) axis of every leaf over the mesh ``axes`` (inside a traced function);
    the identity without a mesh. Leaves without a task axis (scalars) are left alone."""
    if mesh is None:
        return tree
    from jmeta.train import distributed

    def one(x):
        if getattr(x, "ndim", 0) == 0:
            return x
        return distributed.shard_task_axis(x, mesh, axes)

    return jax.tree.map(one, tree)


class CompiledMetaStep:
    """A jitted ``step(state, key) -> (state, metrics)`` that counts its traces (``num_traces``).

    The arguments are passed through as they are (RL^2's :meth:`~jmeta.rl.RL2.make_step` compiles
    ``step(state)`` with it: :class:`jmeta.rl.rl2.CompiledStep` is this class).
    """

    def __init__(self, fn, **jit_kwargs):
        self.num_traces = 0

        def counted(*args):
            self.num_traces += 1
            return fn(*args)

        self._jitted = jax.jit(counted, **jit_kwargs)

    def __call__(self, *args):
        return self._jitted(*args)

    def lower(self, *args):
        """``jax.jit(...).lower`` of the step (for its compiled text, cost and memory analyses)."""
        return self._jitted.lower(*args)


def make_rl_meta_step(algorithm: MetaRLAlgorithm, *, mesh: jax.sharding.Mesh | None = None,
                      task_axis: str | tuple[str, ...] | None = None) -> CompiledMetaStep:
    """``algorithm.meta_step`` compiled once: ``step(state, key) -> (state, metrics)``.

    Args:
      algorithm: a :class:`MetaRLAlgorithm` (an entry of :data:`ALGORITHMS`).
      mesh: split the task axis of each meta-batch over this mesh's devices (e.g.
        :func:`jmeta.train.distributed.task_mesh`); place the state with
        :func:`jmeta.train.distributed.replicate`. ``None``: one device.
      task_axis: the mesh axis name(s) that split the tasks (default: all). The tests use ``Auto`` axes
        (``task_mesh()``'s default); ``Explicit`` ones go through ``jax.reshard`` and are not tested here.

    Raises:
      TypeError: ``algorithm`` does not implement :class:`MetaRLAlgorithm`, or ``mesh`` is not a mesh.
      ValueError: the meta-batch is not divisible by the devices of the task axes, or ``task_axis`` is wrong.

    Example:
      >>> mesh = jmeta.train.distributed.task_mesh()          # all devices
      >>> step = make_rl_meta_step(algo, mesh=mesh)
      >>> state = jmeta.train.distributed.replicate(algo.init(), mesh)
      >>> state, metrics = step(state, jax.random.key(0))
    """
    if not isinstance(algorithm, MetaRLAlgorithm):
        raise TypeError(f"algorithm must implement jmeta.rl.MetaRLAlgorithm (one of jmeta.rl.ALGORITHMS: "
                        f"{sorted(ALGORITHMS)}); got {type(algorithm).__name__}")
    check_task_mesh(mesh, task_axis, algorithm.meta_batch_size)
    return CompiledMetaStep(lambda s, k: algorithm.meta_step(s, k, mesh=mesh, task_axis=task_axis))
