"""GRU policies with a value head for RL^2 (Flax NNX through the model bridge): a categorical action head for
discrete environments, a Gaussian one with a learned log-std for continuous ones.

The RL^2 policy of Duan et al. 2016: a gated recurrent unit reads one input vector per time step and keeps
its hidden state across every episode of a trial (it is reset only at the trial start); the action
distribution is a softmax over ``num_actions`` logits of the hidden state, and a linear value head gives
the state value for GAE/PPO.

The network is a Flax NNX module bridged once to a pure :class:`~jmeta.models.Model`; :class:`RecurrentPolicy`
wraps its ``apply`` as ``step(params, hidden, x) -> (hidden, logits, value)`` for *one* trial (callers
``vmap`` over trials) and :meth:`RecurrentPolicy.unroll` runs it over a sequence by ``lax.scan``.

The action distribution is the policy's: ``step`` returns a *head* (the categorical policy's logits ``[A]``;
the Gaussian policy's ``(mean [A], log_std [A])``), which :meth:`RecurrentPolicy.sample`,
:meth:`RecurrentPolicy.log_prob` and :meth:`RecurrentPolicy.entropy` read, and
:meth:`RecurrentPolicy.initial_action` is the "previous action" at the trial start, so RL^2's rollout and PPO
loss serve both (:func:`gru_policy`, :func:`gaussian_gru_policy`; RL^2 reads a discrete previous action as a
one-hot and a continuous one as it is, :func:`jmeta.rl.rl2.rl2_input`).

Example:
  >>> policy = gru_policy(input_size=8, num_actions=5, hidden_size=32, key=jax.random.key(0))
  >>> h = policy.initial_hidden()
  >>> h, logits, value = policy.step(policy.params, h, jnp.zeros(8))
  >>> logits_seq, values_seq = policy.unroll(policy.params, jnp.zeros((10, 8)))
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jmeta import validate
from jmeta.models.bridge import Model

PyTree = Any

__all__ = ["GRUPolicyNet", "GaussianGRUPolicyNet", "RecurrentPolicy", "GaussianRecurrentPolicy", "gru_policy",
           "gaussian_gru_policy", "categorical_log_prob", "categorical_entropy"]


def GRUPolicyNet(input_size: int, num_actions: int, hidden_size: int = 64, *, rngs=None):
    """The NNX module: ``module((h, x)) -> (h_new, logits, value)``.

    ``h_new = GRUCell(h, x)`` (``flax.nnx.GRUCell``), ``logits = W_pi h_new + b_pi`` (initialised with
    standard deviation 0.01, so the untrained policy is close to uniform), ``value = w_v . h_new + b_v``.
    """
    from flax import nnx

    for name, v in (("input_size", input_size), ("num_actions", num_actions), ("hidden_size", hidden_size)):
        validate.integer(name, v, min=1)
    rngs = nnx.Rngs(0) if rngs is None else rngs

    class _GRUPolicy(nnx.Module):
        def __init__(self):
            self.cell = nnx.GRUCell(input_size, hidden_size, rngs=rngs)
            self.pi = nnx.Linear(hidden_size, num_actions, kernel_init=jax.nn.initializers.normal(0.01),
                                 rngs=rngs)
            self.v = nnx.Linear(hidden_size, 1, rngs=rngs)

        def __call__(self, hx):
            h, x = hx
            h, _ = self.cell(h, x)
            return h, self.pi(h), self.v(h)[..., 0]

    return _GRUPolicy()


@dataclasses.dataclass(frozen=True, eq=False)
class RecurrentPolicy:
    """A recurrent categorical policy with a value head, as pure functions of ``params``.

    Attributes:
      model: the bridged module; ``model.apply(params, {}, (h, x), train=False) -> ((h, logits, value), {})``.
      input_size: width of one input vector ``x``.
      num_actions: number of discrete actions.
      hidden_size: width of the hidden state.
    """

    model: Model
    input_size: int
    num_actions: int
    hidden_size: int

    #: Discrete actions (integer ``[]``); :class:`GaussianRecurrentPolicy`: continuous ``[num_actions]``.
    discrete = True

    @property
    def params(self) -> PyTree:
        """The initial parameters."""
        return self.model.params

    def initial_hidden(self, dtype=jnp.float32) -> jax.Array:
        """The hidden state at the start of a trial: zeros ``[hidden_size]`` (float32 unless ``dtype``)."""
        return jnp.zeros((self.hidden_size,), dtype)

    def step(self, params: PyTree, hidden: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """One time step of one trial: ``(hidden [H], logits [A], value [])``."""
        if tuple(jnp.shape(x)) != (self.input_size,):
            raise ValueError(f"policy input x must have shape ({self.input_size},) for one time step of one "
                             f"trial; got {tuple(jnp.shape(x))}")
        if tuple(jnp.shape(hidden)) != (self.hidden_size,):
            raise ValueError(f"policy hidden state must have shape ({self.hidden_size},); got "
                             f"{tuple(jnp.shape(hidden))}")
        (h, logits, value), _ = self.model.apply(params, self.model.state, (hidden, x), train=False)
        return h, logits, value

    # -- the action distribution (the head ``step`` returns) ----------------------------------------------------
    def sample(self, key: jax.Array, head: PyTree) -> jax.Array:
        """An action drawn from the head of one step: an int32 index ``[]``."""
        return jax.random.categorical(key, head).astype(jnp.int32)

    def log_prob(self, head: PyTree, action: jax.Array) -> jax.Array:
        """``log pi(action)`` under ``head`` (leading axes broadcast: ``[..., A]`` logits, ``[...]`` actions)."""
        return categorical_log_prob(head, action)

    def entropy(self, head: PyTree) -> jax.Array:
        """The entropy of the action distribution of ``head`` (``[...]``)."""
        return categorical_entropy(head)

    def initial_action(self) -> jax.Array:
        """The "previous action" at the trial start: ``-1`` (an all-zero one-hot in RL^2's input)."""
        return jnp.full((), -1, jnp.int32)

    def unroll(self, params: PyTree, xs: jax.Array, hidden: jax.Array | None = None,
               mask: jax.Array | None = None):
        """Runs the policy over a sequence ``xs [L, input_size]`` from ``hidden`` (default: the trial start,
        zeros of ``xs``'s dtype) by ``lax.scan``; returns ``(heads, values [L])`` (the categorical policy's heads:
        logits ``[L, A]``; the Gaussian's: ``(mean [L, A], log_std [L, A])``).

        ``mask [L]`` (optional, bool): where it is False the step's outputs are computed but the hidden state
        is not advanced (the steps after an environment's ``done``, as :func:`jmeta.rl.rl2.rollout_trial`
        treats them).
        """
        h0 = self.initial_hidden(xs.dtype) if hidden is None else hidden
        mask = jnp.ones(xs.shape[:1], jnp.bool_) if mask is None else mask

        def body(h, xm):
            x, m = xm
            h_new, logits, value = self.step(params, h, x)
            return jnp.where(m, h_new, h), (logits, value)

        _, (heads, values) = jax.lax.scan(body, h0, (xs, mask))
        return heads, values


def gru_policy(input_size: int, num_actions: int, *, hidden_size: int = 64, key=None) -> RecurrentPolicy:
    """A :class:`RecurrentPolicy` over :func:`GRUPolicyNet`, bridged with :func:`jmeta.models.from_nnx`.

    Args:
      input_size: width of the per-step input (for RL^2: :func:`jmeta.rl.rl2.rl2_input_size` of the env).
      num_actions: number of discrete actions (the env's ``action_size``).
      hidden_size: GRU width (Duan et al. 2016 use 256 units).
      key: a ``jax.random.key`` for the initial parameters (default: seed 0).
    """
    from flax import nnx

    from jmeta.models.bridge import from_nnx

    rngs = nnx.Rngs(0) if key is None else nnx.Rngs(params=key)
    net = GRUPolicyNet(input_size, num_actions, hidden_size, rngs=rngs)
    return RecurrentPolicy(model=from_nnx(net), input_size=int(input_size), num_actions=int(num_actions),
                           hidden_size=int(hidden_size))


def GaussianGRUPolicyNet(input_size: int, action_size: int, hidden_size: int = 64, init_log_std: float = 0.0, *,
                         rngs=None):
    """The NNX module: ``module((h, x)) -> (h_new, (mean, log_std), value)``.

    ``h_new = GRUCell(h, x)`` (``flax.nnx.GRUCell``), ``mean = W_mu h_new + b_mu`` (initialised with standard
    deviation 0.01, so the untrained policy's mean is close to 0), ``log_std`` a learned parameter ``[A]``
    independent of the state (initially ``init_log_std``; broadcast to ``mean``'s shape),
    ``value = w_v . h_new + b_v``.
    """
    from flax import nnx

    for name, v in (("input_size", input_size), ("action_size", action_size), ("hidden_size", hidden_size)):
        validate.integer(name, v, min=1)
    init_log_std = validate.number("init_log_std", init_log_std)
    rngs = nnx.Rngs(0) if rngs is None else rngs

    class _GaussianGRUPolicy(nnx.Module):
        def __init__(self):
            self.cell = nnx.GRUCell(input_size, hidden_size, rngs=rngs)
            self.mu = nnx.Linear(hidden_size, action_size, kernel_init=jax.nn.initializers.normal(0.01),
                                 rngs=rngs)
            self.log_std = nnx.Param(jnp.full((action_size,), init_log_std, jnp.float32))
            self.v = nnx.Linear(hidden_size, 1, rngs=rngs)

        def __call__(self, hx):
            h, x = hx
            h, _ = self.cell(h, x)
            mean = self.mu(h)
            log_std = jnp.broadcast_to(self.log_std[...].astype(mean.dtype), mean.shape)
            return h, (mean, log_std), self.v(h)[..., 0]

    return _GaussianGRUPolicy()


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianRecurrentPolicy(RecurrentPolicy):
    """A recurrent Gaussian policy (continuous actions ``[num_actions]``) with a value head.

    The same interface as :class:`RecurrentPolicy`; ``step`` returns the head ``(mean [A], log_std [A])`` and
    actions are ``mean + exp(log_std) * noise``, unbounded (the environment clips them, as for
    :class:`jmeta.rl.GaussianPolicy`); RL^2 feeds the sampled action back as the next step's previous action.
    ``num_actions`` is the action dimension (the environment's ``action_size``).
    """

    discrete = False

    def sample(self, key: jax.Array, head: PyTree) -> jax.Array:
        """An action ``mean + exp(log_std) * N(0, I)`` ``[A]`` drawn from the head of one step."""
        mean, log_std = head
        return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)

    def log_prob(self, head: PyTree, action: jax.Array) -> jax.Array:
        """The diagonal Gaussian log-density of ``action [..., A]`` (``[...]``)."""
        from jmeta.rl.policies import gaussian_log_prob

        mean, log_std = head
        return gaussian_log_prob(mean, log_std, action)

    def entropy(self, head: PyTree) -> jax.Array:
        """``sum(log_std + (log(2 pi) + 1) / 2)`` (``[...]``)."""
        from jmeta.rl.policies import gaussian_entropy

        return gaussian_entropy(head[1])

    def initial_action(self) -> jax.Array:
        """The "previous action" at the trial start: zeros ``[A]`` (float32)."""
        return jnp.zeros((self.num_actions,), jnp.float32)


