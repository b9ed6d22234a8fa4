r"""The meta-step: sample tasks, batch the task objective, average, differentiate, update.

:func:`make_meta_step` builds one pure function

    ``step(state, key, data=None) -> (state, metrics)``

that samples ``meta_batch_size`` tasks from ``sample_fn`` inside the compiled
program, evaluates ``algorithm.task_loss`` on every task, takes the gradient
of the mean objective

.. math:: g = \nabla_\theta \frac{1}{B}\sum_{\tau=1}^{B} \mathcal{L}_\tau(\theta)

with respect to the meta-parameters and applies an optax meta-optimizer. The
per-step key is ``fold_in(key, state.step)``, so a run is a deterministic
function of its seed and resumes exactly from any step.

How the tasks of a batch run is a strategy (``task_parallel``):

* ``"vmap"``: all tasks at once (best on GPU/TPU, and for MLPs everywhere);
* ``"map"``: one task after another in a ``lax.scan``, gradients accumulated;
* an integer ``c``: chunks of ``c`` tasks, ``vmap`` inside a chunk, a scan over
  chunks with gradient accumulation (meta-batches larger than memory);
* ``"auto"``: the largest chunk whose compiled program fits a memory budget
  (:func:`choose_chunk_size`, reading XLA's ``memory_analysis()``).

Scale options:

* ``mesh=``: the task axis of each meta-batch is split over the devices of a
  :class:`jax.sharding.Mesh` with :func:`jax.shard_map` (meta-parameters
  replicated, gradients averaged with ``pmean``): one compiled program, the
  same code on 1 device and on N, and on many hosts (see
  :mod:`jmeta.train.distributed`).
* ``compute_dtype=``: mixed precision (:mod:`jmeta.train.precision`): each
  task runs in e.g. bfloat16, parameters and gradient accumulation stay float32.

The algorithm never knows which strategy ran; all give the same meta-gradient.
"""

from __future__ import annotations

import functools
import math
import warnings
import weakref
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jmeta import validate
from jmeta.tasks.base import TaskBatch, sample_tasks, validate_task_batch
from jmeta.train import distributed
from jmeta.train.precision import canonical_compute_dtype, mixed_precision_task_loss

if TYPE_CHECKING:  # annotations only: importing jmeta.algorithms here would load every algorithm
    from jmeta.algorithms.base import MetaLearner

PyTree = Any

TASK_PARALLEL = ("vmap", "map", "auto")

#: Memory budget used by ``task_parallel="auto"`` when the device reports no
#: memory statistics (XLA:CPU): 4 GiB.
DEFAULT_MEMORY_BUDGET_BYTES = 4 * 2**30
#: Fraction of a device's ``bytes_limit`` used as the default budget (GPU/TPU).
DEFAULT_MEMORY_FRACTION = 0.5


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


def init_train_state(algorithm: MetaLearner, params: PyTree, model_state: PyTree,
                     meta_optimizer: optax.GradientTransformation, *, key=None) -> TrainState:
    """Initial :class:`TrainState` from a model's parameters and state."""
    meta_params = algorithm.init(params, key=key)
    return TrainState(jnp.zeros((), jnp.int32), meta_params, model_state, meta_optimizer.init(meta_params))


def _check_task_parallel(task_parallel):
    """``task_parallel`` as one of :data:`TASK_PARALLEL` or a Python ``int`` chunk size (NumPy integers accepted)."""
    if isinstance(task_parallel, str) and task_parallel in TASK_PARALLEL:
        return task_parallel
    try:
        return validate.integer("task_parallel", task_parallel, min=1)
    except ValueError:
        raise ValueError(f"task_parallel must be one of {TASK_PARALLEL} or a positive chunk size dividing the "
                         f"meta-batch, got {validate.describe(task_parallel)}") from None


def _resolve_chunk(task_parallel, batch_size: int) -> int:
    task_parallel = _check_task_parallel(task_parallel)
    if task_parallel == "vmap":
        return batch_size
    if task_parallel == "map":
        return 1
    if isinstance(task_parallel, int):
        if batch_size % task_parallel:
            raise ValueError(f"task_parallel chunk size {task_parallel} must divide the (per-device) meta-batch "
                             f"size {batch_size}")
        return task_parallel
    raise ValueError(f"task_parallel must be 'vmap', 'map' or a positive chunk size dividing the meta-batch, "
                     f"got {task_parallel!r}")


