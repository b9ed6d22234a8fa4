"""The one model contract: a pure ``apply(params, state, x, *, train)``.

Every jmeta algorithm sees a model as a :class:`Model`: a pure function

    ``apply(params, state, x, *, train) -> (out, new_state)``

plus its initial ``params`` (what the meta-learner differentiates) and
``state`` (what it does not: BatchNorm running statistics, counters). Both
are plain nested dicts of arrays. ``x`` is the batch of examples of *one*
task; algorithms ``vmap`` over tasks themselves.

Flax NNX modules are bridged once with :func:`from_nnx`; any other function
of the same signature works through :func:`from_apply`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import jax

PyTree = Any


class ApplyFn(Protocol):
    def __call__(self, params: PyTree, state: PyTree, x: Any, *, train: bool) -> tuple[Any, PyTree]:
        ...


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A pure model: ``apply`` plus initial ``params`` and ``state``.

    Attributes:
      apply: ``apply(params, state, x, *, train) -> (out, new_state)``.
      params: trainable parameters (nested dict of arrays).
      state: non-differentiated state (nested dict of arrays, possibly empty).
    """

    apply: Callable[..., tuple[Any, PyTree]]
    params: PyTree
    state: PyTree = dataclasses.field(default_factory=dict)

    def __call__(self, x, *, train: bool = False):
        """Applies the model with its own parameters (convenience)."""
        return self.apply(self.params, self.state, x, train=train)[0]


#: What a model may declare about itself on its ``apply`` function (see :func:`declare`).
DECLARED = ("input_ndim", "head")


def declare(model: Model, *, input_ndim: int | None = None, head: str | None = None) -> Model:
    """Records on ``model.apply`` what algorithms may read without seeing data, and returns ``model``.

    Args:
      model: a :class:`Model` whose ``apply`` is its own function (not shared with another model).
      input_ndim: axes of one example (1 for vectors, 3 for ``[H, W, C]`` images); ``task_loss`` refuses a
        ``support_x`` with more than ``input_ndim + 1`` axes (a batch of tasks given as one task).
      head: path prefix of the output layer's parameters (``"layers_2"``, ``"head"``): ANIL's default
        ``adapt_params="head"`` adapts these.
    """
    for name, value in (("input_ndim", input_ndim), ("head", head)):
        if value is not None:
            setattr(model.apply, name, value)
    return model


def declared(apply: Callable, name: str):
    """What ``apply``'s model declared (:func:`declare`), or ``None``."""
    return getattr(apply, name, None)


def from_apply(apply: Callable[..., Any], params: PyTree, state: PyTree | None = None, *,
               stateless: bool = False) -> Model:
    """Wraps a plain function as a :class:`Model`.

    Args:
      apply: ``apply(params, state, x, *, train) -> (out, new_state)``; with
        ``stateless=True`` instead ``apply(params, x) -> out``.
      params: initial trainable parameters.
      state: initial non-differentiated state (default: empty).
      stateless: adapt a function of ``(params, x)`` only.
    """
    if not callable(apply):
        raise TypeError(f"apply must be callable, got {type(apply).__name__}")
    if stateless:
        f = apply

        def apply(params, state, x, *, train=False):  # noqa: F811
            del train
            return f(params, x), state

    return Model(apply=apply, params=params, state={} if state is None else state)


def _pure(nnx, state):
    """A plain nested dict of arrays (``nnx.to_pure_dict`` where available)."""
    if hasattr(nnx, "to_pure_dict"):
        return nnx.to_pure_dict(state)
    return state.to_pure_dict()


def from_nnx(module) -> Model:
    """Bridges a Flax NNX module to a pure :class:`Model`, once.

    Trainable parameters are the module's ``nnx.Param`` variables; everything
    else (``nnx.BatchStat`` and other variables) is ``state``. Both are
    returned as plain nested dicts. ``train=True`` runs the module in training
    mode (BatchNorm uses batch statistics and returns updated running
    statistics); ``train=False`` in evaluation mode (``module.eval()``).

    Stochastic layers: the contract carries no random key. An ``nnx.Dropout``
    keeps its RNG stream (key and counter) in ``state``, which the algorithms
    do not thread through inner steps or split across tasks, so within one
    meta-step every task and every inner step draws the same mask (the
    counter advances once per meta-step). Algorithms that adapt in training
    mode (MAML's default ``bn_mode="batch"``) also keep dropout on at
    evaluation. Prefer deterministic modules inside adapted models.

    Example:
      >>> from flax import nnx
      >>> model = from_nnx(nnx.Linear(1, 1, rngs=nnx.Rngs(0)))
      >>> out, state = model.apply(model.params, model.state, x, train=False)
    """
    from flax import nnx

    if not isinstance(module, nnx.Module):
        raise TypeError(f"from_nnx expects a flax.nnx.Module, got {type(module).__name__}")
    module.train()
    graph_train, params_state, rest_state = nnx.split(module, nnx.Param, ...)
    module.eval()
    graph_eval, _, _ = nnx.split(module, nnx.Param, ...)
    module.train()
    p_def = jax.tree.structure(params_state)
    s_def = jax.tree.structure(rest_state)
    params = _pure(nnx, params_state)
    state = _pure(nnx, rest_state)
    p_pure_def = jax.tree.structure(params)
    s_pure_def = jax.tree.structure(state)

    def _to_state(pure, treedef, pure_def, what):
        leaves, got = jax.tree.flatten(pure)
        if got != pure_def:
            raise ValueError(f"{what} do not match the module's structure: expected {pure_def}, got {got}")
        return jax.tree.unflatten(treedef, leaves)

    def apply(params, state, x, *, train: bool):  # noqa: F811 -- a fresh function per module (see declare)
        p = _to_state(params, p_def, p_pure_def, "params")
        s = _to_state(state, s_def, s_pure_def, "state")
        m = nnx.merge(graph_train if train else graph_eval, p, s, copy=True)
        out = m(x)
        _, _, new_state = nnx.split(m, nnx.Param, ...)
        return out, _pure(nnx, new_state)

    return Model(apply=apply, params=params, state=state)
