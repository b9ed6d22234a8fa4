"""MAML-RL on an environment that steps on the host (MetaWorld): host rollouts, then the jitted rest of the
meta-iteration.

An environment whose episodes cannot run inside ``jit`` (MetaWorld's MuJoCo, :mod:`jmeta.rl.envs.metaworld`)
offers ``rollout(policy, tasks, episodes=, seed=) -> dict`` of NumPy arrays ``[tasks, episodes, T, ...]``
(``obs``, ``action``, ``reward``, ``success``), the policy being called once per time step for the whole batch.
:class:`HostMAMLRL` drives such an environment with a :class:`~jmeta.rl.MAMLRL`:

1. pre-adaptation rollouts with ``theta`` (the policy jitted, all tasks x episodes of a step in one call);
2. per batch of rollouts, :meth:`MAMLRL.process` (baseline fit, advantages) vmapped over tasks, one jitted call;
   per inner step, :meth:`MAMLRL.inner_update` vmapped over tasks (jitted), then rollouts with the adapted
   parameters;
3. :meth:`MAMLRL.meta_step_from_samples` (jitted): the same outer update (TRPO or PPO) as
   :meth:`MAMLRL.meta_step`, on the stored samples.

So a meta-iteration is the one of ``meta_step`` with the rollouts taken out of the compiled program. The
baseline fits run in their own small programs, not inside the outer step. (That was first a workaround for a hang
of the compiled TRPO step with MetaWorld's 82 baseline features; the cause was jaxlib 0.10.x's batched CPU LAPACK
deadlock, which :func:`jmeta.rl.returns.fit_linear_baseline` now avoids by solving one matrix per call; see
``benchmarks/lapack_deadlock.py``. Separate programs are kept: the outer step then holds no solve at all.)

Randomness comes from the jax key only: the actions from ``fold_in(key, t)`` per step, the environment's own
seed from the key too (:func:`host_seed`), so a step is a function of ``(params, tasks, key)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jmeta import validate
from jmeta.rl.envs.metaworld import episode_success
from jmeta.rl.rollout import Trajectories

PyTree = Any

__all__ = ["HostEnvShapes", "HostMAMLRL", "host_seed"]


class HostEnvShapes:
    """The static sizes of a host environment, for :class:`~jmeta.rl.MAMLRL`'s checks (continuous actions).

    Its ``sample_tasks``/``reset``/``step`` raise: the episodes run on the host (``host_env.rollout``)."""

    discrete = False

    def __init__(self, host_env):
        self.obs_size = int(host_env.obs_size)
        self.action_size = int(host_env.action_size)
        self.horizon = int(host_env.horizon)
        self.name = type(host_env).__name__

    def _host_only(self, *_):
        raise RuntimeError(f"{self.name} steps on the host ({self.name}.rollout, jmeta.rl.host.HostMAMLRL); "
                           f"its episodes cannot run inside jit")

    sample_tasks = reset = step = _host_only


def host_seed(key: jax.Array) -> int:
    """The host environment's integer seed of a rollout, drawn from ``key`` (in ``[0, 2**31 - 1)``)."""
    return int(jax.random.randint(key, (), 0, 2 ** 31 - 1))


