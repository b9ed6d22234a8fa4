r"""Vectorised hyperparameter sweeps: ``n`` meta-training runs in one compiled program.

A sweep trains ``n`` configurations at once by ``vmap`` over a leading
configuration axis of the whole training state. Three kinds of
hyperparameters can differ between configurations:

* **algorithm hyperparameters** that are plain numbers used arithmetically,
  e.g. ``inner_lr`` of :class:`~jmeta.algorithms.GradientLearner`. Algorithms
  are frozen dataclasses validated with Python floats, so the traced value
  reaches the algorithm through :func:`with_hparams`: a copy of the
  algorithm (``dataclasses.replace``) whose field is the traced
  per-configuration value, built inside the vmapped function. Structural
  fields (step counts, flags) change the program and cannot be swept this way.
* **the meta learning rate** (``"meta_lr"``): the meta-optimizer must be built
  with :func:`optax.inject_hyperparams`, which keeps ``learning_rate`` in the
  optimizer state, so each configuration carries its own value;
* **the seed** (``"seed"``): each configuration's step key is
  ``jax.random.key(seed)``, and with ``init_fn`` its initial parameters come
  from it too.

Example::

    opt = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    hp = {"inner_lr": jnp.array([0.003, 0.01, 0.03]), "meta_lr": jnp.array([1e-3, 1e-3, 3e-4]),
          "seed": jnp.array([0, 1, 2])}
    state = init_sweep(maml, model.params, model.state, opt, hp)
    step = make_sweep_step(maml, tasks.sample, opt, meta_batch_size=25)
    state, metrics = run_sweep(step, state, 1000)   # metrics["loss"]: [1000, 3]
    best = select(state, int(jnp.argmin(metrics["loss"][-1])))  # a plain TrainState

Configuration ``i`` of a sweep follows exactly the trajectory of a separate
run with ``make_meta_step`` and the same hyperparameters (tested).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jmeta import validate
from jmeta.train.step import TrainState, init_train_state, make_meta_step

if TYPE_CHECKING:
    from jmeta.algorithms.base import MetaLearner

PyTree = Any

#: Sweep axes that are not algorithm fields.
RESERVED = ("meta_lr", "seed")


class SweepState(NamedTuple):
    """The state of ``n`` runs, every leaf with a leading configuration axis ``[n]``.

    Attributes:
      train: a :class:`~jmeta.train.TrainState` batched over configurations.
      key: ``[n]`` step keys (from ``seed``).
      hparams: ``{field: [n]}`` algorithm overrides (``meta_lr`` lives in
        ``train.opt_state``, ``seed`` in ``key``).
    """

    train: TrainState
    key: jax.Array
    hparams: dict


def with_hparams(algorithm, **overrides):
    """A copy of ``algorithm`` with float hyperparameters replaced by (possibly traced) values.

    The copy is ``dataclasses.replace(algorithm, **overrides)``: built by the
    algorithm's own constructor, whose checks accept a traced value (inside
    ``vmap``) unchecked and check a concrete one as usual; the original is not
    touched.

    Raises:
      ValueError: if a name is not a field of the algorithm, or the field is
        not a float (integers and flags are structural: they change the
        compiled program and cannot vary inside one), or a concrete value is
        invalid for that field.
      TypeError: if ``algorithm`` is not a dataclass.
    """
    _check_override_names(algorithm, overrides)
    return dataclasses.replace(algorithm, **overrides)


def _check_override_names(algorithm, names) -> None:
    if not dataclasses.is_dataclass(algorithm) or isinstance(algorithm, type):
        raise TypeError(f"algorithm must be a dataclass instance, got {type(algorithm).__name__}")
    fields = {f.name for f in dataclasses.fields(algorithm)}
    for name in names:
        if name not in fields:
            raise ValueError(f"{name!r} is not a hyperparameter of {type(algorithm).__name__}; sweepable axes are "
                             f"its float fields ({sorted(_float_fields(algorithm))}) and {RESERVED}")
        if name not in _float_fields(algorithm):
            raise ValueError(f"{type(algorithm).__name__}.{name} = {getattr(algorithm, name)!r} is not a float "
                             f"hyperparameter; structural settings (step counts, flags, callables) change the "
                             f"program and need separate sweeps")


def _float_fields(algorithm) -> set[str]:
    return {f.name for f in dataclasses.fields(algorithm)
            if isinstance(getattr(algorithm, f.name), float)}


def _check_hparams(algorithm, hparams) -> tuple[dict, int]:
    if not isinstance(hparams, dict) or not hparams:
        raise ValueError(f"hparams must be a non-empty dict {{name: [n] values}}, got {hparams!r}")
    out, sizes = {}, set()
    for name, v in hparams.items():
        a = jnp.asarray(v)
        if a.ndim != 1:
            raise ValueError(f"hparams[{name!r}] must be a 1-d array of per-configuration values, got shape {a.shape}")
        sizes.add(a.shape[0])
        if name == "seed":
            if not jnp.issubdtype(a.dtype, jnp.integer):
                raise ValueError(f"hparams['seed'] must hold integers, got {a.dtype}")
        else:
            a = a.astype(jnp.float32)
        out[name] = a
    if len(sizes) != 1:
        raise ValueError(f"all hparams must have the same number of configurations, got "
                         f"{ {k: v.shape[0] for k, v in out.items()} }")
    _check_override_names(algorithm, [k for k in out if k not in RESERVED])
    return out, sizes.pop()


def _set_meta_lr(opt_state, lr):
    if not (hasattr(opt_state, "hyperparams") and "learning_rate" in opt_state.hyperparams):
        raise ValueError("sweeping 'meta_lr' needs a meta-optimizer built with optax.inject_hyperparams, e.g. "
                         "optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)")
    old = opt_state.hyperparams["learning_rate"]
    hp = dict(opt_state.hyperparams, learning_rate=jnp.asarray(lr, jnp.result_type(old)))
    return opt_state._replace(hyperparams=hp)


def init_sweep(algorithm: MetaLearner, params: PyTree, model_state: PyTree,
               meta_optimizer: optax.GradientTransformation, hparams: dict, *, key=None,
               init_fn: Callable | None = None) -> SweepState:
    """The initial :class:`SweepState` of ``n`` configurations.

    Args:
      algorithm: a jmeta algorithm (validated with its own default values).
      params, model_state: the model's initial parameters and state, shared by
        all configurations (ignored when ``init_fn`` is given).
      meta_optimizer: an optax transformation; built with
        :func:`optax.inject_hyperparams` when ``"meta_lr"`` is swept.
      hparams: ``{name: [n] values}``: algorithm float fields (``"inner_lr"``),
        ``"meta_lr"`` and/or ``"seed"`` (integers).
      key: the step key of every configuration when no ``"seed"`` is swept
        (default ``jax.random.key(0)``).
      init_fn: optional ``init_fn(key) -> (params, model_state)``: per-configuration
        initial parameters from ``fold_in(config_key, 0)``.

    Returns:
      A :class:`SweepState`. Configuration ``i``'s step key is
      ``jax.random.key(seed[i])`` (or ``key``).
    """
    hp, n = _check_hparams(algorithm, hparams)
    if "seed" in hp:
        keys = jax.vmap(jax.random.key)(hp.pop("seed"))
    else:
        keys = jnp.stack([jax.random.key(0) if key is None else key] * n)
    meta_lr = hp.pop("meta_lr", None)

    def one(k, h, lr):
        alg = with_hparams(algorithm, **h)
        if init_fn is not None:
            p, s = init_fn(jax.random.fold_in(k, 0))
        else:
            p, s = params, model_state
        try:
            st = init_train_state(alg, p, s, meta_optimizer)
        except jax.errors.ConcretizationTypeError as e:
            raise ValueError(f"{type(algorithm).__name__}.init needs concrete values of {sorted(h)} (e.g. a "
                             f"learned learning rate initialised from inner_lr); sweep them with separate "
                             f"runs") from e
        if lr is not None:
            st = st._replace(opt_state=_set_meta_lr(st.opt_state, lr))
        return st

    train = jax.vmap(one)(keys, hp, meta_lr)
    return SweepState(train, keys, hp)


def make_sweep_step(algorithm: MetaLearner, sample_fn: Callable, meta_optimizer: optax.GradientTransformation, *,
                    meta_batch_size: int, task_parallel="vmap", compute_dtype=None, jit: bool = True):
    """``step(sweep_state, data=None) -> (sweep_state, metrics)`` for all configurations at once.

    The per-configuration step is exactly :func:`~jmeta.train.make_meta_step`'s
    (same arguments), with the configuration's algorithm built by
    :func:`with_hparams`, ``vmap``-ed over the configuration axis; ``data`` is
    shared. ``metrics`` leaves have shape ``[n]``.
    """
    # validates the arguments once, eagerly
    make_meta_step(algorithm, sample_fn, meta_optimizer, meta_batch_size=meta_batch_size,
                   task_parallel=task_parallel, compute_dtype=compute_dtype, jit=False)

    def one(train, key, h, data):
        alg = with_hparams(algorithm, **h)
        inner = make_meta_step(alg, sample_fn, meta_optimizer, meta_batch_size=meta_batch_size,
                               task_parallel=task_parallel, compute_dtype=compute_dtype, jit=False)
        return inner(train, key, data)

    def step(state: SweepState, data=None):
        train, metrics = jax.vmap(one, in_axes=(0, 0, 0, None))(state.train, state.key, state.hparams, data)
        return SweepState(train, state.key, state.hparams), metrics

    return jax.jit(step) if jit else step


def run_sweep(step, state: SweepState, num_steps: int, data=None) -> tuple[SweepState, dict]:
    """Runs ``num_steps`` sweep steps; returns the state and metrics stacked as ``[num_steps, n]`` numpy arrays."""
    num_steps = validate.integer("num_steps", num_steps, min=0)
    history = []
    for _ in range(num_steps):
        state, m = step(state, data)
        history.append(m)
    history = jax.device_get(history)
    stacked = jax.tree.map(lambda *a: np.stack(a), *history) if history else {}
    return state, stacked


def select(state: SweepState, i: int) -> TrainState:
    """Configuration ``i``'s :class:`~jmeta.train.TrainState`, to continue with the ordinary trainer."""
    n = int(state.key.shape[0])
    i = validate.integer(f"i (a configuration index in [0, {n}))", i, min=-n, max=n - 1)
    return jax.tree.map(lambda a: a[i], state.train)


__all__ = ["RESERVED", "SweepState", "init_sweep", "make_sweep_step", "run_sweep", "select", "with_hparams"]
