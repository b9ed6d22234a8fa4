"""2D point-robot navigation: MAML-RL's random-goal task and ProMP's sparse corner-goal variant.

:class:`Nav2D` follows ``PointEnvRandGoal`` of the MAML-RL code (cbfinn/maml_rl,
``examples/point_env_randgoal.py``) wrapped by rllab's ``normalize``, as ``maml_trpo_point.py`` runs it:

* task: a goal ``g`` uniform in ``[-0.5, 0.5]^2`` (Finn et al. 2017, Sec. 5.3);
* reset: the robot starts at the origin; the observation is its position;
* step: rllab's ``NormalizedEnv`` maps a policy action ``u`` from ``[-1, 1]`` to the box ``[-0.1, 0.1]``
  (``0.1 * u``) and clips it there; the position moves by that amount; the reward is the distance *after* the
  move, ``-||s_{t+1} - g||`` (``self._state = self._state + action`` comes first in ``step``);
* done: ``|x - g_x| < 0.01 and |y - g_y| < 0.01`` (as in the original ``step``); horizon 100.

``normalize_actions=False`` clips the raw action to ``[-0.1, 0.1]`` instead (no rescaling).

:class:`Nav2DCorner` follows ProMP's ``MetaPointEnvCorner`` (jonasrothfuss/ProMP,
``meta_policy_search/envs/point_envs/point_env_2d_corner.py``, read for this port):

* task: one of the four corners ``(+-2, +-2)``, each with probability 1/4;
* reset: the start is uniform in ``[-0.2, 0.2]^2``; actions are clipped to ``[-0.2, 0.2]`` (with
  ``normalize_actions=True``, the default here as for :class:`Nav2D`, ``u`` in ``[-1, 1]`` is first scaled
  by 0.2);
* reward ``"sparse"`` (ProMP's default): 0 while the new position is within L1 distance
  ``sparse_reward_radius`` (0.5) of the origin; beyond it, the progress towards the goal
  ``||s_t - g|| - ||s_{t+1} - g||`` when the goal is the corner nearest to ``s_{t+1}``, else 0.
  ``"dense"``: ``-||s_{t+1} - g||``; ``"dense_squared"``: ``-||s_{t+1} - g||^2``. Never done.

Both have ``obs_size=2``, ``action_size=2``, continuous actions, and tasks ``{"goal": [n, 2]}``; their fields
are keyword-only.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jmeta import validate
from jmeta.rl.envs.base import check_env

__all__ = ["Nav2D", "Nav2DCorner", "CORNERS"]

#: ProMP's four corner goals.
CORNERS = ((-2.0, -2.0), (2.0, -2.0), (-2.0, 2.0), (2.0, 2.0))


@dataclasses.dataclass(frozen=True, kw_only=True)
class _PointRobot:
    """What the point robots share: static sizes, the move of an action and their checks.

    Attributes:
      horizon: episode length.
      max_action: per-coordinate bound on the move.
      normalize_actions: rllab's ``normalize`` wrapper: the move is ``clip(max_action * u)`` for a policy
        action ``u`` (so ``u`` in ``[-1, 1]`` spans the box); ``False`` clips ``u`` itself.
    """

    horizon: int = 100
    max_action: float = 0.1
    normalize_actions: bool = True
    obs_size: int = dataclasses.field(default=2, init=False)
    action_size: int = dataclasses.field(default=2, init=False)
    discrete: bool = dataclasses.field(default=False, init=False)

    def __post_init__(self):
        validate.integer("horizon", self.horizon, min=1)
        validate.number("max_action", self.max_action, min=0, min_open=True)
        validate.flag("normalize_actions", self.normalize_actions)
        self._check_fields()
        check_env(self)

    def _check_fields(self):
        """The subclass's own field checks."""

    def _move(self, state, action):
        """The position after ``action`` from ``state`` (the action checked, scaled and clipped)."""
        if action.shape != (2,):
            raise ValueError(f"action must have shape (2,) for {type(self).__name__}; got {action.shape}")
        a = self.max_action * action if self.normalize_actions else action
        return state + jnp.clip(a, -self.max_action, self.max_action).astype(state.dtype)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Nav2D(_PointRobot):
    """MAML-RL's 2D navigation: reach a goal uniform in ``[goal_low, goal_high]^2`` from the origin.

    Attributes:
      horizon: episode length (100 in Finn et al. 2017).
      goal_low, goal_high: the goal box (``-0.5``, ``0.5``).
      max_action: per-coordinate bound on the move (0.1).
      normalize_actions: rllab's ``normalize`` wrapper: the move is ``clip(max_action * u)`` for a policy
        action ``u`` (so ``u`` in ``[-1, 1]`` spans the box); ``False`` clips ``u`` itself.
      goal_tolerance: the episode ends when both coordinates are within this of the goal (0.01); ``0``
        never ends it early.
    """

    goal_low: float = -0.5
    goal_high: float = 0.5
    goal_tolerance: float = 0.01

    def _check_fields(self):
        lo = validate.number("goal_low", self.goal_low)
        validate.number("goal_high", self.goal_high, min=lo, min_open=True)
        validate.number("goal_tolerance", self.goal_tolerance, min=0)

    def sample_tasks(self, key, n: int):
        n = validate.integer("n", n, min=1)
        goal = jax.random.uniform(key, (n, 2), minval=self.goal_low, maxval=self.goal_high)
        return {"goal": goal}

    def reset(self, key, task):
        del key
        pos = jnp.zeros((2,), jnp.result_type(task["goal"]))
        return pos, pos

    def step(self, state, action, task):
        pos = self._move(state, action)
        d = pos - task["goal"]
        reward = -jnp.sqrt(jnp.sum(d * d))
        done = jnp.all(jnp.abs(d) < self.goal_tolerance)
        return pos, pos, reward, done