def gaussian_gru_policy(input_size: int, action_size: int, *, hidden_size: int = 64, init_log_std: float = 0.0,
                        key=None) -> GaussianRecurrentPolicy:
    """A :class:`GaussianRecurrentPolicy` over :func:`GaussianGRUPolicyNet`, bridged with
    :func:`jmeta.models.from_nnx`: RL^2 for continuous actions (e.g. the point robots of :mod:`jmeta.rl.envs.nav2d`).

    Args:
      input_size: width of the per-step input (for RL^2: :func:`jmeta.rl.rl2.rl2_input_size` of the env).
      action_size: the action dimension (the env's ``action_size``).
      hidden_size: GRU width.
      init_log_std: the initial log-std of every action dimension.
      key: a ``jax.random.key`` for the initial parameters (default: seed 0).
    """
    from flax import nnx

    from jmeta.models.bridge import from_nnx

    rngs = nnx.Rngs(0) if key is None else nnx.Rngs(params=key)
    net = GaussianGRUPolicyNet(input_size, action_size, hidden_size, init_log_std, rngs=rngs)
    return GaussianRecurrentPolicy(model=from_nnx(net), input_size=int(input_size), num_actions=int(action_size),
                                   hidden_size=int(hidden_size))


def categorical_log_prob(logits: jax.Array, action: jax.Array) -> jax.Array:
    """``log softmax(logits)[..., action]`` (``logits [..., A]``, integer ``action [...]``)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp, action[..., None].astype(jnp.int32), axis=-1)[..., 0]


def categorical_entropy(logits: jax.Array) -> jax.Array:
    """Entropy ``-sum p log p`` of the softmax of ``logits [..., A]``."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)
