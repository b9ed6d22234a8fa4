"""Many devices and many hosts: meshes, replication and keys for the sharded meta-step.

jmeta uses JAX's own SPMD machinery (never ``pmap``): the meta-step is one
program over a :class:`jax.sharding.Mesh` whose task axis splits every
meta-batch (``make_meta_step(..., mesh=task_mesh())``). The same code runs on
one device, on the N devices of one host, and on many hosts.

Single host::

    mesh = task_mesh()                       # all local devices, axis "tasks"
    step = make_meta_step(alg, tasks.sample, opt, meta_batch_size=1024, mesh=mesh)
    state = replicate(init_train_state(...), mesh)
    state, metrics = step(state, jax.random.key(0))

Many hosts (the same script launched once per host, e.g. by SLURM)::

    jmeta.train.distributed.initialize()      # before any other JAX call
    mesh = task_mesh()                        # all devices of all hosts
    state = replicate(init_train_state(...), mesh)
    key = shared_key(seed)                    # the same on every host
    for _ in range(n):
        state, metrics = step(state, key)     # every host calls step in lockstep

Keys: the meta-batch is sampled inside the compiled program from the step key
as one *global* array, and each device computes only its shard. The key given
to ``step`` must therefore be identical on every host (:func:`shared_key`,
checked by :func:`assert_same_across_hosts`); per-host randomness (e.g. a
host-side data pipeline) uses :func:`process_key`, which must never be passed
to ``step``.

Multi-host use is written against ``jax.distributed`` and
``jax.make_array_from_process_local_data`` but is **not tested** here (the
tests simulate 8 devices in one process).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from jmeta import validate

PyTree = Any

_INITIALIZED = False


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, local_device_ids: Sequence[int] | None = None,
               **kwargs) -> dict:
    """Starts multi-host JAX (``jax.distributed.initialize``) when there is more than one process.

    Call once per process, before any other JAX call. With no arguments JAX
    reads the cluster from the environment (SLURM, Open MPI, Kubernetes, Cloud
    TPU); if the environment names no cluster and no argument is given, this is
    a no-op (one process), so the same script runs on a laptop. Calling it
    again is a no-op.

    Args:
      coordinator_address: ``"host:port"`` of process 0.
      num_processes: number of processes.
      process_id: this process's index.
      local_device_ids: devices this process owns (default: all visible).
      **kwargs: passed to :func:`jax.distributed.initialize`.

    Returns:
      ``{"process_index", "process_count", "local_devices", "global_devices"}``.
    """
    global _INITIALIZED
    explicit = any(v is not None for v in (coordinator_address, num_processes, process_id, local_device_ids))
    if not _INITIALIZED and (explicit or _cluster_in_env()):
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id, local_device_ids=local_device_ids, **kwargs)
        _INITIALIZED = True
    return {"process_index": jax.process_index(), "process_count": jax.process_count(),
            "local_devices": jax.local_device_count(), "global_devices": jax.device_count()}


def _cluster_in_env() -> bool:
    """Whether the environment describes a multi-process job JAX can join."""
    import os

    def more_than_one(var):
        try:
            return int(os.environ.get(var, "1")) > 1
        except ValueError:
            return False

    return (more_than_one("SLURM_NTASKS") or more_than_one("OMPI_COMM_WORLD_SIZE")
            or "JAX_COORDINATOR_ADDRESS" in os.environ
            or "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""))


def task_mesh(num_devices: int | None = None, *, axis_name: str = "tasks", devices=None,
              explicit: bool = False) -> jax.sharding.Mesh:
    """A 1-d mesh whose one axis splits the task axis of each meta-batch.

    Args:
      num_devices: how many devices (default: all, across all hosts).
      axis_name: the mesh axis name (give it to ``make_meta_step(task_axis=)``
        if the mesh is later extended).
      devices: explicit device list (overrides ``num_devices``).
      explicit: make the axis ``AxisType.Explicit`` (sharding in types) instead
        of ``Auto``; the meta-step handles both.

    Raises:
      ValueError: if ``num_devices`` is not in ``1..jax.device_count()``.
    """
    if devices is None:
        all_devices = jax.devices()
        n = validate.integer("num_devices", len(all_devices) if num_devices is None else num_devices,
                             min=1, max=len(all_devices))
        devices = all_devices[:n]
    devices = list(devices)
    if not devices:
        raise ValueError("devices must not be empty")
    kind = jax.sharding.AxisType.Explicit if explicit else jax.sharding.AxisType.Auto
    return jax.sharding.Mesh(np.asarray(devices), (axis_name,), axis_types=(kind,))


def task_axes(mesh: jax.sharding.Mesh, task_axis: str | Sequence[str] | None = None) -> tuple[str, ...]:
    """The mesh axis names that split the task axis (``task_axis``, default: all axes of ``mesh``).

    Raises:
      TypeError: if ``mesh`` is not a :class:`jax.sharding.Mesh`.
      ValueError: if ``task_axis`` names no axis of ``mesh``.
    """
    if not isinstance(mesh, jax.sharding.Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (e.g. jmeta.train.distributed.task_mesh()), "
                        f"got {type(mesh).__name__}")
    names = tuple(mesh.axis_names)
    if task_axis is None:
        return names
    axes = (task_axis,) if isinstance(task_axis, str) else tuple(task_axis)
    bad = [a for a in axes if a not in names]
    if bad or not axes:
        raise ValueError(f"task_axis must name axes of the mesh {names}, got {task_axis!r}")
    return axes


def shard_task_axis(tree: PyTree, mesh: jax.sharding.Mesh, axes: tuple[str, ...]) -> PyTree:
    """Places the leading (task) axis of every leaf of ``tree`` on the mesh ``axes``, inside a traced function.

    ``jax.reshard`` for Explicit axes, ``jax.lax.with_sharding_constraint`` for Auto ones; the compiler
    propagates the split through everything computed per task from these values.

    Raises:
      ValueError: if the ``axes`` mix Explicit and Auto axis types.
    """
    spec = jax.sharding.PartitionSpec(axes)
    types = {mesh.axis_types[mesh.axis_names.index(a)] for a in axes}
    if types == {jax.sharding.AxisType.Explicit}:
        return jax.reshard(tree, jax.sharding.NamedSharding(mesh, spec))
    if types == {jax.sharding.AxisType.Auto}:
        return jax.lax.with_sharding_constraint(tree, jax.sharding.NamedSharding(mesh, spec))
    raise ValueError(f"the task axes {axes} of the mesh must all be Explicit or all Auto, got {types}")


def replicate(tree: PyTree, mesh: jax.sharding.Mesh) -> PyTree:
    """Places every array leaf on all devices of ``mesh`` (``PartitionSpec()``).

    Use it for the :class:`~jmeta.train.TrainState` and for device-resident
    datasets passed as ``data``. With several processes every host must hold
    the same values (e.g. parameters from the same seed); they are assembled
    with :func:`jax.make_array_from_process_local_data`.
    """
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def put(x):
        if not hasattr(x, "shape"):
            return x
        if jax.process_count() > 1:
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # np.asarray refuses typed keys
                data = jax.make_array_from_process_local_data(sharding, np.asarray(jax.random.key_data(x)))
                return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
            return jax.make_array_from_process_local_data(sharding, np.asarray(x))
        return jax.device_put(x, sharding)

    return jax.tree.map(put, tree)


def shared_key(seed: int):
    """The step key: ``jax.random.key(seed)``, to be identical on every host.

    Raises:
      TypeError: if ``seed`` is not an integer.
    """
    try:
        seed = validate.integer("seed", seed)
    except ValueError as e:
        raise TypeError(str(e)) from None
    return jax.random.key(seed)


def process_key(key):
    """A per-host key ``fold_in(key, process_index)`` for host-local randomness only.

    Never pass it to the meta-step: the step's tasks are one global batch
    sampled from a key that must be the same everywhere.
    """
    return jax.random.fold_in(key, jax.process_index())


def assert_same_across_hosts(tree: PyTree, what: str = "value") -> None:
    """Raises if ``tree`` (e.g. the step key) differs between processes; free on one process."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    def raw(x):
        if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key_data(x)
        return x

    multihost_utils.assert_equal(jax.tree.map(raw, tree), fail_message=f"{what} differs between hosts")


__all__ = ["assert_same_across_hosts", "initialize", "process_key", "replicate", "shard_task_axis", "shared_key",
           "task_axes", "task_mesh"]
