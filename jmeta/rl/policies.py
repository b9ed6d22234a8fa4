"""Gaussian policies with a learned state-independent log-std, over any jmeta model.

:class:`GaussianPolicy` turns a :class:`jmeta.models.Model` (the mean network: ``obs -> mean action``; a Flax
NNX module through :func:`jmeta.models.from_nnx`, or any pure ``apply``) into a diagonal Gaussian policy. Its
parameters are a dict ``{"mean": <model params>, "log_std": [action_size]}`` so the whole policy is one pytree
that the inner loop adapts and the outer step updates. :func:`gaussian_mlp_policy` builds the MLP policy of
MAML-RL (Finn et al. 2017: two hidden layers of 100 ReLU units, log-std initialised at 0).

The density functions are pure and exported apart (:func:`gaussian_log_prob`, :func:`gaussian_entropy`,
:func:`gaussian_kl`) so the estimators and the outer step share one definition.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from jmeta import validate

PyTree = Any

__all__ = ["GaussianPolicy", "gaussian_mlp_policy", "gaussian_log_prob", "gaussian_entropy", "gaussian_kl"]

_LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(mean, log_std, action):
    """Log-density of a diagonal Gaussian, summed over the last (action) axis."""
    z = (action - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z * z - log_std - 0.5 * _LOG_2PI, axis=-1)


def gaussian_entropy(log_std):
    """Entropy of a diagonal Gaussian, summed over the last axis."""
    return jnp.sum(log_std + 0.5 * (_LOG_2PI + 1.0), axis=-1)


def gaussian_kl(mean0, log_std0, mean1, log_std1):
    """``KL(N(mean0, std0^2) || N(mean1, std1^2))`` of diagonal Gaussians, summed over the last axis."""
    var0, var1 = jnp.exp(2 * log_std0), jnp.exp(2 * log_std1)
    return jnp.sum(log_std1 - log_std0 + (var0 + (mean0 - mean1) ** 2) / (2 * var1) - 0.5, axis=-1)


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianPolicy:
    """A diagonal Gaussian policy: mean from a model, state-independent learned log-std.

    Attributes:
      model: a :class:`jmeta.models.Model` mapping one observation ``[obs_size]`` to ``[action_size]``.
      obs_size, action_size: the sizes it was built for (checked against the environment by the algorithms).
      init_log_std: initial log-std of every action dimension.
    """

    model: Any
    obs_size: int
    action_size: int
    init_log_std: float = 0.0
    discrete: bool = dataclasses.field(default=False, init=False)

    def __post_init__(self):
        validate.integer("obs_size", self.obs_size, min=1)
        validate.integer("action_size", self.action_size, min=1)
        validate.number("init_log_std", self.init_log_std)
        out = jax.eval_shape(lambda p, s: self.model.apply(p, s, jnp.zeros((self.obs_size,)), train=False)[0],
                             self.model.params, self.model.state)
        if out.shape != (self.action_size,):
            raise ValueError(f"the policy's model maps an observation of shape ({self.obs_size},) to {out.shape}; "
                             f"action_size={self.action_size} needs ({self.action_size},)")

    def init(self) -> dict:
        """Initial parameters ``{"mean": model.params, "log_std": full(action_size, init_log_std)}``."""
        leaf = jax.tree.leaves(self.model.params)
        dtype = leaf[0].dtype if leaf else jnp.float32
        return {"mean": self.model.params, "log_std": jnp.full((self.action_size,), self.init_log_std, dtype)}

    def distribution(self, params, obs):
        """``(mean, log_std)`` for one observation ``[obs_size]`` (or a batch ``[..., obs_size]``)."""
        if obs.ndim == 1:
            mean = self.model.apply(params["mean"], self.model.state, obs, train=False)[0]
        else:
            flat = obs.reshape(-1, obs.shape[-1])
            mean = jax.vmap(lambda o: self.model.apply(params["mean"], self.model.state, o, train=False)[0])(flat)
            mean = mean.reshape(*obs.shape[:-1], self.action_size)
        return mean, jnp.broadcast_to(params["log_std"], mean.shape)

    def sample(self, params, obs, key):
        """``(action, log_prob)``: one draw ``mean + std * eps`` for an observation ``[obs_size]``."""
        mean, log_std = self.distribution(params, obs)
        action = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)
        return action, gaussian_log_prob(mean, log_std, action)

    def log_prob(self, params, obs, actions):
        """Log-probabilities of ``actions [..., action_size]`` in ``obs [..., obs_size]``: shape ``[...]``."""
        mean, log_std = self.distribution(params, obs)
        return gaussian_log_prob(mean, log_std, actions)

    def entropy(self, params, obs):
        """Entropy of the action distribution in each observation: shape ``[...]``."""
        _, log_std = self.distribution(params, obs)
        return gaussian_entropy(log_std)

    def kl(self, params0, params1, obs):
        """``KL(pi_params0(.|obs) || pi_params1(.|obs))`` per observation: shape ``[...]``."""
        m0, s0 = self.distribution(params0, obs)
        m1, s1 = self.distribution(params1, obs)
        return gaussian_kl(m0, s0, m1, s1)


def gaussian_mlp_policy(obs_size: int, action_size: int, hidden: Sequence[int] = (100, 100), *,
                        activation: str | Callable = "relu", init_log_std: float = 0.0,
                        key: jax.Array | None = None) -> GaussianPolicy:
    """The Gaussian MLP policy of MAML-RL: an NNX :class:`jmeta.models.MLP` mean, bridged by ``from_nnx``.

    Args:
      obs_size, action_size: environment sizes.
      hidden: hidden widths (``(100, 100)`` in Finn et al. 2017, ``(64, 64)`` in ProMP).
      activation: hidden activation (``"relu"`` in MAML-RL, ``"tanh"`` in ProMP).
      init_log_std: initial log-std (0: std 1).
      key: PRNG key of the initialisation (default: ``nnx.Rngs(0)``).
    """
    from jmeta.models import mlp

    model = mlp(obs_size, tuple(hidden), action_size, activation=activation, key=key)
    return GaussianPolicy(model, obs_size, action_size, init_log_std)
