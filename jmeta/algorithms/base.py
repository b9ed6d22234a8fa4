"""The contract every jmeta algorithm shares.

An algorithm is a small frozen dataclass of hyperparameters (plus the pure
model ``apply`` it adapts), declared with :func:`jmeta._struct.static_dataclass`:
a pytree without leaves whose fields are static, so it can be an argument of
``jax.jit`` (equal hyperparameters share a compiled program), with its fields
checked and normalised by the constructor (also through ``dataclasses.replace``).
Its methods are pure:

* ``init(params, *, key=None) -> meta_params``: wraps the model's initial
  parameters with the algorithm's own meta-parameters (learned learning
  rates, head scales, ...). ``meta_params`` is a dict with at least
  ``"params"``.
* ``task_loss(meta_params, model_state, task, *, key=None, step=0)
  -> (objective, aux)``: the differentiable objective of one task (a
  :class:`~jmeta.tasks.TaskBatch` without task axis) and ``aux =
  {"metrics": {...}, "model_state": new_state}``. The trainer takes
  ``jax.grad`` of the mean objective over tasks; ``metrics["loss"]`` is the
  post-adaptation query loss that is logged.
* ``adapt(meta_params, model_state, support_x, support_y, *, key=None,
  num_steps=None) -> adapted``: the per-task learner (adapted parameters,
  prototypes, ridge weights, ...).
* ``predict(meta_params, adapted, model_state, x, *, num_steps=None) ->
  outputs``: ``num_steps`` is the number of steps ``adapt`` took (``None``:
  its default); algorithms whose forward pass depends on the step (MAML++'s
  per-step BatchNorm) use it, the others ignore it.
* ``evaluate(meta_params, model_state, task, *, key=None, num_steps=None)
  -> {"loss": [N+1], ...}``: query metrics after ``0..N`` adaptation
  steps (a curve of length 1 for algorithms without steps).

The trainer (:func:`jmeta.train.make_meta_step`, :func:`jmeta.train.meta_grad`),
the evaluator and the benchmarks only ever use these methods, so they treat
every algorithm alike; :class:`MetaLearner` states them as a
:class:`typing.Protocol` and those functions are annotated with it.

Every algorithm under the contract is listed in :data:`ALGORITHMS`
(``tests/algorithms/test_conformance.py`` runs each through the same checks
and fails when a class implementing the contract is missing from the list).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import jax
from jax.tree_util import keystr

from jmeta._refs import resolve_all

PyTree = Any
Array = Any


@runtime_checkable
class MetaLearner(Protocol):
    """Structural type of a jmeta algorithm (see the module docstring).

    ``task`` is one :class:`~jmeta.tasks.TaskBatch` without task axis; callers
    ``vmap`` over tasks. Keys are ``jax.random.key`` typed keys (or ``None``);
    algorithms without randomness ignore them.
    """

    def init(self, params: PyTree, *, key: Array | None = None) -> dict:
        """Meta-parameters ``{"params": params, ...}`` from the model's initial parameters."""
        ...

    def task_loss(self, meta_params: dict, model_state: PyTree, task, *, key: Array | None = None,
                  step: Array | int = 0) -> tuple[Array, dict]:
        """``(objective, {"metrics": {"loss": ..., ...}, "model_state": new_state})`` of one task."""
        ...

    def adapt(self, meta_params: dict, model_state: PyTree, support_x: Array, support_y: Array, *,
              key: Array | None = None, num_steps: int | None = None) -> Any:
        """The per-task learner fitted on one support set."""
        ...

    def predict(self, meta_params: dict, adapted: Any, model_state: PyTree, x: Array, *,
                num_steps: int | None = None) -> Array:
        """Outputs of ``x`` ``[n, ...]`` under the ``adapted`` learner."""
        ...

    def evaluate(self, meta_params: dict, model_state: PyTree, task, *, key: Array | None = None,
                 num_steps: int | None = None) -> dict:
        """``{metric: [N+1]}``: query metrics after ``0..N`` adaptation steps of one task."""
        ...


#: Every algorithm that implements :class:`MetaLearner`: ``name -> "module:Class"``, imported on use by
#: :func:`algorithm_classes` (so ``import jmeta.algorithms`` stays cheap and imports no other package). A new
#: algorithm (in any package) is added here; the conformance test then runs it through the shared checks.
ALGORITHMS: dict[str, str] = {
    "MAML": "jmeta.algorithms.maml:MAML",
    "FOMAML": "jmeta.algorithms.maml:FOMAML",
    "MetaSGD": "jmeta.algorithms.maml:MetaSGD",
    "ANIL": "jmeta.algorithms.maml:ANIL",
    "MAMLPlusPlus": "jmeta.algorithms.maml:MAMLPlusPlus",
    "Reptile": "jmeta.algorithms.reptile:Reptile",
    "ProtoNet": "jmeta.algorithms.protonet:ProtoNet",
    "R2D2": "jmeta.algorithms.r2d2:R2D2",
    "MetaOptNet": "jmeta.algorithms.metaoptnet:MetaOptNet",
    "IMAML": "jmeta.algorithms.imaml:IMAML",
    "MetaLSTM": "jmeta.learned_optim.meta_lstm:MetaLSTM",
}

