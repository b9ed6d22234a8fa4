"""Rollouts as one compiled program: ``lax.scan`` over the horizon, ``vmap`` over episodes, then over tasks.

A policy here is anything with ``sample(params, obs, key) -> (action, log_prob)`` (for example
:class:`jmeta.rl.policies.GaussianPolicy`). :func:`rollout` runs ``num_episodes`` episodes of one task;
:func:`rollout_tasks` runs them for a batch of tasks, with one set of parameters for all tasks or one per task
(the adapted parameters of MAML-RL). The result is a :class:`Trajectories` whose leaves have shape
``[episodes, T, ...]`` (one task) or ``[tasks, episodes, T, ...]``.

Done-masking: ``mask[t]`` is 1 while the episode is running at step ``t`` (no ``done`` at an earlier step) and
0 afterwards; the environment keeps being stepped after ``done`` (shapes are static) but the masked steps
count for nothing downstream (returns, baselines, estimators, metrics all weight by ``mask``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jmeta import validate
from jmeta.rl.envs.base import check_env, task_axis_size

PyTree = Any

__all__ = ["Trajectories", "rollout", "rollout_tasks", "episode_returns", "check_policy_env", "check_tasks"]


class Trajectories(NamedTuple):
    """Sampled episodes; every leaf has leading axes ``[..., episodes, T]``.

    Attributes:
      obs: observation the action was taken in, ``[..., T, obs_size]``.
      actions: ``[..., T, action_size]`` (continuous) or ``[..., T]`` int32 (discrete).
      rewards: reward of the transition, ``[..., T]``.
      dones: the environment's ``done`` flag of the transition, ``[..., T]`` bool.
      mask: 1.0 for steps inside the episode, 0.0 after an earlier ``done``, ``[..., T]``.
      log_probs: log-probability of the action under the sampling (behaviour) policy, ``[..., T]``.
    """

    obs: jax.Array
    actions: jax.Array
    rewards: jax.Array
    dones: jax.Array
    mask: jax.Array
    log_probs: jax.Array


def check_policy_env(policy, env) -> None:
    """A clear error when ``policy`` and ``env`` disagree on sizes (called by the algorithms at construction)."""
    check_env(env)
    for what in ("obs_size", "action_size"):
        p, e = getattr(policy, what, None), getattr(env, what)
        if p is not None and p != e:
            raise ValueError(f"policy.{what} is {p} but env.{what} is {e} ({type(env).__name__}); build the policy "
                             f"with {what}={e}")
    if getattr(policy, "discrete", env.discrete) != env.discrete:
        raise ValueError(f"policy is {'discrete' if policy.discrete else 'continuous'} but env "
                         f"{type(env).__name__} has discrete={env.discrete}")


def check_tasks(env, tasks: PyTree) -> int:
    """The number of tasks in a batched ``tasks`` pytree, or one ``ValueError`` when its structure or leaf shapes
    are not those of ``env.sample_tasks`` (shapes are compared with ``jax.eval_shape``; nothing is sampled)."""
    n = task_axis_size(tasks, "tasks")
    ref = jax.eval_shape(lambda k: env.sample_tasks(k, n), jax.random.key(0))
    if jax.tree.structure(ref) != jax.tree.structure(tasks):
        raise ValueError(f"tasks must have the structure of {type(env).__name__}.sample_tasks: "
                         f"{jax.tree.structure(ref)}; got {jax.tree.structure(tasks)}")
    for (path, r), t in zip(jax.tree_util.tree_leaves_with_path(ref), jax.tree.leaves(tasks)):
        if tuple(r.shape) != tuple(jnp.shape(t)):
            raise ValueError(f"tasks{jax.tree_util.keystr(path)} has shape {tuple(jnp.shape(t))}; "
                             f"{type(env).__name__} tasks have shape {tuple(r.shape)} for {n} tasks")
    return n


def rollout(env, policy, params: PyTree, task: PyTree, key: jax.Array, *, num_episodes: int) -> Trajectories:
    """``num_episodes`` episodes of one task, ``[num_episodes, env.horizon, ...]``.

    Args:
      env: a :class:`jmeta.rl.envs.Env`.
      policy: has ``sample(params, obs, key) -> (action, log_prob)``.
      params: the policy's parameters (used as given: wrap in ``jax.lax.stop_gradient`` to sample without a
        gradient path; the estimators recompute log-probabilities themselves).
      task: one task (no task axis).
      key: a typed PRNG key; the same key gives the same episodes.
      num_episodes: episodes to sample (a positive int).
    """
    num_episodes = validate.integer("num_episodes", num_episodes, min=1)
    horizon = validate.integer("env.horizon", env.horizon, min=1)

    def episode(k):
        k_reset, k_steps = jax.random.split(k)
        state, obs = env.reset(k_reset, task)

        def body(carry, k_t):
            state, obs, alive = carry
            action, logp = policy.sample(params, obs, k_t)
            state2, obs2, reward, done = env.step(state, action, task)
            out = (obs, action, reward, done, alive, logp)
            alive2 = alive * (1.0 - done.astype(alive.dtype))
            return (state2, obs2, alive2), out

        alive0 = jnp.ones((), jnp.result_type(obs.dtype, jnp.float32))
        _, (o, a, r, d, m, lp) = jax.lax.scan(body, (state, obs, alive0), jax.random.split(k_steps, horizon))
        return Trajectories(o, a, r, d, m.astype(r.dtype), lp)

    return jax.vmap(episode)(jax.random.split(key, num_episodes))


def rollout_tasks(env, policy, params: PyTree, tasks: PyTree, key: jax.Array, *, num_episodes: int,
                  params_per_task: bool = False) -> Trajectories:
    """``rollout`` vmapped over a batch of tasks: leaves ``[tasks, num_episodes, env.horizon, ...]``.

    Args:
      tasks: a task pytree with a leading task axis (``env.sample_tasks(key, n)``).
      params_per_task: ``params`` has a leading task axis (one parameter set per task) instead of being shared.
      Others as in :func:`rollout`; task ``i`` uses ``jax.random.split(key, n)[i]``.
    """
    n = check_tasks(env, tasks)
    if params_per_task:
        sizes = {getattr(a, "shape", (None,))[:1] for a in jax.tree.leaves(params)}
        if sizes != {(n,)}:
            raise ValueError(f"params_per_task=True needs params with a leading task axis of {n}; got leading "
                             f"axes {sorted(s for s in sizes)}")
    keys = jax.random.split(key, n)
    f = lambda p, t, k: rollout(env, policy, p, t, k, num_episodes=num_episodes)  # noqa: E731
    return jax.vmap(f, in_axes=(0 if params_per_task else None, 0, 0))(params, tasks, keys)


def episode_returns(traj: Trajectories) -> jax.Array:
    """Undiscounted return of each episode (masked sum of rewards over the time axis): shape ``[..., episodes]``."""
    return jnp.sum(traj.rewards * traj.mask, axis=-1)