def _mean_state(states, old):
    """Mean of per-task model states over the leading axis, keeping dtypes (accumulated in at least float32:
    float64 states stay float64); other leaves (counters, PRNG keys) take the last task's."""
    def mean(s, o):
        if not jnp.issubdtype(o.dtype, jnp.floating):
            return s[-1]
        return jnp.mean(s, axis=0, dtype=jnp.promote_types(s.dtype, jnp.float32)).astype(o.dtype)

    return jax.tree.map(mean, states, old)


# -- memory ------------------------------------------------------------------------------------------------------
def compiled_memory_bytes(compiled) -> int | None:
    """Bytes a compiled program needs on its device, from XLA's ``memory_analysis()``.

    ``arguments + outputs + temporaries - aliased`` (generated code excluded);
    ``None`` where the backend gives no analysis.
    """
    ma = compiled.memory_analysis()
    if ma is None:
        return None
    return int(ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes - ma.alias_size_in_bytes)


def default_memory_budget(device=None, *, fraction: float = DEFAULT_MEMORY_FRACTION) -> int:
    """Default budget for ``task_parallel="auto"``, in bytes.

    ``fraction`` of the device's ``bytes_limit`` from ``device.memory_stats()``
    (GPU/TPU); :data:`DEFAULT_MEMORY_BUDGET_BYTES` (4 GiB) where the device
    reports no statistics (XLA:CPU).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    device = jax.devices()[0] if device is None else device
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - some backends raise instead of returning None
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(fraction * stats["bytes_limit"])
    return DEFAULT_MEMORY_BUDGET_BYTES


class ChunkChoice(NamedTuple):
    """What :func:`choose_chunk_size` decided.

    Attributes:
      chunk_size: tasks per chunk (divides the batch).
      bytes: compiled memory of the chosen program (``compiled_memory_bytes``).
      budget: the budget it was held to, in bytes.
      measured: ``{chunk_size: bytes}`` for every candidate that was compiled.
      fits: whether ``bytes <= budget`` (``False`` only when even a chunk of 1 does not fit).
    """

    chunk_size: int
    bytes: int | None
    budget: int
    measured: dict
    fits: bool


# algorithm -> {(argument signature, chunk): compiled bytes}; measurements do not depend on the budget.
_MEMORY_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _abstract(tree):
    def f(x):
        if not hasattr(x, "shape"):
            x = jnp.asarray(x)
        return jax.ShapeDtypeStruct(x.shape, x.dtype)

    return jax.tree.map(f, tree)


def choose_chunk_size(algorithm: MetaLearner, meta_params, model_state, tasks: TaskBatch, keys, step=0, *,
                      memory_budget: int | None = None, compute_dtype=None) -> ChunkChoice:
    """The largest chunk of tasks whose gradient program fits ``memory_budget``.

    Compiles :func:`batched_loss_and_grad` for candidate chunk sizes (the
    divisors of the batch size, by binary search, assuming memory grows with
    the chunk) and reads each program's memory from XLA's
    ``memory_analysis()`` (:func:`compiled_memory_bytes`). Arguments may be
    arrays, tracers or :class:`jax.ShapeDtypeStruct`; only shapes are used, so
    this also runs while a step is being traced.

    Args:
      algorithm, meta_params, model_state, tasks, keys, step: as for
        :func:`batched_loss_and_grad` (``tasks`` with the task axis).
      memory_budget: bytes; default :func:`default_memory_budget`.
      compute_dtype: as for :func:`batched_loss_and_grad`.

    Returns:
      A :class:`ChunkChoice`. If no chunk fits, the chunk of 1 is returned
      with ``fits=False`` and a warning.
    """
    budget = default_memory_budget() if memory_budget is None else memory_budget
    budget = validate.integer("memory_budget (bytes)", budget, min=1)
    b = int(jax.tree.leaves(tasks)[0].shape[0])
    args = _abstract((meta_params, model_state, tasks, keys, step))
    signature = (str(jax.tree.structure(args)), tuple((a.shape, str(a.dtype)) for a in jax.tree.leaves(args)),
                 str(compute_dtype), jax.default_backend())
    try:
        cache = _MEMORY_CACHE.setdefault(algorithm, {})
    except TypeError:  # not weak-referenceable: no cache
        cache = {}
    measured: dict[int, int] = {}

    def mem(c: int) -> int:
        if (signature, c) not in cache:
            fn = functools.partial(batched_loss_and_grad, algorithm, task_parallel=c, compute_dtype=compute_dtype)
            compiled = jax.jit(fn).lower(*args).compile()
            m = compiled_memory_bytes(compiled)
            cache[(signature, c)] = 0 if m is None else m
        measured[c] = cache[(signature, c)]
        return measured[c]

    cands = _divisors(b)
    lo, hi = 0, len(cands) - 1  # invariant: answer index in [lo, hi] if any fits
    if mem(cands[0]) > budget:
        warnings.warn(f"task_parallel='auto': even one task per chunk needs {measured[1]} bytes, over the "
                      f"memory budget of {budget} bytes; using chunks of 1", RuntimeWarning, stacklevel=2)
        return ChunkChoice(1, measured[1], budget, dict(measured), False)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if mem(cands[mid]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    c = cands[lo]
    return ChunkChoice(c, measured[c], budget, dict(sorted(measured.items())), True)


# -- the batched objective -----------------------------------------------------------------------------------------
def batched_loss_and_grad(algorithm: MetaLearner, meta_params, model_state, tasks: TaskBatch, keys, step, *,
                          task_parallel="vmap", compute_dtype=None, memory_budget: int | None = None):
    r"""Mean task objective over a task batch, its gradient, and mean metrics.

    Args:
      algorithm: a jmeta algorithm.
      meta_params, model_state: the algorithm's meta-parameters and the model state.
      tasks: a :class:`TaskBatch` with a leading task axis of size ``B``.
      keys: ``B`` per-task keys (``jax.random.split(key, B)``; :func:`meta_grad` takes one key).
      step: the meta-step (passed to ``task_loss``).
      task_parallel: ``"vmap"``, ``"map"``, a chunk size dividing ``B`` or
        ``"auto"`` (module docstring). Chunks are accumulated in a
        ``lax.scan``: :math:`g = \frac1n\sum_{j=1}^n g_j` with :math:`g_j` the
        gradient of the mean objective of chunk :math:`j`.
      compute_dtype: ``None`` or a floating dtype such as ``jnp.bfloat16``:
        each task's objective runs in that dtype, per-task meta-gradients are
        returned in float32 and averaged in float32
        (:mod:`jmeta.train.precision`).
      memory_budget: bytes for ``task_parallel="auto"`` (default
        :func:`default_memory_budget`).

    Returns:
      ``(objective, grads, metrics, new_model_state)``.

    Raises:
      ValueError: if ``keys`` are not ``B`` per-task keys.
    """
    task_parallel = _check_task_parallel(task_parallel)
    dtype = canonical_compute_dtype(compute_dtype)
    b = tasks.support_x.shape[0]
    _check_task_keys(keys, b)
    if task_parallel == "auto":
        chunk = choose_chunk_size(algorithm, meta_params, model_state, tasks, keys, step,
                                  memory_budget=memory_budget, compute_dtype=dtype).chunk_size
    else:
        chunk = _resolve_chunk(task_parallel, b)

    if dtype is None:
        def chunk_objective(mp, chunk_tasks, chunk_keys):
            def one(task, k):
                return algorithm.task_loss(mp, model_state, task, key=k, step=step)

            obj, aux = jax.vmap(one)(chunk_tasks, chunk_keys)
            return jnp.mean(obj), aux

        vg = jax.value_and_grad(chunk_objective, has_aux=True)
    else:
        task_loss = mixed_precision_task_loss(algorithm, dtype)

        def one(mp, task, k):
            return task_loss(mp, model_state, task, key=k, step=step)

        per_task = jax.vmap(jax.value_and_grad(one, has_aux=True), in_axes=(None, 0, 0))

        def vg(mp, chunk_tasks, chunk_keys):
            # per-task float32 gradients, averaged in float32
            (obj, aux), g = per_task(mp, chunk_tasks, chunk_keys)
            g = jax.tree.map(lambda x, p: jnp.mean(x, axis=0).astype(p.dtype), g, mp)
            return (jnp.mean(obj), aux), g

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


def _key_kind(key):
    """``(typed, per-key shape)``: ``(True, ())`` for ``jax.random.key`` keys, ``(False, (2,))`` for raw uint32 ones."""
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return True, ()
    if dtype is not None and not isinstance(key, (int, float)) and jnp.dtype(dtype) == jnp.uint32:
        return False, tuple(jnp.shape(key))[-1:]
    raise TypeError(f"key must be a jax.random.key (or per-task keys from jax.random.split), got "
                    f"{validate.describe(key)}")


def _check_task_keys(keys, num_tasks: int) -> None:
    typed, one = _key_kind(keys)
    shape = tuple(jnp.shape(keys))
    if shape != (num_tasks, *one):
        raise ValueError(f"keys must hold one key per task, shape {(num_tasks, *one)} for {num_tasks} tasks, got "
                         f"shape {shape}; split one key with jax.random.split(key, {num_tasks}), or use "
                         "jmeta.meta_grad, which takes a single key")


def task_keys(key, num_tasks: int):
    """Per-task keys from one key (split into ``num_tasks``) or from ``num_tasks`` keys (checked, returned as is).

    Args:
      key: one ``jax.random.key`` (shape ``()``; a raw ``uint32[2]`` key also works) or ``num_tasks`` of them.
      num_tasks: the number of tasks.

    Raises:
      TypeError: if ``key`` is not a key.
      ValueError: if it is neither one key nor ``num_tasks`` keys.
    """
    typed, one = _key_kind(key)
    shape = tuple(jnp.shape(key))
    if shape == one:
        return jax.random.split(key, num_tasks)
    if shape == (num_tasks, *one):
        return key
    raise ValueError(f"key must be one jax.random.key (shape {one}, split into the {num_tasks} tasks) or "
                     f"{num_tasks} per-task keys (shape {(num_tasks, *one)}), got shape {shape}")


def meta_grad(algorithm: MetaLearner, meta_params: PyTree, tasks: TaskBatch, key, *, model_state: PyTree = None,
              step=0, task_parallel="vmap", compute_dtype=None, has_aux: bool = False):
    r"""The meta-gradient of a batch of tasks: the mean task objective and its gradient.

    .. math:: \nabla_\theta \frac{1}{B}\sum_{\tau=1}^{B} \mathcal{L}_\tau(\theta)

    with :math:`\mathcal{L}_\tau` = ``algorithm.task_loss`` of task
    :math:`\tau`: what :func:`make_meta_step` differentiates, without sampling
    or an optimizer update, for a training loop of one's own. Pure and
    jittable (``jax.jit(functools.partial(meta_grad, algorithm))``).

    Args:
      algorithm: a jmeta algorithm (:class:`~jmeta.algorithms.MetaLearner`).
      meta_params: its meta-parameters (``algorithm.init(params)``).
      tasks: a :class:`~jmeta.tasks.TaskBatch` with a leading task axis of
        size ``B`` (``support_x``: ``[B, n_support, *x_shape]``). One task
        goes in as ``jax.tree.map(lambda a: a[None], task)``.
      key: one ``jax.random.key``, split into ``B`` per-task keys inside, or
        ``B`` per-task keys (``jax.random.split(key, B)``).
      model_state: the model's non-differentiated state (``model.state``:
        BatchNorm statistics); ``None`` for a stateless ``apply``.
      step: the meta-step, passed to ``task_loss`` (MAML++'s annealing).
      task_parallel: ``"vmap"``, ``"map"``, a chunk size or ``"auto"``
        (:func:`batched_loss_and_grad`); every choice gives the same result.
      compute_dtype: ``None`` or e.g. ``jnp.bfloat16`` (mixed precision).
      has_aux: also return ``{"metrics": mean metrics over tasks,
        "model_state": the new model state}``.

    Returns:
      ``(objective, grads)``, or ``(objective, grads, aux)`` with
      ``has_aux``; ``grads`` has the structure of ``meta_params``.

    Raises:
      TypeError: if ``tasks`` is not a :class:`~jmeta.tasks.TaskBatch` or ``key`` not a key.
      ValueError: if ``tasks`` has no task axis, or ``key`` is neither one
        key nor ``B`` keys.

    Example:
      >>> maml = jmeta.MAML(model.apply, inner_lr=0.01)
      >>> meta_params = maml.init(model.params)
      >>> tasks = jmeta.tasks.Sinusoid().sample(jax.random.key(0), 25)
      >>> loss, grads = jmeta.meta_grad(maml, meta_params, tasks, jax.random.key(1), model_state=model.state)
    """
    if not isinstance(tasks, TaskBatch):
        raise TypeError(f"tasks must be a jmeta.tasks.TaskBatch with a leading task axis, got "
                        f"{type(tasks).__name__}")
    try:
        b = tasks.num_tasks
    except ValueError as e:
        raise ValueError(f"meta_grad needs a batch of tasks (a leading task axis on all four arrays; one task goes "
                         f"in as jax.tree.map(lambda a: a[None], task)): {e}") from None
    keys = task_keys(key, b)
    obj, grads, metrics, new_state = batched_loss_and_grad(
        algorithm, meta_params, model_state, tasks, keys, step, task_parallel=task_parallel,
        compute_dtype=compute_dtype)
    if has_aux:
        return obj, grads, {"metrics": metrics, "model_state": new_state}
    return obj, grads


# -- devices -----------------------------------------------------------------------------------------------------
def _cross_device_state(state, axes):
    """Mean of float model-state leaves across devices; max of the rest (counters, and PRNG keys, e.g. an
    ``nnx.Dropout`` stream, through their key data)."""
    def reduce(s):
        if jnp.issubdtype(s.dtype, jnp.floating):
            return jax.lax.pmean(s, axes)
        if jax.dtypes.issubdtype(s.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(jax.lax.pmax(jax.random.key_data(s), axes),
                                            impl=jax.random.key_impl(s))
        return jax.lax.pmax(s, axes)

    return jax.tree.map(reduce, state)


def sharded_loss_and_grad(algorithm: MetaLearner, meta_params, model_state, tasks: TaskBatch, keys, step, *, mesh,
                          task_axis=None, task_parallel="vmap", compute_dtype=None,
                          memory_budget: int | None = None):
    r""":func:`batched_loss_and_grad` with the task axis split over a device mesh.

    Each device runs :func:`batched_loss_and_grad` on its ``B / D`` tasks
    (with ``task_parallel`` chunking of its local tasks) and the results are
    averaged across devices with ``pmean``, so

    .. math:: g = \frac1D\sum_{d=1}^{D} \frac{D}{B}\sum_{\tau\in d} \nabla\mathcal{L}_\tau
                = \frac1B\sum_\tau \nabla\mathcal{L}_\tau,

    the same meta-gradient as on one device. Meta-parameters and model state
    are replicated (``PartitionSpec()``); tasks and keys are sharded on
    ``task_axis`` (default: all mesh axes).
    """
    P = jax.sharding.PartitionSpec
    axes = distributed.task_axes(mesh, task_axis)
    d = math.prod(mesh.shape[a] for a in axes)
    b = tasks.support_x.shape[0]
    if b % d:
        raise ValueError(f"the meta-batch of {b} tasks must be divisible by the {d} devices of the task axes {axes}")
    tasks, keys = distributed.shard_task_axis((tasks, keys), mesh, axes)

    def local(mp, ms, t, k, s):
        # Mark the replicated inputs device-varying first. Otherwise JAX's
        # shard_map autodiff sums (psum) the gradient of any replicated value
        # used with device-varying data across devices, which would mix the
        # inner-loop gradients of tasks on different devices.
        mp, ms, s = jax.lax.pcast((mp, ms, s), axes, to="varying")
        obj, g, metrics, new_state = batched_loss_and_grad(
            algorithm, mp, ms, t, k, s, task_parallel=task_parallel, compute_dtype=compute_dtype,
            memory_budget=memory_budget)
        obj, g, metrics = jax.lax.pmean((obj, g, metrics), axes)
        return obj, g, metrics, _cross_device_state(new_state, axes)

    f = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(axes), P(axes), P()), out_specs=P())
    return f(meta_params, model_state, tasks, keys, jnp.asarray(step))


# -- the step ------------------------------------------------------------------------------------------------------
def make_meta_step(
    algorithm: MetaLearner,
    sample_fn: Callable[..., TaskBatch],
    meta_optimizer: optax.GradientTransformation,
    *,
    meta_batch_size: int,
    task_parallel="vmap",
    jit: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    task_axis: str | tuple[str, ...] | None = None,
    compute_dtype=None,
    memory_budget: int | None = None,
):
    """Builds ``step(state, key, data=None) -> (state, metrics)``.

    Args:
      algorithm: any jmeta algorithm (see :mod:`jmeta.algorithms.base`).
      sample_fn: ``sample_fn(key, num_tasks, data)`` returning a
        :class:`~jmeta.tasks.TaskBatch` (e.g. ``Sinusoid(...).sample`` or
        ``EpisodeSampler(...).sample``); ``data`` (e.g. a device-resident uint8
        dataset, ``None`` for data-free families) is passed through from
        ``step``'s argument so it is not baked into the program as a constant.
      meta_optimizer: any optax transformation.
      meta_batch_size: tasks per meta-step, ``>= 1``.
      task_parallel: ``"vmap"``, ``"map"``, a chunk size or ``"auto"``
        (module docstring). With a ``mesh`` it applies to each device's
        ``meta_batch_size / D`` tasks.
      jit: return the jitted step (default) or the plain function.
      mesh: a :class:`jax.sharding.Mesh` to split the task axis over (e.g.
        :func:`jmeta.train.distributed.task_mesh`); ``None``: one device.
        The meta-batch is sampled as one global array from ``key``, so on
        many hosts ``key`` must be the same everywhere (see
        :mod:`jmeta.train.distributed`); put the state (and ``data``) on the
        mesh with :func:`jmeta.train.distributed.replicate`.
      task_axis: mesh axis name(s) the tasks are split over (default: all).
      compute_dtype: ``None`` (no casting) or e.g. ``jnp.bfloat16``: mixed
        precision, float32 parameters and meta-gradient
        (:mod:`jmeta.train.precision`).
      memory_budget: bytes for ``task_parallel="auto"``
        (default :func:`default_memory_budget`).

    Returns:
      ``step``; ``metrics`` holds the mean over tasks of the algorithm's
      metrics (``loss``: post-adaptation query loss, ...), ``objective`` (the
      differentiated quantity) and ``grad_norm``.

    Raises:
      ValueError: on a bad ``meta_batch_size``, ``task_parallel``,
        ``compute_dtype``, ``memory_budget``, or a meta-batch that the mesh's
        task axes do not divide.
      TypeError: if ``meta_optimizer`` is not an optax transformation or
        ``mesh`` not a mesh.
    """
    meta_batch_size = validate.integer("meta_batch_size", meta_batch_size, min=1)
    task_parallel = _check_task_parallel(task_parallel)
    local_batch = meta_batch_size
    if mesh is not None:
        axes = distributed.task_axes(mesh, task_axis)
        d = math.prod(mesh.shape[a] for a in axes)
        if meta_batch_size % d:
            raise ValueError(f"meta_batch_size {meta_batch_size} must be divisible by the {d} devices of the "
                             f"mesh's task axes {axes}")
        local_batch = meta_batch_size // d
    elif task_axis is not None:
        raise ValueError("task_axis is only meaningful with a mesh")
    if task_parallel != "auto":
        _resolve_chunk(task_parallel, local_batch)
    dtype = canonical_compute_dtype(compute_dtype)
    memory_budget = validate.integer("memory_budget (bytes)", memory_budget, min=1, optional=True)
    if not isinstance(meta_optimizer, optax.GradientTransformation):
        raise TypeError(f"meta_optimizer must be an optax.GradientTransformation, got {type(meta_optimizer).__name__}")

    def step(state: TrainState, key, data=None):
        k = jax.random.fold_in(key, state.step)
        k_sample, k_tasks = jax.random.split(k)
        tasks = sample_tasks(sample_fn, k_sample, meta_batch_size, data)
        validate_task_batch(tasks)
        keys = jax.random.split(k_tasks, meta_batch_size)
        opts = dict(task_parallel=task_parallel, compute_dtype=dtype, memory_budget=memory_budget)
        if mesh is None:
            obj, grads, metrics, new_model_state = batched_loss_and_grad(
                algorithm, state.meta_params, state.model_state, tasks, keys, state.step, **opts)
        else:
            obj, grads, metrics, new_model_state = sharded_loss_and_grad(
                algorithm, state.meta_params, state.model_state, tasks, keys, state.step, mesh=mesh,
                task_axis=task_axis, **opts)
        updates, opt_state = meta_optimizer.update(grads, state.opt_state, state.meta_params)
        meta_params = optax.apply_updates(state.meta_params, updates)
        metrics = dict(metrics, objective=obj, grad_norm=optax.tree.norm(grads))
        return TrainState(state.step + 1, meta_params, new_model_state, opt_state), metrics

    return jax.jit(step) if jit else step


__all__ = ["DEFAULT_MEMORY_BUDGET_BYTES", "DEFAULT_MEMORY_FRACTION", "TASK_PARALLEL", "ChunkChoice", "TrainState",
           "batched_loss_and_grad", "choose_chunk_size", "compiled_memory_bytes", "default_memory_budget",
           "init_train_state", "make_meta_step", "meta_grad", "sharded_loss_and_grad", "task_keys"]
