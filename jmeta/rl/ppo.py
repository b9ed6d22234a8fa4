r"""PPO-clip (Schulman et al. 2017): the clipped surrogate loss on arrays, and a minibatch update loop.

The loss works on arrays of any policy (log-probabilities of the taken actions under the new and the
behaviour policy, advantages, values, returns, entropies), so recurrent, Gaussian or tabular policies share
it. With ratio :math:`\rho_t = \exp(\log\pi_\theta(a_t|h_t) - \log\pi_{old}(a_t|h_t))`,

.. math::
   L(\theta) = -\frac{1}{\sum_t m_t}\sum_t m_t
       \min\big(\rho_t A_t,\ \mathrm{clip}(\rho_t, 1-\epsilon, 1+\epsilon) A_t\big)
     + c_v \frac{1}{\sum_t m_t}\sum_t m_t (V_\theta(h_t) - \hat R_t)^2 - c_H \frac{1}{\sum_t m_t}\sum_t m_t H_t,

with an optional mask :math:`m_t` (1 for valid steps). :func:`ppo_update` runs ``epochs`` passes of
``num_minibatches`` minibatches over the leading axis of a batch (for RL^2: the trials, so each recurrent
sequence stays whole), as ``lax.scan`` loops that trace once inside a caller's ``jit``.

Reference: Schulman, Wolski, Dhariwal, Radford, Klimov, "Proximal Policy Optimization Algorithms", 2017.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jmeta import validate
from jmeta._struct import hparam, static_dataclass
from jmeta.rl.returns import normalize_advantages  # re-exported: one implementation for MAML-RL and PPO

PyTree = Any

__all__ = ["PPOConfig", "clip_surrogate", "ppo_loss", "normalize_advantages", "ppo_update"]


@static_dataclass(eq=True)
class PPOConfig:
    """PPO-clip hyperparameters (validated once).

    Attributes:
      clip_eps: the clip range :math:`\\epsilon` (> 0).
      value_coef: weight of the value loss :math:`c_v` (>= 0).
      entropy_coef: weight of the entropy bonus :math:`c_H` (>= 0).
      epochs: passes over the batch per update (>= 1).
      num_minibatches: minibatches per pass; must divide the batch's leading axis (>= 1).
      learning_rate: Adam step size (> 0).
      max_grad_norm: global gradient-norm clip, or ``None`` for none.
      normalize_advantages: standardise the advantages of each minibatch (mean 0, std 1).
    """

    clip_eps: float = hparam(0.2, validate.number, min=0, min_open=True)
    value_coef: float = hparam(0.5, validate.number, min=0)
    entropy_coef: float = hparam(0.01, validate.number, min=0)
    epochs: int = hparam(4, validate.integer, min=1)
    num_minibatches: int = hparam(4, validate.integer, min=1)
    learning_rate: float = hparam(3e-3, validate.number, min=0, min_open=True)
    max_grad_norm: float | None = hparam(1.0, validate.number, min=0, min_open=True, optional=True)
    normalize_advantages: bool = hparam(True, validate.flag)

    def optimizer(self) -> optax.GradientTransformation:
        """Adam at ``learning_rate``, after a global-norm clip when ``max_grad_norm`` is set."""
        adam = optax.adam(self.learning_rate)
        if self.max_grad_norm is None:
            return adam
        return optax.chain(optax.clip_by_global_norm(self.max_grad_norm), adam)


def _masked_mean(x, mask):
    if mask is None:
        return jnp.mean(x)
    mask = mask.astype(x.dtype)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def clip_surrogate(log_probs: jax.Array, old_log_probs: jax.Array, advantages: jax.Array, *, clip_eps: float,
                   mask: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """The clipped policy loss ``-mean(min(rho A, clip(rho, 1-eps, 1+eps) A))`` and its statistics.

    Gradients flow through ``log_probs`` only (``old_log_probs`` and ``advantages`` are constants).

    Returns:
      ``(loss, {"approx_kl", "clip_fraction"})``; ``approx_kl`` is the mean of ``old - new`` log-probs.
    """
    if jnp.shape(log_probs) != jnp.shape(old_log_probs) or jnp.shape(log_probs) != jnp.shape(advantages):
        raise ValueError(f"log_probs, old_log_probs and advantages must have one shape; got "
                         f"{jnp.shape(log_probs)}, {jnp.shape(old_log_probs)}, {jnp.shape(advantages)}")
    old_log_probs = jax.lax.stop_gradient(old_log_probs)
    advantages = jax.lax.stop_gradient(advantages)
    ratio = jnp.exp(log_probs - old_log_probs)
    surrogate = jnp.minimum(ratio * advantages, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages)
    loss = -_masked_mean(surrogate, mask)
    stats = {"approx_kl": _masked_mean(old_log_probs - log_probs, mask),
             "clip_fraction": _masked_mean((jnp.abs(ratio - 1.0) > clip_eps).astype(ratio.dtype), mask)}
    return loss, jax.tree.map(jax.lax.stop_gradient, stats)


def ppo_loss(log_probs, old_log_probs, advantages, values, returns, entropy, *, clip_eps: float,
             value_coef: float, entropy_coef: float, mask=None) -> tuple[jax.Array, dict]:
    """Clipped policy loss + ``value_coef`` x squared value error - ``entropy_coef`` x entropy (module docstring).

    Returns:
      ``(loss, aux)`` with ``aux = {"policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"}``.
    """
    pl, stats = clip_surrogate(log_probs, old_log_probs, advantages, clip_eps=clip_eps, mask=mask)
    vl = _masked_mean(jnp.square(values - jax.lax.stop_gradient(returns)), mask)
    ent = _masked_mean(entropy, mask)
    loss = pl + value_coef * vl - entropy_coef * ent
    return loss, {"policy_loss": pl, "value_loss": vl, "entropy": ent, **stats}


def ppo_update(loss_fn: Callable[[PyTree, PyTree], tuple[jax.Array, dict]], params: PyTree, opt_state: PyTree,
               optimizer: optax.GradientTransformation, batch: PyTree, key: jax.Array, *, epochs: int,
               num_minibatches: int) -> tuple[PyTree, PyTree, dict]:
    """``epochs`` shuffled passes of ``num_minibatches`` gradient steps of ``loss_fn`` over ``batch``.

    Args:
      loss_fn: ``loss_fn(params, minibatch) -> (loss, aux dict of scalars)``.
      params, opt_state: the parameters and ``optimizer`` state.
      optimizer: an optax transformation.
      batch: a pytree whose leaves share a leading axis ``N`` (divisible by ``num_minibatches``); each pass
        permutes it with a fresh key and splits it into ``num_minibatches`` minibatches of ``N / M`` rows.
      key: a ``jax.random.key`` for the permutations.
      epochs, num_minibatches: the loop sizes (static).

    Returns:
      ``(params, opt_state, metrics)``; ``metrics`` averages ``loss`` and the ``aux`` entries over every
      minibatch step.
    """
    epochs = validate.integer("epochs", epochs, min=1)
    num_minibatches = validate.integer("num_minibatches", num_minibatches, min=1)
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("batch is an empty pytree")
    n = leaves[0].shape[0]
    if any(leaf.shape[0] != n for leaf in leaves):
        raise ValueError(f"batch leaves disagree on the leading axis: {[leaf.shape[0] for leaf in leaves]}")
    if n % num_minibatches:
        raise ValueError(f"num_minibatches must divide the batch's leading axis {n}; got {num_minibatches}")
    mb = n // num_minibatches
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def minibatch_step(carry, minibatch):
        params, opt_state = carry
        (loss, aux), grads = grad_fn(params, minibatch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state), {"loss": loss, **aux}

    def epoch(carry, k):
        perm = jax.random.permutation(k, n)
        shuffled = jax.tree.map(lambda a: a[perm].reshape((num_minibatches, mb) + a.shape[1:]), batch)
        return jax.lax.scan(minibatch_step, carry, shuffled)

    (params, opt_state), metrics = jax.lax.scan(epoch, (params, opt_state), jax.random.split(key, epochs))
    return params, opt_state, jax.tree.map(jnp.mean, metrics)
