"""Policy-gradient surrogates for the inner step of meta-RL: DiCE, LVC and REINFORCE / first order.

Each surrogate is a scalar function of the policy's log-probabilities ``log_probs [..., T]`` of sampled
actions (recomputed from the parameters being differentiated) whose gradient is a policy-gradient estimate; they
differ in their *higher* derivatives, which is what a meta-gradient through the inner step sees:

* :func:`dice_surrogate` (Foerster et al. 2018): ``sum_t box(sum_{t' <= t} log pi_t') gamma^t r_t``; every
  derivative order is an unbiased estimate of that order's derivative of the expected discounted return
  (the Hessian includes the score-function cross terms MAML-RL's original surrogate drops). With values
  ``b_t`` the baseline term ``sum_t (1 - box(log pi_t)) gamma^t b_t`` (zero value, zero expected gradient)
  reduces variance.
* :func:`lvc_surrogate` (Rothfuss et al. 2019, ProMP): ``sum_t box(log pi_t) A_t``, the low-variance curvature
  estimator (first derivative the policy gradient, Hessian without the cross terms between time steps).
* :func:`reinforce_surrogate`: ``sum_t log pi_t A_t`` (MAML-RL's original inner surrogate; its Hessian lacks the
  score-function term). The ``"first_order"`` estimator of :class:`jmeta.rl.MAMLRL` uses it with the inner
  gradient stop-gradiented.

``box`` is the magic box ``exp(x - stop_gradient(x))`` (value 1, derivative ``box * dx``). When the
behaviour log-probabilities (those stored at sampling time, :attr:`Trajectories.log_probs`) are given, the
surrogates use the true importance weight ``exp(x - x_behaviour)`` instead: equal to the magic box, with all
its derivatives, at the sampling parameters, and a genuine function of the parameters elsewhere (so finite
differences of a surrogate agree with its autodiff derivatives, and a line search away from the sampling
parameters sees importance-weighted estimates).

All surrogates are averaged over the valid steps (``sum(mask)``), as rllab's ``reduce_mean`` over time steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["magic_box", "dice_surrogate", "lvc_surrogate", "reinforce_surrogate", "ESTIMATORS"]

#: The inner estimators :class:`jmeta.rl.MAMLRL` accepts.
ESTIMATORS = ("dice", "lvc", "reinforce", "first_order")


def magic_box(x):
    """DiCE's magic box: ``exp(x - stop_gradient(x))``, 1 in value, ``box(x) * dx`` in derivative."""
    return jnp.exp(x - jax.lax.stop_gradient(x))


def _weight(log_x, behaviour):
    return magic_box(log_x) if behaviour is None else jnp.exp(log_x - behaviour)


def _count(mask):
    return jnp.maximum(jnp.sum(mask), 1.0)


def dice_surrogate(log_probs, rewards, mask, *, gamma: float = 1.0, values=None, behaviour_log_probs=None):
    """DiCE objective of discounted rewards (higher is better), ``[..., T]`` inputs, scalar output.

    Args:
      log_probs: ``log pi(a_t | s_t)`` under the parameters being differentiated.
      rewards: rewards ``r_t`` (no gradient flows into them).
      mask: valid steps.
      gamma: discount (``gamma^t`` weights the reward of step ``t``, counted from the episode start).
      values: optional baselines ``b_t`` for the zero-valued variance-reduction term.
      behaviour_log_probs: the sampling policy's log-probabilities (see the module docstring), or ``None``
        for the stop-gradient magic box.
    """
    lp = log_probs * mask
    cum = jnp.cumsum(lp, axis=-1)
    beh_cum = None if behaviour_log_probs is None else jnp.cumsum(behaviour_log_probs * mask, axis=-1)
    disc = gamma ** jnp.arange(log_probs.shape[-1], dtype=lp.dtype)
    r = jax.lax.stop_gradient(rewards) * disc * mask
    obj = jnp.sum(_weight(cum, beh_cum) * r)
    if values is not None:
        beh = None if behaviour_log_probs is None else behaviour_log_probs * mask
        b = jax.lax.stop_gradient(values) * disc * mask
        obj = obj + jnp.sum((1.0 - _weight(lp, beh)) * b)
    return obj / _count(mask)


def lvc_surrogate(log_probs, advantages, mask, *, behaviour_log_probs=None):
    """ProMP's low-variance curvature objective ``mean_t box(log pi_t) A_t`` (higher is better)."""
    beh = None if behaviour_log_probs is None else behaviour_log_probs * mask
    w = _weight(log_probs * mask, beh)
    return jnp.sum(w * jax.lax.stop_gradient(advantages) * mask) / _count(mask)


def reinforce_surrogate(log_probs, advantages, mask):
    """``mean_t log pi_t A_t`` (higher is better): the likelihood-ratio policy gradient."""
    return jnp.sum(log_probs * jax.lax.stop_gradient(advantages) * mask) / _count(mask)
