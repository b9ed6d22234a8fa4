"""Random tabular MDPs of Duan et al. 2016 (RL^2), on jmeta's environment contract.

A task is one MDP over ``S`` states and ``A`` actions, drawn as in the paper (Sec. 3.2) and its released
environment:

* transition probabilities ``P(. | s, a) ~ Dirichlet(1, ..., 1)`` (flat, uniform over the simplex), drawn
  independently for every ``(s, a)``;
* mean rewards ``R(s, a) ~ N(1, 1)`` i.i.d.; the reward of a step is drawn ``r ~ N(R(s, a), 1)``;
* every episode starts in state ``0`` (the released environment's reset); episodes last ``horizon`` steps
  (the paper: 10) and ``done`` is never set (fixed horizon).

The observation is the one-hot current state (``obs_size = S``). The reward and transition draws need
randomness inside the pure ``step``: the episode state carries its own key, split at every step.

Reference: Duan, Schulman, Chen, Bartlett, Sutskever, Abbeel, "RL^2: Fast Reinforcement Learning via Slow
Reinforcement Learning", 2016 (S=10, A=5, horizon 10, trials of n = 10 ... 100 episodes).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jmeta import validate
from jmeta._struct import frozen_dataclass, hparam
from jmeta.rl.envs.bandit import check_discrete_action, check_task_leaf

__all__ = ["RandomTabularMDP", "TabularState"]


class TabularState(NamedTuple):
    """Episode state: current state index, the key of the next draws and the step count."""

    s: jax.Array
    key: jax.Array
    t: jax.Array


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _sample_mdps(key, n, S, A):
    kp, kr = jax.random.split(key)
    # Dirichlet(1, ..., 1) = normalised i.i.d. Exponential(1) draws (exact, and cheaper than gamma).
    e = jax.random.exponential(kp, (n, S, A, S), jnp.float32)
    P = e / jnp.sum(e, axis=-1, keepdims=True)
    R = 1.0 + jax.random.normal(kr, (n, S, A), jnp.float32)
    return {"P": P, "R": R}


@frozen_dataclass
class RandomTabularMDP:
    """Random MDP with ``num_states`` states and ``num_actions`` actions (Duan et al. 2016).

    Attributes:
      num_states: ``S >= 1``.
      num_actions: ``A >= 1`` (the action size).
      horizon: steps per episode (the paper: 10).
    """

    num_states: int = hparam(10, validate.integer, min=1)
    num_actions: int = hparam(5, validate.integer, min=1)
    horizon: int = hparam(10, validate.integer, min=1)

    @property
    def obs_size(self) -> int:
        return self.num_states

    @property
    def action_size(self) -> int:
        return self.num_actions

    @property
    def discrete(self) -> bool:
        return True

    def sample_tasks(self, key: jax.Array, n: int) -> dict:
        """``{"P": [n, S, A, S] transition probabilities, "R": [n, S, A] mean rewards}`` (float32)."""
        n = validate.integer("n", n, min=1)
        return _sample_mdps(key, n, self.num_states, self.num_actions)

    def _task(self, task):
        if not isinstance(task, dict) or "P" not in task or "R" not in task:
            raise ValueError(f"RandomTabularMDP task must be a dict with keys 'P' (transitions [S, A, S]) and "
                             f"'R' (mean rewards [S, A]) of one task; got {validate.describe(task)}")
        S, A = self.num_states, self.num_actions
        return (check_task_leaf("P", task["P"], (S, A, S), "RandomTabularMDP"),
                check_task_leaf("R", task["R"], (S, A), "RandomTabularMDP"))

    def reset(self, key: jax.Array, task: dict) -> tuple[TabularState, jax.Array]:
        """Start of an episode in state 0; the state keeps ``key`` for the episode's draws."""
        self._task(task)
        s = jnp.zeros((), jnp.int32)
        return TabularState(s=s, key=key, t=jnp.zeros((), jnp.int32)), self._obs(s)

    def _obs(self, s):
        return jax.nn.one_hot(s, self.num_states, dtype=jnp.float32)

    def step(self, state: TabularState, action, task: dict):
        """Reward ``~ N(R[s, a], 1)``, next state ``~ P[s, a]``; ``done`` is never set (fixed horizon)."""
        P, R = self._task(task)
        action = check_discrete_action(action, self.num_actions)
        key, k_r, k_s = jax.random.split(state.key, 3)
        reward = R[state.s, action] + jax.random.normal(k_r, (), jnp.float32)
        s_next = jax.random.categorical(k_s, jnp.log(P[state.s, action])).astype(jnp.int32)
        return (TabularState(s=s_next, key=key, t=state.t + 1), self._obs(s_next), reward,
                jnp.zeros((), jnp.bool_))
