"""Bernoulli multi-armed bandits of Duan et al. 2016 (RL^2), on jmeta's environment contract.

A task is one bandit: ``k`` arms whose success probabilities are drawn ``p_i ~ U[0, 1]`` independently per
arm and per task. Pulling arm ``a`` pays ``1`` with probability ``p_a``, else ``0``. In the paper one
*episode* is a single pull (``horizon=1``) and a *trial* is ``n`` episodes of one task; the RL^2 policy sees
the previous action, reward and episode-end flag (:mod:`jmeta.rl.rl2` builds that input), so the
environment's own observation carries no information: it is the constant ``[1.0]`` (``obs_size=1``).

The Bernoulli draws need randomness inside the pure ``step``: the episode state carries its own key, split
at every step, so ``reset(key, task)`` fixes the whole episode.

Reference: Duan, Schulman, Chen, Bartlett, Sutskever, Abbeel, "RL^2: Fast Reinforcement Learning via Slow
Reinforcement Learning", 2016, Sec. 3.1.

Example:
  >>> env = BernoulliBandit(num_arms=5)
  >>> tasks = env.sample_tasks(jax.random.key(0), 16)          # {"p": [16, 5]}
  >>> task = jax.tree.map(lambda a: a[0], tasks)
  >>> state, obs = env.reset(jax.random.key(1), task)
  >>> state, obs, reward, done = env.step(state, jnp.int32(2), task)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jmeta import validate
from jmeta._struct import frozen_dataclass, hparam

__all__ = ["BernoulliBandit", "BanditState", "check_discrete_action", "check_task_leaf"]


class BanditState(NamedTuple):
    """Episode state: the key of the next draw and the step count."""

    key: jax.Array
    t: jax.Array


def check_discrete_action(action: Any, num_actions: int) -> jax.Array:
    """``action`` as an int32 scalar, or one clear error (static checks only: works under ``jit``).

    The value range ``[0, num_actions)`` cannot be checked on a traced value; an out-of-range index is
    clipped by JAX's gather, as everywhere in JAX.
    """
    shape = getattr(action, "shape", None)
    dtype = getattr(action, "dtype", None)
    if isinstance(action, bool) or (dtype is not None and jnp.dtype(dtype) == jnp.bool_):
        raise TypeError(f"action must be an int32 scalar in [0, {num_actions}) (a discrete environment); "
                        f"got a boolean {validate.describe(action)}")
    if isinstance(action, int):
        return jnp.asarray(action, jnp.int32)
    if shape is None or dtype is None or not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"action must be an int32 scalar in [0, {num_actions}) (a discrete environment); "
                        f"got dtype {dtype} ({type(action).__name__})")
    if tuple(shape) != ():
        raise ValueError(f"action must be a scalar (shape ()) index in [0, {num_actions}); got shape "
                         f"{tuple(shape)}. Environments act on one task: vmap over tasks/episodes")
    return jnp.asarray(action, jnp.int32)


def check_task_leaf(name: str, leaf: Any, shape: tuple[int, ...], env_name: str) -> jax.Array:
    """``leaf`` if its shape is ``shape`` (one unbatched task), else one clear ``ValueError``."""
    got = getattr(leaf, "shape", None)
    if got is None or tuple(got) != tuple(shape):
        hint = (" (a batch of tasks: index one task with jmeta.rl.envs.index_task or vmap over the task axis)"
                if got is not None and len(got) == len(shape) + 1 and tuple(got[1:]) == tuple(shape) else "")
        raise ValueError(f"{env_name} task[{name!r}] must have shape {tuple(shape)} for one task; got "
                         f"{None if got is None else tuple(got)}{hint}")
    return leaf


@frozen_dataclass
class BernoulliBandit:
    """``num_arms``-armed Bernoulli bandit with ``p ~ U[0, 1]`` per arm per task (Duan et al. 2016).

    Attributes:
      num_arms: number of arms ``k >= 1`` (the action size).
      horizon: pulls per episode (the paper: 1; a trial of ``n`` episodes is ``n`` pulls).
    """

    num_arms: int = hparam(5, validate.integer, min=1)
    horizon: int = hparam(1, validate.integer, min=1)

    @property
    def obs_size(self) -> int:
        return 1

    @property
    def action_size(self) -> int:
        return self.num_arms

    @property
    def discrete(self) -> bool:
        return True

    def sample_tasks(self, key: jax.Array, n: int) -> dict:
        """``{"p": float32 [n, num_arms]}``, each ``p ~ U[0, 1]`` independently."""
        n = validate.integer("n", n, min=1)
        return {"p": jax.random.uniform(key, (n, self.num_arms), jnp.float32)}

    def _task(self, task) -> jax.Array:
        if not isinstance(task, dict) or "p" not in task:
            raise ValueError(f"BernoulliBandit task must be a dict with key 'p' (arm probabilities of one "
                             f"task); got {validate.describe(task)}")
        return check_task_leaf("p", task["p"], (self.num_arms,), "BernoulliBandit")

    def reset(self, key: jax.Array, task: dict) -> tuple[BanditState, jax.Array]:
        """Start of an episode: the state keeps ``key`` for the episode's draws; ``obs = [1.0]``."""
        self._task(task)
        return BanditState(key=key, t=jnp.zeros((), jnp.int32)), jnp.ones((1,), jnp.float32)

    def step(self, state: BanditState, action, task: dict):
        """Pulls arm ``action``: reward ``1.0`` with probability ``task["p"][action]``; ``done`` is never set
        (fixed horizon)."""
        p = self._task(task)
        action = check_discrete_action(action, self.num_arms)
        key, sub = jax.random.split(state.key)
        reward = jax.random.bernoulli(sub, p[action]).astype(jnp.float32)
        return (BanditState(key=key, t=state.t + 1), jnp.ones((1,), jnp.float32), reward,
                jnp.zeros((), jnp.bool_))

    def expected_rewards(self, task: dict) -> jax.Array:
        """Mean reward of each arm for one task (``p`` itself): for regret and the oracle return."""
        return self._task(task)