class HostMAMLRL:
    """Host rollouts + the jitted MAML-RL meta-iteration (module docstring).

    Args:
      algorithm: a :class:`~jmeta.rl.MAMLRL` (or ProMP) built on :class:`HostEnvShapes` of ``host_env``.
      host_env: an environment with ``obs_size``, ``action_size``, ``horizon`` and ``rollout(policy, tasks,
        episodes=, seed=)`` (:class:`jmeta.rl.envs.metaworld.MetaWorldML1`).
    """

    def __init__(self, algorithm, host_env):
        for what in ("obs_size", "action_size", "horizon"):
            a, e = getattr(algorithm.env, what), getattr(host_env, what)
            if a != e:
                raise ValueError(f"algorithm.env.{what} is {a} but host_env.{what} is {e}; build the algorithm on "
                                 f"HostEnvShapes(host_env)")
        self.algorithm, self.host_env = algorithm, host_env
        algo, policy = algorithm, algorithm.policy

        def act(params, obs, key):  # params and obs with a task axis: obs [tasks, episodes, obs_size]
            keys = jax.random.split(key, obs.shape[0] * obs.shape[1]).reshape(obs.shape[0], obs.shape[1])
            one = lambda p, o, k: jax.vmap(lambda oo, kk: policy.sample(p, oo, kk)[0])(o, k)  # noqa: E731
            return jax.vmap(one)(params, obs, keys)

        self._act = jax.jit(act)
        self._process = jax.jit(jax.vmap(algo.process))
        self._adapt = jax.jit(jax.vmap(algo.inner_update, in_axes=(None, 0, 0, 0)))  # each task from its own
        self._log_probs = jax.jit(jax.vmap(policy.log_prob))

    def rollout(self, params: PyTree, tasks: Sequence, key: jax.Array, episodes: int):
        """``episodes`` host episodes of each task with per-task policy parameters (leading task axis):
        ``(Trajectories [tasks, episodes, T], raw dict of the host environment)``."""
        n, e = len(tasks), episodes
        k_act, k_env = jax.random.split(key)

        def policy(obs, t):
            a = self._act(params, jnp.asarray(obs).reshape(n, e, -1), jax.random.fold_in(k_act, t))
            return np.asarray(a).reshape(n * e, -1)

        raw = self.host_env.rollout(policy, tasks, episodes=e, seed=host_seed(k_env))
        obs, act, rew = (jnp.asarray(raw[k]) for k in ("obs", "action", "reward"))
        traj = Trajectories(obs, act, rew, jnp.zeros(rew.shape, bool), jnp.ones_like(rew),
                            self._log_probs(params, obs, act))
        return traj, raw

    def sample(self, meta_params: PyTree, tasks: Sequence, key: jax.Array, *, num_steps: int | None = None,
               episodes: int | None = None):
        """Rollouts of ``tasks`` before and after each of ``num_steps`` inner steps (default the algorithm's).

        Returns:
          ``(samples, raws)``: ``num_steps + 1`` pairs ``(traj, proc)`` (:class:`Trajectories` sampled with
          ``theta_k`` and its :meth:`MAMLRL.process`, task axis first) and the host environment's dicts of the
          same rollouts.
        """
        algo = self.algorithm
        num_steps = algo.num_inner_steps if num_steps is None else validate.integer("num_steps", num_steps, min=0)
        episodes = algo.num_episodes if episodes is None else validate.integer("episodes", episodes, min=1)
        keys = jax.random.split(key, num_steps + 1)
        p = jax.tree.map(lambda a: jnp.broadcast_to(a, (len(tasks), *a.shape)), meta_params["policy"])
        samples, raws = [], []
        for k in range(num_steps + 1):
            traj, raw = self.rollout(p, tasks, keys[k], episodes)
            proc = self._process(traj)
            samples.append((traj, proc))
            raws.append(raw)
            if k < num_steps:
                p = self._adapt(meta_params, p, traj, proc)
        return samples, raws

    def batch(self, meta_params: PyTree, tasks: Sequence, key: jax.Array) -> dict:
        """The data of one meta-step (:meth:`step_from_batch`): ``{"samples": (pre, post)`` in
        :meth:`MAMLRL.sample`'s format, ``"success_pre", "success_post"}`` (success: the fraction of episodes with
        a success at any step, before and after adaptation, when the host environment reports ``success``)."""
        samples, raws = self.sample(meta_params, tasks, key)
        out = {"samples": (tuple(samples[:-1]), samples[-1])}
        if "success" in raws[0]:
            out["success_pre"] = jnp.float32(episode_success(raws[0]["success"]).mean())
            out["success_post"] = jnp.float32(episode_success(raws[-1]["success"]).mean())
        return out

    def step_from_batch(self, state, batch: dict):
        """The outer update of a :meth:`batch`: ``(new_state, metrics)`` as :meth:`MAMLRL.meta_step` (pure:
        :meth:`MAMLRL.meta_step_from_samples`; the caller jits it, e.g. with its NaN guard)."""
        return self.algorithm.meta_step_from_samples(state, batch["samples"])

    def evaluate(self, meta_params: PyTree, tasks: Sequence, key: jax.Array, *, num_steps: int | None = None,
                 episodes: int | None = None) -> dict:
        """Per-task success rate and mean undiscounted return after ``0..num_steps`` inner steps.

        Returns:
          ``{"success": [tasks, num_steps + 1], "return": [tasks, num_steps + 1]}`` (NumPy): the fraction of a
          task's episodes with a success at any step (MetaWorld's count; zeros when the host environment
          reports none) and their mean return, for the episodes sampled with ``theta_k``.
        """
        _, raws = self.sample(meta_params, tasks, key, num_steps=num_steps, episodes=episodes)
        succ = [episode_success(r["success"]).mean(axis=1) if "success" in r else np.zeros(len(tasks))
                for r in raws]
        rets = [np.asarray(r["reward"], np.float64).sum(-1).mean(axis=1) for r in raws]
        return {"success": np.stack(succ, axis=1), "return": np.stack(rets, axis=1)}
