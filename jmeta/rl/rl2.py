r"""RL^2 (Duan et al. 2016): a recurrent policy that learns to explore and exploit a new task within a trial.

A *trial* is ``num_episodes`` episodes of one task; the GRU policy's hidden state is carried across all of
them and reset only at the trial start, so what the policy learned about the task in episode ``i`` shapes
its behaviour in episode ``i + 1`` without any gradient step. At every step the policy reads the RL^2 input

    ``x_t = [obs_t, one_hot(a_{t-1}), r_{t-1}, d_t]``

with the previous action and reward (zeros at the trial start, carried across episode boundaries) and the
flag ``d_t = 1`` on the first step of every episode (the released environments' "previous termination flag",
which is 1 at the trial start and after every episode end). The outer ("slow") learner is PPO-clip
(:mod:`jmeta.rl.ppo`) on the whole trial as one sequence: GAE runs across episode boundaries (the trial is
the RL^2 episode, bootstrapped with 0 after its last step) and minibatches are whole trials.

Everything of one iteration (sampling ``meta_batch_size`` tasks, the trial rollouts as a ``lax.scan`` over
episodes of a ``lax.scan`` over the horizon, ``vmap``-ed over tasks, GAE, ``epochs x num_minibatches`` PPO
steps) is one jitted function that compiles once (:meth:`RL2.make_step`).

RL^2 is a :class:`jmeta.rl.MetaRLAlgorithm` (``jmeta.rl.ALGORITHMS["RL2"]``): :meth:`RL2.meta_step` takes the
iteration's key as an argument (:meth:`RL2.update` / :meth:`RL2.make_step` draw it from the state instead), and
``meta_step(..., mesh=...)`` (or :func:`jmeta.rl.make_rl_meta_step`) splits the trials over a device mesh.

Environments whose ``step`` sets ``done`` are masked: the rest of that episode earns no reward, does not
advance the hidden state, is skipped by GAE and weighs zero in the loss.

Reference: Duan, Schulman, Chen, Bartlett, Sutskever, Abbeel, "RL^2: Fast Reinforcement Learning via Slow
Reinforcement Learning", 2016.

Example:
  >>> env = jmeta.rl.envs.BernoulliBandit(num_arms=5)
  >>> policy = gru_policy(rl2_input_size(env), env.action_size, hidden_size=32, key=jax.random.key(0))
  >>> rl2 = RL2(env, policy, num_episodes=10, meta_batch_size=128)
  >>> state = rl2.init(jax.random.key(1))
  >>> step = rl2.make_step()
  >>> for _ in range(200):
  ...     state, metrics = step(state)
  >>> report = rl2.evaluate(state.params, jax.random.key(2), num_tasks=1000)
  >>> report["summary"]["return in episode 10"]
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jmeta import validate
from jmeta._struct import hparam, static_dataclass
from jmeta.rl.base import CompiledMetaStep, check_task_mesh, draw_tasks, shard_tasks
from jmeta.rl.envs.base import check_env, task_axis_size
from jmeta.rl.ppo import PPOConfig, normalize_advantages, ppo_loss, ppo_update
from jmeta.rl.recurrent import RecurrentPolicy
from jmeta.rl.returns import gae
from jmeta.rl.rollout import check_tasks

PyTree = Any

__all__ = ["RL2", "RL2State", "Trial", "CompiledStep", "rl2_input", "rl2_input_size", "rollout_trial",
           "trial_gae"]


def rl2_input_size(env) -> int:
    """Width of the RL^2 input: ``obs_size + action_size + 2`` (previous reward and the episode-start flag)."""
    return int(env.obs_size) + int(env.action_size) + 2


def rl2_input(obs: jax.Array, prev_action: jax.Array, prev_reward: jax.Array, first: jax.Array,
              num_actions: int) -> jax.Array:
    """``[obs, one_hot(prev_action), prev_reward, first]`` as float32; ``prev_action = -1`` gives a zero one-hot
    (the trial start). A continuous (floating) ``prev_action [num_actions]`` is read as it is (zeros at the
    trial start)."""
    prev_action = jnp.asarray(prev_action)
    a = (prev_action.astype(jnp.float32).reshape(num_actions) if jnp.issubdtype(prev_action.dtype, jnp.floating)
         else jax.nn.one_hot(prev_action, num_actions, dtype=jnp.float32))
    return jnp.concatenate([jnp.asarray(obs, jnp.float32).reshape(-1), a,
                            jnp.asarray(prev_reward, jnp.float32).reshape(1),
                            jnp.asarray(first, jnp.float32).reshape(1)])


class Trial(NamedTuple):
    """One trial (``[E, T]`` leading axes: episodes x horizon; a batch of trials adds a leading axis).

    Attributes:
      inputs: the RL^2 inputs the policy read ``[E, T, input_size]``.
      actions: the sampled actions (int32; continuous policies: float ``[..., num_actions]``).
      rewards: the rewards (0 where masked).
      log_probs: log-probabilities of the actions under the behaviour policy.
      values: the value head's predictions.
      mask: True on the steps before the episode's ``done`` (all True for fixed-horizon environments).
    """

    inputs: jax.Array
    actions: jax.Array
    rewards: jax.Array
    log_probs: jax.Array
    values: jax.Array
    mask: jax.Array


def rollout_trial(env, policy: RecurrentPolicy, params: PyTree, task: PyTree, key: jax.Array,
                  num_episodes: int) -> Trial:
    """One trial of ``num_episodes`` episodes of one ``task``, hidden state carried across episodes.

    A ``lax.scan`` over episodes (each starts with ``env.reset`` on its own key) of a ``lax.scan`` over the
    ``env.horizon`` steps; actions are sampled from the policy's distribution (``policy.sample``). Pure: the
    same ``key`` gives the same trial. ``vmap`` over ``(task, key)`` for a batch of trials.
    """
    num_actions = int(env.action_size)

    def episode(carry, k):
        h, prev_a, prev_r = carry
        k_reset, k_steps = jax.random.split(k)
        env_state, obs = env.reset(k_reset, task)

        def step(c, k_t):
            h, env_state, obs, prev_a, prev_r, alive, t = c
            x = rl2_input(obs, prev_a, prev_r, t == 0, num_actions)
            h_new, logits, value = policy.step(params, h, x)
            a = policy.sample(k_t, logits)
            env_state, obs, r, done = env.step(env_state, a, task)
            r = jnp.where(alive, jnp.asarray(r, jnp.float32), 0.0)
            out = (x, a, r, policy.log_prob(logits, a), value, alive)
            h = jnp.where(alive, h_new, h)
            prev_a = jnp.where(alive, a, prev_a)
            prev_r = jnp.where(alive, r, prev_r)
            return (h, env_state, obs, prev_a, prev_r, alive & ~done, t + 1), out

        c0 = (h, env_state, obs, prev_a, prev_r, jnp.ones((), jnp.bool_), jnp.zeros((), jnp.int32))
        (h, _, _, prev_a, prev_r, _, _), out = jax.lax.scan(step, c0, jax.random.split(k_steps, env.horizon))
        return (h, prev_a, prev_r), out

    carry0 = (policy.initial_hidden(), policy.initial_action(), jnp.zeros((), jnp.float32))
    _, out = jax.lax.scan(episode, carry0, jax.random.split(key, num_episodes))
    return Trial(*out)


def trial_gae(rewards: jax.Array, values: jax.Array, *, discount: float, gae_lambda: float,
              mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    r"""Generalised advantage estimation over one sequence ``[L]`` that ends (bootstraps 0) after its last step.

    :math:`\delta_t = r_t + \gamma V_{t+1} - V_t`, :math:`A_t = \delta_t + \gamma\lambda A_{t+1}`; masked steps
    (``mask`` False) are skipped: the result on the valid steps equals GAE on the sequence with the masked
    steps removed, and a masked step has advantage 0 (return = value; it weighs nothing in the PPO loss).
    This is :func:`jmeta.rl.returns.gae` on the trial as one sequence.

    Returns:
      ``(advantages [L], returns [L])`` with ``returns = advantages + values``.
    """
    adv = gae(rewards, values, mask, discount, gae_lambda)
    return adv, adv + values


class RL2State(NamedTuple):
    """Training state: policy parameters, optimizer state, the key of the next iteration, the iteration."""

    params: PyTree
    opt_state: PyTree
    key: jax.Array
    iteration: jax.Array


#: A jitted ``step(state) -> (state, metrics)`` that counts its traces (``num_traces``): the shared
#: :class:`jmeta.rl.CompiledMetaStep`.
CompiledStep = CompiledMetaStep


@static_dataclass
class RL2:
    """RL^2 with a recurrent (categorical or Gaussian) policy trained by PPO-clip (module docstring).

    Attributes:
      env: an environment on the :mod:`jmeta.rl.envs` contract, discrete for :func:`~jmeta.rl.gru_policy`,
        continuous for :func:`~jmeta.rl.recurrent.gaussian_gru_policy`.
      policy: a :class:`~jmeta.rl.recurrent.RecurrentPolicy` with ``input_size == rl2_input_size(env)`` and
        ``num_actions == env.action_size``.
      num_episodes: episodes per trial (the paper's ``n``).
      meta_batch_size: trials (one task each) per iteration.
      discount: :math:`\\gamma` across the whole trial.
      gae_lambda: GAE :math:`\\lambda`.
      ppo: the PPO-clip hyperparameters; ``ppo.num_minibatches`` must divide ``meta_batch_size``.
    """

    env: Any
    policy: RecurrentPolicy
    num_episodes: int = hparam(10, validate.integer, min=1)
    meta_batch_size: int = hparam(64, validate.integer, min=1)
    discount: float = hparam(0.99, validate.number, min=0, max=1)
    gae_lambda: float = hparam(0.95, validate.number, min=0, max=1)
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)

    def __post_init__(self):
        discrete = getattr(self.policy, "discrete", True)
        env = check_env(self.env, discrete=discrete,
                        user=f"RL2 (a {'categorical' if discrete else 'Gaussian'} GRU policy)")
        if not isinstance(self.policy, RecurrentPolicy):
            raise TypeError(f"policy must be a jmeta.rl.RecurrentPolicy (see gru_policy); got "
                            f"{type(self.policy).__name__}")
        if self.policy.num_actions != env.action_size:
            raise ValueError(f"policy.num_actions ({self.policy.num_actions}) must equal the environment's "
                             f"action_size ({env.action_size})")
        if self.policy.input_size != rl2_input_size(env):
            raise ValueError(f"policy.input_size ({self.policy.input_size}) must equal rl2_input_size(env) = "
                             f"obs_size + action_size + 2 = {rl2_input_size(env)}")
        if not isinstance(self.ppo, PPOConfig):
            raise TypeError(f"ppo must be a jmeta.rl.PPOConfig; got {validate.describe(self.ppo)}")
        if self.meta_batch_size % self.ppo.num_minibatches:
            raise ValueError(f"ppo.num_minibatches ({self.ppo.num_minibatches}) must divide meta_batch_size "
                             f"({self.meta_batch_size})")

    # -- rollouts -------------------------------------------------------------------------------------------
    def sample_task(self, meta_params: PyTree, task: PyTree, key: jax.Array) -> Trial:
        """One trial of one ``task`` (no task axis) with the policy parameters ``meta_params``:
        :func:`rollout_trial` (a :class:`Trial` with ``[E, T]`` axes)."""
        return rollout_trial(self.env, self.policy, meta_params, task, key, self.num_episodes)

    def sample(self, meta_params: PyTree, key: jax.Array, *, mesh: jax.sharding.Mesh | None = None,
               task_axis: str | tuple[str, ...] | None = None) -> tuple[Trial, PyTree]:
        """``(trials, tasks)``: ``meta_batch_size`` tasks and their trials (``[n, E, T]``), drawn with
        :func:`jmeta.rl.draw_tasks`; with a ``mesh`` the task axis is split over its ``task_axis``."""
        axes = check_task_mesh(mesh, task_axis, self.meta_batch_size)
        tasks, keys = shard_tasks(draw_tasks(self.env, key, self.meta_batch_size), mesh, axes)
        trials = jax.vmap(self.sample_task, in_axes=(None, 0, 0))(meta_params, tasks, keys)
        return shard_tasks(trials, mesh, axes), tasks

    def check_tasks(self, tasks: PyTree) -> int:
        """The number of tasks in ``tasks``, or a ``ValueError`` if its structure/shapes are not the env's."""
        return check_tasks(self.env, tasks)

    def rollouts(self, params: PyTree, tasks: PyTree, key: jax.Array) -> Trial:
        """One trial per task of the batch ``tasks`` (leading axis ``n``): a :class:`Trial` with ``[n, E, T]``."""
        n = task_axis_size(tasks, "tasks")
        return jax.vmap(lambda t, k: rollout_trial(self.env, self.policy, params, t, k, self.num_episodes))(
            tasks, jax.random.split(key, n))

    # -- training -------------------------------------------------------------------------------------------
    def init(self, key: jax.Array | None = None, params: PyTree | None = None) -> RL2State:
        """The initial state (the policy's parameters unless ``params`` is given).

        ``key`` seeds the state's key, from which :meth:`update` (the keyless step of :meth:`make_step`) draws
        each iteration's randomness (default ``jax.random.key(0)``); :meth:`meta_step` takes its key per call.
        """
        key = jax.random.key(0) if key is None else key
        params = self.policy.params if params is None else params
        return RL2State(params=params, opt_state=self.ppo.optimizer().init(params), key=key,
                        iteration=jnp.zeros((), jnp.int32))

    def _loss(self, params, mb):
        logits, values = jax.vmap(lambda x, m: self.policy.unroll(params, x, mask=m))(mb["inputs"], mb["mask"])
        log_probs = self.policy.log_prob(logits, mb["actions"])
        adv = mb["advantages"]
        if self.ppo.normalize_advantages:
            adv = normalize_advantages(adv, mb["mask"])
        return ppo_loss(log_probs, mb["log_probs"], adv, values, mb["returns"], self.policy.entropy(logits),
                        clip_eps=self.ppo.clip_eps, value_coef=self.ppo.value_coef,
                        entropy_coef=self.ppo.entropy_coef, mask=mb["mask"])

    def update(self, state: RL2State) -> tuple[RL2State, dict]:
        """One iteration (pure; :meth:`make_step` jits it): sample tasks, roll out one trial each, GAE, PPO.

        The randomness comes from ``state.key`` (the returned state holds the next key)."""
        key, k_tasks, k_roll, k_ppo = jax.random.split(state.key, 4)
        tasks = self.env.sample_tasks(k_tasks, self.meta_batch_size)
        trials = self.rollouts(state.params, tasks, k_roll)
        return self._learn(state._replace(key=key), trials, k_ppo)

    def meta_step(self, state: RL2State, key: jax.Array, *, mesh: jax.sharding.Mesh | None = None,
                  task_axis: str | tuple[str, ...] | None = None) -> tuple[RL2State, dict]:
        """One iteration from ``key`` (the shared :class:`jmeta.rl.MetaRLAlgorithm` step; ``state.key`` is
        left as it is): :meth:`sample` (split over ``mesh`` if given), GAE, PPO. Pure; jit it (or use
        :func:`jmeta.rl.make_rl_meta_step`)."""
        k_sample, k_ppo = jax.random.split(key)
        trials, _ = self.sample(state.params, k_sample, mesh=mesh, task_axis=task_axis)
        return self._learn(state, trials, k_ppo)

    def _learn(self, state: RL2State, trials: Trial, k_ppo: jax.Array) -> tuple[RL2State, dict]:
        """GAE and the PPO epochs on a batch of trials; ``state.key`` is passed through."""
        n, E, T = trials.rewards.shape
        flat = jax.tree.map(lambda a: a.reshape((n, E * T) + a.shape[3:]), trials)
        adv, ret = jax.vmap(lambda r, v, m: trial_gae(r, v, discount=self.discount, gae_lambda=self.gae_lambda,
                                                      mask=m))(flat.rewards, flat.values, flat.mask)
        batch = {"inputs": flat.inputs, "actions": flat.actions, "log_probs": flat.log_probs,
                 "advantages": adv, "returns": ret, "mask": flat.mask}
        params, opt_state, metrics = ppo_update(self._loss, state.params, state.opt_state, self.ppo.optimizer(),
                                                batch, k_ppo, epochs=self.ppo.epochs,
                                                num_minibatches=self.ppo.num_minibatches)
        episode_returns = trials.rewards.sum(axis=2)  # [n, E]
        metrics = {**metrics, "trial_return": episode_returns.sum(axis=1).mean(),
                   "episode_return": episode_returns.mean(axis=0)}
        return RL2State(params, opt_state, state.key, state.iteration + 1), metrics

    def make_step(self) -> CompiledStep:
        """:meth:`update` jitted once (a :class:`CompiledStep`; ``num_traces`` counts its compilations)."""
        return CompiledStep(self.update)

    # -- evaluation -----------------------------------------------------------------------------------------
    @functools.cached_property
    def _episode_returns(self):
        """Jitted ``(params, tasks, keys) -> [n, num_episodes]`` returns (compiled once per batch shape)."""
        return jax.jit(lambda p, t, k: jax.vmap(
            lambda ti, ki: rollout_trial(self.env, self.policy, p, ti, ki, self.num_episodes).rewards.sum(-1))(t, k))

    def evaluate(self, params: PyTree, key: jax.Array, num_tasks: int = 1000, *, batch_size: int = 1000,
                 tasks: PyTree | None = None) -> dict:
        """Average return per episode of the trial over ``num_tasks`` tasks drawn with ``key`` (or ``tasks``).

        Use a key that training never saw (held-out tasks). The returns of episodes ``1 .. n`` show the
        adaptation within the trial. ``tasks``: explicit held-out tasks (a task pytree with a leading axis;
        ``num_tasks`` is then their number).

        Returns:
          ``{"returns": float64 [num_tasks, num_episodes], "per_episode": task_statistics (mean, ci95, median
          per episode), "summary": {"return in episode i": mean, "return in episode i ci95": half-width,
          "trial return": mean, "trial return ci95": half-width}}``.
        """
        from jmeta.train.evaluation import mean_ci95, task_statistics

        batch_size = validate.integer("batch_size", batch_size, min=1)
        k_tasks, k_roll = jax.random.split(key)
        if tasks is None:
            num_tasks = validate.integer("num_tasks", num_tasks, min=1)
            tasks = self.env.sample_tasks(k_tasks, num_tasks)
        else:
            num_tasks = self.check_tasks(tasks)
        keys = jax.random.split(k_roll, num_tasks)
        run = self._episode_returns
        out = []
        for lo in range(0, num_tasks, batch_size):
            sl = slice(lo, min(lo + batch_size, num_tasks))
            out.append(np.asarray(run(params, jax.tree.map(lambda a: a[sl], tasks), keys[sl])))
        returns = np.concatenate(out).astype(np.float64)
        stats = task_statistics(returns, higher_is_better=True)
        summary = {}
        for i in range(self.num_episodes):
            summary[f"return in episode {i + 1}"] = stats["mean"][i]
            summary[f"return in episode {i + 1} ci95"] = stats["ci95"][i]
        m, c = mean_ci95(returns.sum(axis=1))
        summary["trial return"], summary["trial return ci95"] = m, c
        return {"returns": returns, "per_episode": stats, "summary": summary}