@dataclasses.dataclass(frozen=True, kw_only=True)
class Nav2DCorner(_PointRobot):
    """ProMP's corner-goal point robot (sparse reward by default; see the module docstring).

    Attributes:
      horizon: episode length (100 in ProMP's point-mass runs).
      reward_type: ``"sparse"``, ``"dense"`` or ``"dense_squared"``.
      sparse_reward_radius: the L1 radius around the origin with zero sparse reward (0.5).
      max_action: per-coordinate bound on the move (0.2).
      normalize_actions: the move is ``clip(max_action * u)`` (``True``) or ``clip(u)``.
      start_radius: the start is uniform in ``[-start_radius, start_radius]^2`` (0.2).
    """

    max_action: float = 0.2
    reward_type: str = "sparse"
    sparse_reward_radius: float = 0.5
    start_radius: float = 0.2

    def _check_fields(self):
        validate.choice("reward_type", self.reward_type, ("sparse", "dense", "dense_squared"))
        validate.number("sparse_reward_radius", self.sparse_reward_radius, min=0)
        validate.number("start_radius", self.start_radius, min=0)

    def sample_tasks(self, key, n: int):
        n = validate.integer("n", n, min=1)
        idx = jax.random.randint(key, (n,), 0, len(CORNERS))
        return {"goal": jnp.asarray(CORNERS, jnp.float32)[idx]}

    def reset(self, key, task):
        dtype = jnp.result_type(task["goal"])
        pos = jax.random.uniform(key, (2,), dtype, -self.start_radius, self.start_radius)
        return pos, pos

    def step(self, state, action, task):
        goal = task["goal"]
        new = self._move(state, action)
        dist = jnp.linalg.norm(new - goal)
        if self.reward_type == "dense":
            reward = -dist
        elif self.reward_type == "dense_squared":
            reward = -dist ** 2
        else:
            corners = jnp.asarray(CORNERS, new.dtype)
            nearest = jnp.min(jnp.linalg.norm(new[None] - corners, axis=-1))
            progress = jnp.linalg.norm(state - goal) - dist
            outside = jnp.sum(jnp.abs(new)) >= self.sparse_reward_radius
            reward = jnp.where(outside & (dist <= nearest), progress, jnp.zeros_like(progress))
        return new, new, reward, jnp.zeros((), bool)
