"""Meta-gradient estimators for learned optimizers.

Kept apart from the optimizer, as in google/learned_optimization's
``outer_trainers``. Every estimator has the same contract::

    worker_state = estimator.init_worker_state(theta, key)
    grad, worker_state, metrics = estimator.grad(theta, worker_state, key)

A *worker* trains one optimizee task; ``num_tasks`` workers run as a batch
(``vmap``). Each call to ``grad`` advances every worker by one *truncation*
of ``truncation_length`` optimizee steps (a ``lax.scan``), continuing from the
carried optimizee parameters and optimizer state. A worker whose step count
reached ``horizon`` is reset at the start of the call (new task, new
parameters, fresh optimizer state).

The per-worker meta-loss of a truncation is, with
:math:`\\theta_{t+1} = \\theta_t + u_t(\\phi)` and losses evaluated after each
update (paper Eq. 2 with :math:`w_t = 1`),

.. math::
    \\mathcal L(\\phi) = \\operatorname{agg}_{t=1..L} f(\\theta_t; \\xi_t),

where ``agg`` is ``"mean"``, ``"sum"`` (the paper) or ``"mean_log"`` (mean of
:math:`\\log f`, scale-free across tasks). The estimators:

* :class:`TruncatedBPTT`: exact gradient of the truncation's meta-loss by
  backpropagation through the unroll (optionally without second derivatives:
  ``second_order=False`` puts ``stop_gradient`` on the optimizee gradients
  fed to the optimizer, as the paper does). Biased with respect to the full
  horizon when ``truncation_length < horizon``; exact when they are equal.
* :class:`ES`: antithetic evolution strategies on the truncation,
  :math:`\\hat g = \\frac{1}{N}\\sum_i \\epsilon_i
  \\frac{\\mathcal L(\\phi+\\sigma\\epsilon_i) - \\mathcal L(\\phi-\\sigma\\epsilon_i)}{2\\sigma}`,
  an unbiased estimate of the gradient of the Gaussian-smoothed meta-loss
  :math:`\\mathbb E_\\epsilon \\mathcal L(\\phi + \\sigma\\epsilon)` of the truncation.
* :class:`PES`: persistent ES (Vicol et al., 2021): positive and negative
  particles keep their own optimizee states across truncations and the noise
  is accumulated, which removes the truncation bias of ES.

References:
  Andrychowicz et al., "Learning to learn by gradient descent by gradient
  descent", NeurIPS 2016. Salimans et al., "Evolution strategies as a scalable
  alternative to reinforcement learning", 2017. Vicol, Metz, Sohl-Dickstein,
  "Unbiased gradient estimation in unrolled computation graphs with persistent
  evolution strategies", ICML 2021. Metz et al., learned_optimization (2022).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jmeta import validate
from jmeta._struct import frozen_dataclass, hparam
from jmeta.ops import draws

Array = Any
PyTree = Any

__all__ = [
    "UnrollState",
    "PESWorkerState",
    "TruncatedBPTT",
    "ES",
    "PES",
    "META_LOSSES",
]

META_LOSSES = ("mean", "sum", "mean_log")


class UnrollState(NamedTuple):
    """Where one worker (or, with a leading axis, a batch of workers) stands.

    Attributes:
      task: the optimizee task (a pytree, see :mod:`.optimizees`).
      params: the optimizee parameters.
      opt_state: the learned optimizer's state.
      step: optimizee steps taken since the last reset (int32 scalar).
    """

    task: PyTree
    params: PyTree
    opt_state: PyTree
    step: Array


class PESWorkerState(NamedTuple):
    """Worker state of :class:`PES`.

    Attributes:
      pos: state of the positively perturbed particle.
      neg: state of the negatively perturbed particle.
      accum: accumulated standard-normal noise since the last reset (like theta).
    """

    pos: UnrollState
    neg: UnrollState
    accum: PyTree


def _aggregate(losses: Array, meta_loss: str) -> Array:
    if meta_loss == "mean":
        return jnp.mean(losses)
    if meta_loss == "sum":
        return jnp.sum(losses)
    return jnp.mean(jnp.log(jnp.maximum(losses, 1e-30)))


@frozen_dataclass
class _Unroller:
    """Shared configuration and unroll logic of the estimators.

    Attributes:
      learned_opt: an object with ``init(key)`` and ``opt_fn(theta)`` (e.g.
        :class:`~jmeta.learned_optim.LSTMOptimizer`).
      task_family: an object with ``sample(key) -> task`` (see :mod:`.optimizees`).
      num_tasks: workers (optimizee tasks) per estimate, run under ``vmap``.
      horizon: optimizee steps before a worker is reset (e.g. 100).
      truncation_length: optimizee steps per estimate (e.g. 20); must divide
        ``horizon``.
      meta_loss: ``"mean"``, ``"sum"`` or ``"mean_log"`` over the truncation.
      stagger: start the workers at different multiples of
        ``truncation_length`` (so their resets do not all coincide).
    """

    learned_opt: Any
    task_family: Any
    num_tasks: int = hparam(8, validate.integer, min=1)
    horizon: int = hparam(100, validate.integer, min=1)
    truncation_length: int = hparam(20, validate.integer, min=1)
    meta_loss: str = "mean"
    stagger: bool = True

    def __post_init__(self):
        if self.horizon % self.truncation_length:
            raise ValueError(
                f"truncation_length ({self.truncation_length}) must divide horizon ({self.horizon})"
            )
        if self.meta_loss not in META_LOSSES:
            raise ValueError(f"meta_loss must be one of {META_LOSSES}, got {self.meta_loss!r}")
        for name, method in (("learned_opt", "opt_fn"), ("task_family", "sample")):
            if not hasattr(getattr(self, name), method):
                raise ValueError(f"{name} must have a {method!r} method, got {getattr(self, name)!r}")

    # -- single worker -------------------------------------------------------

    def _fresh(self, theta: PyTree, key: Array) -> UnrollState:
        k_task, k_init = jax.random.split(key)
        task = self.task_family.sample(k_task)
        params = task.init(k_init)
        opt_state = self.learned_opt.opt_fn(theta).init(params)
        return UnrollState(task, params, opt_state, jnp.zeros((), jnp.int32))

    def _maybe_reset(self, theta: PyTree, state: UnrollState, key: Array) -> UnrollState:
        fresh = self._fresh(theta, key)
        done = state.step >= self.horizon
        return jax.tree.map(lambda f, s: jnp.where(done, f, s), fresh, state)

    def _unroll(
        self, theta: PyTree, state: UnrollState, key: Array, second_order: bool = False
    ) -> tuple[Array, UnrollState, Array]:
        """One truncation of one worker.

        Returns:
          ``(meta_loss, new_state, losses[truncation_length])``; ``losses[t]``
          is the optimizee loss after update ``t``.
        """
        # One split for everything (each random call is a threefry block that
        # costs compile time on XLA:CPU).
        keys = jax.random.split(key, self.truncation_length + 2)
        state = self._maybe_reset(theta, state, keys[0])
        opt = self.learned_opt.opt_fn(theta)
        task = state.task
        keys = keys[1:]
        _, g0 = jax.value_and_grad(task.loss)(state.params, keys[0])

        def body(carry, k):
            params, opt_state, g = carry
            if not second_order:
                g = jax.lax.stop_gradient(g)
            updates, opt_state = opt.update(g, opt_state, params)
            params = optax.apply_updates(params, updates)
            loss, g = jax.value_and_grad(task.loss)(params, k)
            return (params, opt_state, g), loss

        (params, opt_state, _), losses = jax.lax.scan(
            body, (state.params, state.opt_state, g0), keys[1:]
        )
        new_state = UnrollState(task, params, opt_state, state.step + self.truncation_length)
        return _aggregate(losses, self.meta_loss), new_state, losses

    # -- batch of workers ----------------------------------------------------

    def _init_unroll_states(self, theta: PyTree, key: Array) -> UnrollState:
        k_fresh, k_stagger = jax.random.split(key)
        states = jax.vmap(self._fresh, in_axes=(None, 0))(theta, jax.random.split(k_fresh, self.num_tasks))
        if self.stagger:
            n_trunc = self.horizon // self.truncation_length
            step = self.truncation_length * jax.random.randint(k_stagger, (self.num_tasks,), 0, n_trunc)
            states = states._replace(step=step.astype(jnp.int32))
        return states

    def _batched_unroll(self, theta, states, keys, *, theta_axis=None, second_order=False):
        """``vmap`` of :meth:`_unroll` over workers; ``keys`` has one key per worker."""
        fn = lambda th, s, k: self._unroll(th, s, k, second_order)  # noqa: E731
        return jax.vmap(fn, in_axes=(theta_axis, 0, 0))(theta, states, keys)

    def _sample_noise(self, theta: PyTree, key: Array) -> PyTree:
        """Standard-normal noise shaped like ``theta`` with a leading worker axis (one draw)."""
        leaves, treedef = jax.tree.flatten(theta)
        sizes = [int(jnp.size(x)) for x in leaves]
        dtype = jnp.result_type(*leaves)
        flat = draws.normal(key, (self.num_tasks, sum(sizes)), dtype)  # flat draw: a cheaper compile
        out, start = [], 0
        for x, n in zip(leaves, sizes):
            out.append(flat[:, start : start + n].reshape((self.num_tasks,) + jnp.shape(x)).astype(jnp.result_type(x)))
            start += n
        return treedef.unflatten(out)

    def _keys(self, key: Array) -> tuple[Array, Array]:
        """``(noise_key, per-worker unroll keys)`` from one split."""
        keys = jax.random.split(key, self.num_tasks + 1)
        return keys[0], keys[1:]


def _metrics(losses: Array, meta_losses: Array, states: UnrollState, horizon: int) -> dict:
    return {
        "meta_loss": jnp.mean(meta_losses),
        "loss_last": jnp.mean(losses[:, -1]),
        "loss_median_last": jnp.median(losses[:, -1]),
        "frac_finished": jnp.mean((states.step >= horizon).astype(jnp.float32)),
    }


@frozen_dataclass
class TruncatedBPTT(_Unroller):
    """Truncated backpropagation through time.

    Gradient of the mean (over ``num_tasks`` workers) truncation meta-loss,
    by reverse-mode autodiff through the ``lax.scan`` unroll. The optimizee
    state entering a truncation is treated as a constant (truncation).

    Attributes:
      second_order: if False (default, as in the paper), the optimizee
        gradients fed to the learned optimizer are ``stop_gradient``-ed, which
        drops the second derivatives of the optimizee loss.
      (others: see the base fields ``learned_opt``, ``task_family``,
      ``num_tasks``, ``horizon``, ``truncation_length``, ``meta_loss``,
      ``stagger``.)

    Example:
      >>> est = TruncatedBPTT(LSTMOptimizer(), QuadraticFamily(), num_tasks=16)
      >>> ws = est.init_worker_state(theta, key)
      >>> g, ws, metrics = est.grad(theta, ws, key2)
    """

    second_order: bool = False

    def init_worker_state(self, theta: PyTree, key: Array) -> UnrollState:
        """Fresh (optionally staggered) workers, with a leading ``num_tasks`` axis."""
        return self._init_unroll_states(theta, key)

    def loss(self, theta: PyTree, worker_state: UnrollState, key: Array):
        """Mean truncation meta-loss; returns ``(loss, (new_worker_state, metrics))``."""
        keys = jax.random.split(key, self.num_tasks)
        meta, states, losses = self._batched_unroll(theta, worker_state, keys, second_order=self.second_order)
        states = jax.lax.stop_gradient(states)
        return jnp.mean(meta), (states, _metrics(losses, meta, states, self.horizon))

    def grad(self, theta: PyTree, worker_state: UnrollState, key: Array):
        """Returns ``(grad_theta, new_worker_state, metrics)``."""
        (_, (states, metrics)), g = jax.value_and_grad(self.loss, has_aux=True)(theta, worker_state, key)
        return g, states, metrics


@frozen_dataclass
class ES(_Unroller):
    """Antithetic evolution strategies over one truncation.

    Each worker draws its own :math:`\\epsilon_i \\sim \\mathcal N(0, I)` (shaped
    like theta) and unrolls its truncation twice, with
    :math:`\\phi \\pm \\sigma\\epsilon_i`, using the same data (common random
    numbers). The estimate is

    .. math::
        \\hat g = \\frac1N \\sum_i \\epsilon_i
        \\frac{\\mathcal L_i(\\phi+\\sigma\\epsilon_i) - \\mathcal L_i(\\phi-\\sigma\\epsilon_i)}{2\\sigma},

    unbiased for :math:`\\nabla_\\phi \\mathbb E_\\epsilon \\mathcal L(\\phi + \\sigma\\epsilon)`
    of the truncation. The worker state carried to the next truncation is the
    positive particle's (an :math:`O(\\sigma)` approximation, as truncated ES
    does in learned_optimization). Needs no backpropagation.

    Attributes:
      std: the perturbation scale :math:`\\sigma`.
    """

    std: float = hparam(0.01, validate.number, min=0, min_open=True)

    def init_worker_state(self, theta: PyTree, key: Array) -> UnrollState:
        """Fresh (optionally staggered) workers, with a leading ``num_tasks`` axis."""
        return self._init_unroll_states(theta, key)

    def grad(self, theta: PyTree, worker_state: UnrollState, key: Array):
        """Returns ``(grad_theta, new_worker_state, metrics)``."""
        k_noise, k_unroll = self._keys(key)
        eps = self._sample_noise(theta, k_noise)
        pos_theta = jax.tree.map(lambda t, e: t + self.std * e, theta, eps)
        neg_theta = jax.tree.map(lambda t, e: t - self.std * e, theta, eps)
        pos, pos_states, pos_losses = self._batched_unroll(pos_theta, worker_state, k_unroll, theta_axis=0)
        neg, _, _ = self._batched_unroll(neg_theta, worker_state, k_unroll, theta_axis=0)
        coeff = (pos - neg) / (2 * self.std)
        g = jax.tree.map(lambda e: jnp.tensordot(coeff.astype(e.dtype), e, axes=1) / self.num_tasks, eps)
        metrics = _metrics(pos_losses, 0.5 * (pos + neg), pos_states, self.horizon)
        return g, pos_states, metrics


@frozen_dataclass
class PES(_Unroller):
    """Antithetic persistent evolution strategies (Vicol et al., 2021).

    Positive and negative particles carry their own optimizee states across
    truncations; the noise :math:`\\xi_i = \\sum_{\\tau \\le t} \\epsilon_{i,\\tau}`
    accumulated since the last reset weights the loss difference:

    .. math::
        \\hat g = \\frac1N \\sum_i \\xi_i
        \\frac{\\mathcal L_i^+ - \\mathcal L_i^-}{2\\sigma}.

    Unbiased for the gradient of the smoothed *full-horizon* meta-loss. On
    the first truncation after a reset it equals :class:`ES`.

    Attributes:
      std: the perturbation scale :math:`\\sigma`.
    """

    std: float = hparam(0.01, validate.number, min=0, min_open=True)

    def init_worker_state(self, theta: PyTree, key: Array) -> PESWorkerState:
        """Both particles start from the same fresh workers; zero accumulated noise."""
        states = self._init_unroll_states(theta, key)
        accum = jax.tree.map(lambda t: jnp.zeros((self.num_tasks,) + jnp.shape(t), jnp.result_type(t)), theta)
        return PESWorkerState(states, states, accum)

    def grad(self, theta: PyTree, worker_state: PESWorkerState, key: Array):
        """Returns ``(grad_theta, new_worker_state, metrics)``."""
        k_noise, k_unroll = self._keys(key)
        eps = self._sample_noise(theta, k_noise)
        done = worker_state.pos.step >= self.horizon  # [num_tasks]; resets happen inside the unroll

        def new_accum(a, e):
            mask = done.reshape(done.shape + (1,) * (a.ndim - 1))
            return jnp.where(mask, 0.0, a) + e

        accum = jax.tree.map(new_accum, worker_state.accum, eps)
        pos_theta = jax.tree.map(lambda t, e: t + self.std * e, theta, eps)
        neg_theta = jax.tree.map(lambda t, e: t - self.std * e, theta, eps)
        pos, pos_states, pos_losses = self._batched_unroll(pos_theta, worker_state.pos, k_unroll, theta_axis=0)
        neg, neg_states, _ = self._batched_unroll(neg_theta, worker_state.neg, k_unroll, theta_axis=0)
        coeff = (pos - neg) / (2 * self.std)
        g = jax.tree.map(lambda a: jnp.tensordot(coeff.astype(a.dtype), a, axes=1) / self.num_tasks, accum)
        metrics = _metrics(pos_losses, 0.5 * (pos + neg), pos_states, self.horizon)
        return g, PESWorkerState(pos_states, neg_states, accum), metrics
