"""MetaWorld ML1 on the host: batched episodes of the ``metaworld`` package, scored by its success rate.

Unlike the other jmeta environments this one is **not** a pure JAX function and does not run inside
``jit``: MetaWorld's Sawyer tasks are MuJoCo (C) simulations driven from Python, so episodes are stepped on
the host, all episodes of a batch in lock step (one policy call per time step for the whole batch, which is
where a jitted JAX policy goes). The arrays it returns (observations, actions, rewards, success flags) are
what the meta-RL estimators consume on the device.

The ``metaworld`` package (the optional extra ``jmeta[metaworld]``) pins ``mujoco==3.3.0``, which cannot
share an environment with ``mujoco-mjx>=3.17`` (``jmeta[mjx]``): install it in its own environment
(``scripts/test_metaworld.sh`` builds one and runs this adapter's tests).

**Protocol** (MetaWorld v3, Yu et al. 2019; ``metaworld.ML1``): ML1 has one task family (e.g.
``"reach-v3"``) with 50 train and 50 test goal positions (``ML1(env_name, seed)``: train goals from
``seed``, test goals from ``seed + 1``); the goal is not observed (``partially_observable=True``);
observations have 39 entries, actions 4 in [-1, 1]; episodes last at most ``max_path_length = 500``
steps. An episode is a success if the environment reports ``info["success"]`` at any of its steps; this is
what ``metaworld.evaluation.evaluation`` counts (it ends an evaluation episode at its first success and
scores the last step). The success rate of a task is the fraction of its episodes that succeed; the
benchmark's success rate is the mean over tasks (:func:`success_rate`).

Example::

    ml1 = MetaWorldML1("reach-v3", seed=0)
    batch = ml1.rollout(lambda obs, t: np.zeros((len(obs), 4)), ml1.test_tasks[:5], episodes=2)
    print(success_rate(batch["success"]))  # rate over the 5 tasks x 2 episodes
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jmeta import validate

__all__ = ["MetaWorldML1", "success_rate", "episode_success"]

_MISSING = ("MetaWorld is not installed: the ML1 adapter needs the optional extra, pip install "
            "'jmeta[metaworld]', in an environment without jmeta[mjx] (metaworld pins mujoco==3.3.0); "
            "`bash scripts/test_metaworld.sh` builds such a venv")


def _import_metaworld():
    try:
        import metaworld
    except ImportError as e:
        raise ImportError(f"{_MISSING} ({e})") from e
    return metaworld


def episode_success(success: np.ndarray) -> np.ndarray:
    """``[..., T]`` per-step success flags -> ``[...]`` episode successes (success at any step)."""
    return np.asarray(success, bool).any(axis=-1)


def success_rate(success: np.ndarray) -> float:
    """MetaWorld's success rate of ``[tasks, episodes, T]`` per-step flags: mean over tasks of the fraction
    of episodes with a success at any step."""
    success = np.asarray(success)
    if success.ndim != 3:
        raise ValueError(f"success must have shape [tasks, episodes, T]; got {success.shape}")
    return float(episode_success(success).mean(axis=1).mean())


class MetaWorldML1:
    """One ML1 task family (``env_name``), its train/test goals and host-side batched rollouts.

    Args:
      env_name: a MetaWorld v3 environment name (``"reach-v3"``, ``"push-v3"``, ``"pick-place-v3"``, ...).
      seed: the benchmark's seed (goal positions of the train/test tasks).
      horizon: steps per episode, 1 to 500 (MetaWorld's ``max_path_length``; the default).
      observe_goal: put the goal into the observation (MetaWorld's multi-task setting). ML1's protocol hides
        it (``False``, the default); ``True`` lets a scripted policy from ``metaworld.policies`` solve tasks.
    """

    def __init__(self, env_name: str = "reach-v3", *, seed: int = 0, horizon: int = 500, observe_goal: bool = False):
        mw = _import_metaworld()
        validate.choice("env_name", env_name, list(mw.ML1.ENV_NAMES))
        self.seed = validate.integer("seed", seed, min=0)
        self.observe_goal = validate.flag("observe_goal", observe_goal)
        self.env_name = env_name
        self._benchmark = mw.ML1(env_name, seed=self.seed)
        self._cls = self._benchmark.train_classes[env_name]
        self._pool: list[Any] = []
        probe = self._env(0)
        max_len = int(probe.max_path_length)
        self.horizon = validate.integer("horizon", horizon, min=1, max=max_len)
        self.obs_size = int(probe.observation_space.shape[0])
        self.action_size = int(probe.action_space.shape[0])

    @property
    def train_tasks(self) -> list:
        """The 50 train goals (``metaworld.Task`` objects)."""
        return list(self._benchmark.train_tasks)

    @property
    def test_tasks(self) -> list:
        """The 50 held-out goals."""
        return list(self._benchmark.test_tasks)

    @staticmethod
    def _with_goal(task):
        """The task with MetaWorld's multi-task override (``partially_observable=False``, as ``metaworld.MT1``)."""
        data = pickle.loads(task.data)
        data["partially_observable"] = False
        return task._replace(data=pickle.dumps(data))

    def _env(self, i: int):
        while len(self._pool) <= i:
            self._pool.append(self._cls())
        return self._pool[i]

    def rollout(self, policy: Callable[[np.ndarray, int], Any], tasks: Sequence, episodes: int = 1, *,
                seed: int | None = None) -> dict:
        """``episodes`` episodes of each task, stepped in lock step on the host.

        Args:
          policy: ``policy(obs [B, obs_size] float32, t) -> actions [B, action_size]`` for the whole batch
            ``B = len(tasks) * episodes`` at step ``t`` (NumPy or JAX arrays; clipped to [-1, 1] by the
            environment). Its randomness is its own (e.g. ``jax.random.fold_in(key, t)``).
          tasks: MetaWorld tasks of this family (from :attr:`train_tasks` / :attr:`test_tasks`).
          episodes: episodes per task.
          seed: MetaWorld's own seed of the batch: environment ``i`` of the batch is seeded with ``seed + i``
            (``env.seed``) before its reset; default ``seed * 1_000_003`` of the benchmark's ``seed``. The
            episodes are a function of the tasks, the policy and this seed (the environments of the pool
            are reset, not rebuilt, between batches; MuJoCo's state is reset with them).

        Returns:
          A dict of NumPy arrays with leading axes ``[tasks, episodes, horizon]``: ``obs`` (the observation
          each action was taken in, float32), ``action`` (float32), ``reward`` (float32), ``success``
          (bool, ``info["success"]`` after the action), and ``last_obs [tasks, episodes, obs_size]``.
        """
        tasks = list(tasks)
        if not tasks:
            raise ValueError("tasks must be a non-empty sequence of MetaWorld tasks")
        bad = [getattr(t, "env_name", type(t).__name__) for t in tasks if getattr(t, "env_name", None) != self.env_name]
        if bad:
            raise ValueError(f"tasks must be {self.env_name} tasks of this ML1 benchmark; got {bad[:3]}")
        episodes = validate.integer("episodes", episodes, min=1)
        n, T = len(tasks) * episodes, self.horizon
        base = self.seed * 1_000_003 if seed is None else validate.integer("seed", seed, min=0)
        envs = [self._env(i) for i in range(n)]
        obs = np.empty((n, self.obs_size), np.float32)
        for i, env in enumerate(envs):
            env.set_task(self._with_goal(tasks[i // episodes]) if self.observe_goal else tasks[i // episodes])
            env.seed(base + i)
            obs[i] = env.reset()[0]
        out = {"obs": np.empty((n, T, self.obs_size), np.float32),
               "action": np.empty((n, T, self.action_size), np.float32),
               "reward": np.empty((n, T), np.float32), "success": np.empty((n, T), bool)}
        for t in range(T):
            action = np.asarray(policy(obs.copy(), t), np.float32)
            if action.shape != (n, self.action_size):
                raise ValueError(f"policy must return actions of shape ({n}, {self.action_size}) "
                                 f"[tasks * episodes, action_size]; got {action.shape}")
            out["obs"][:, t], out["action"][:, t] = obs, action
            for i, env in enumerate(envs):
                o, r, _, _, info = env.step(action[i])
                obs[i], out["reward"][i, t], out["success"][i, t] = o, r, bool(info["success"])
        shape = (len(tasks), episodes)
        result = {k: v.reshape(*shape, *v.shape[1:]) for k, v in out.items()}
        result["last_obs"] = obs.reshape(*shape, self.obs_size)
        return result