#: Shared bases that implement the contract for the algorithms above (``GradientLearner`` is the MAML family's
#: configurable base, ``ClosedFormHead`` is abstract); not algorithms of their own.
ALGORITHM_BASES: dict[str, str] = {
    "GradientLearner": "jmeta.algorithms.maml:GradientLearner",
    "ClosedFormHead": "jmeta.algorithms.r2d2:ClosedFormHead",
}


def algorithm_classes() -> dict[str, type]:
    """``{name: class}`` of :data:`ALGORITHMS` (imports their modules)."""
    return resolve_all(ALGORITHMS)


def check_one_task(owner: str, task, apply: Callable, *, class_labels: bool = False) -> None:
    """Refuses a batch of tasks (a leading task axis) given to ``task_loss``, which takes one task.

    Static (array ranks only): free under ``jit``, and right under ``jax.vmap`` over tasks, where the task
    axis is gone. A batch is recognised when ``support_x`` has more than one axis beyond the examples' own
    (``apply.input_ndim``, declared by jmeta's models: see :func:`jmeta.models.bridge.declare`) or, for
    classifiers of integer class labels (``class_labels``), when the labels have more than one axis.

    Raises:
      ValueError: naming the shapes, ``jax.vmap`` and ``jmeta.train.make_meta_step``.
    """
    sx, sy = getattr(task.support_x, "shape", None), getattr(task.support_y, "shape", None)
    ndim = getattr(apply, "input_ndim", None)
    batched = ndim is not None and sx is not None and len(sx) > ndim + 1
    batched = batched or (class_labels and sy is not None and len(sy) > 1)
    if batched:
        raise ValueError(
            f"{owner}.task_loss takes one task, got a batch of tasks (a leading task axis): support_x has shape "
            f"{tuple(sx)} and support_y {tuple(sy)}, one task's are [examples, *x_shape] and [examples, ...]"
            f"{f' with {ndim}-d examples' if ndim is not None else ''}. For the mean over a batch, map it over "
            f"the task axis with jax.vmap(lambda t: algo.task_loss(meta_params, model_state, t)) or train with "
            f"jmeta.train.make_meta_step")


def param_spec(name: str, spec):
    """An ``adapt_params=`` spec in stored form (a list of prefixes becomes a tuple, so that algorithms stay
    hashable static pytrees), checked by :func:`make_param_filter`."""
    if isinstance(spec, list):
        spec = tuple(spec)
    try:
        make_param_filter(spec)
    except ValueError:
        raise ValueError(f"{name} must be None, a non-empty path prefix, a tuple of them or a callable, "
                         f"got {spec!r}") from None
    return spec


def make_param_filter(spec) -> Callable[[str], bool] | None:
    """Turns an ``adapt_params=`` spec into a predicate on parameter paths.

    ``None`` adapts everything; a string or tuple of strings adapts the
    parameters whose path (``"layers_2/kernel"``) equals one of them or
    starts with it followed by ``/``; a callable ``f(path) -> bool`` is used
    as is.
    """
    if spec is None:
        return None
    if callable(spec):
        return spec
    prefixes = (spec,) if isinstance(spec, str) else tuple(spec)
    if not prefixes or not all(isinstance(p, str) and p for p in prefixes):
        raise ValueError(f"adapt_params must be None, a non-empty path prefix, a tuple of them or a callable, got {spec!r}")

    def pred(path: str) -> bool:
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)

    return pred


def partition(params: PyTree, pred: Callable[[str], bool] | None):
    """Splits ``params`` into ``(fast, slow)``; unselected leaves become ``None``."""
    if pred is None:
        return params, None
    mask = jax.tree_util.tree_map_with_path(lambda p, _: bool(pred(keystr(p, simple=True, separator="/"))), params)
    if not any(jax.tree.leaves(mask)):
        paths = [keystr(p, simple=True, separator="/") for p, _ in jax.tree_util.tree_leaves_with_path(params)]
        raise ValueError(f"the adapt_params filter selects no parameter; parameter paths are {paths}")
    fast = jax.tree.map(lambda p, m: p if m else None, params, mask)
    slow = jax.tree.map(lambda p, m: None if m else p, params, mask)
    return fast, slow


def combine(fast: PyTree, slow: PyTree | None) -> PyTree:
    """Inverse of :func:`partition`."""
    if slow is None:
        return fast
    return jax.tree.map(lambda a, b: b if a is None else a, fast, slow, is_leaf=lambda x: x is None)
