"""MuJoCo locomotion meta-RL tasks on MJX: HalfCheetah direction / velocity and Ant direction.

The meta-RL locomotion benchmarks of MAML (Finn et al. 2017, Sec. 5.3) and ProMP (Rothfuss et al. 2019),
written as pure JAX functions over MuJoCo MJX (``mujoco-mjx``, the optional extra ``jmeta[mjx]``), so a
whole meta-batch of rollouts is one compiled ``vmap``/``lax.scan`` program (see :mod:`jmeta.rl.envs.base`).

**Models.** The MJCF files are the ones Gymnasium ships as package data,
``gymnasium/envs/mujoco/assets/half_cheetah.xml`` and ``.../ant.xml`` (the models of gym's HalfCheetah and
Ant, which ProMP's environments load too). They are located with ``importlib.util.find_spec`` and read from
disk; Gymnasium itself is never imported and nothing is downloaded. Both models pass ``mjx.put_model``
(JAX implementation). HalfCheetah: Euler, timestep 0.01 s; Ant: RK4, timestep 0.01 s.

**Dynamics, observations, resets** as gym's ``HalfCheetah``/``Ant`` (v2-v4): ``frame_skip=5`` physics steps
per action (control interval ``dt = 0.05`` s); the action is written to ``ctrl`` and MuJoCo clamps it to the
actuators' range [-1, 1]; ``reset`` adds ``U(-0.1, 0.1)`` noise to the initial ``qpos`` and ``0.1 N(0, 1)``
noise to ``qvel``. Observations: HalfCheetah ``[qpos[1:], qvel]`` (17); Ant ``[qpos[2:], qvel]`` (27, gym
``Ant-v4``'s default without contact forces, see below).

**Rewards** (per action; ``v = (x_after - x_before) / dt`` is the forward velocity of the root along x,
``a`` the policy's action before clamping):

* :class:`HalfCheetahDirection` (MAML's "half-cheetah forward/backward"): ``d * v - 0.05 ||a||^2`` with
  the direction ``d`` in {-1, +1} (each with probability 1/2). This is ProMP's
  ``HalfCheetahRandDirecEnv`` (``goal_direction * (xposafter - xposbefore) / dt - 0.5 * 0.1 * ||a||^2``)
  and MAML-RL's ``half_cheetah_env_rand_direc.py`` (``goal_direction * comvel_x - 0.1 * 0.5 * ||a||^2``,
  where MAML-RL measures the torso's centre-of-mass velocity, clips ``a`` to [-1, 1] first and draws the
  direction as ``sign(U(0, 2) - 1)``).
* :class:`HalfCheetahVelocity` (MAML's "half-cheetah goal velocity"): ``-|v - v_goal| - 0.05 ||a||^2`` with
  ``v_goal ~ U(0, 2)`` as in MAML-RL's ``half_cheetah_env_rand.py`` (``-(|comvel_x - goal_vel| +
  0.1 * 0.5 * ||a||^2)``); ProMP's ``HalfCheetahRandVelEnv`` has the same reward with ``v_goal ~ U(0, 3)``
  (``max_velocity=3.0``).
* :class:`AntDirection` (MAML's "ant forward/backward"): ``d * v - 0.5 ||a||^2 + 1`` (ProMP's
  ``AntRandDirecEnv``: forward reward, control cost 0.5 ||a||^2, survive bonus 1.0), ``done`` when the
  torso height ``qpos[2]`` leaves ProMP's [0, 1] or the state is not finite (gym's ``Ant`` and MAML-RL use
  [0.2, 1.0]: ``min_z=0.2``). ProMP takes ``x`` from ``get_body_com("torso")`` (MuJoCo's ``xpos``, which
  lags one physics step behind ``qpos``); here ``x`` is the torso's free-joint ``qpos[0]``. ProMP also subtracts a
  contact cost ``5e-4 ||clip(cfrc_ext, -1, 1)||^2`` and observes the clipped external contact forces; it is
  left out here as in gym ``Ant-v4``'s default (``use_contact_forces=False``): MJX keeps ``cfrc_ext`` only
  in a private field, and under mujoco >= 2.0 gym's ``Ant-v2`` read ``cfrc_ext`` as all zeros anyway
  (openai/gym#1541), so the term was zero in most published reruns. MAML-RL's ``ant_env_rand_direc.py``
  (rllab's own Ant model and observations) used control ``0.005 ||a / scaling||^2`` and survive bonus 0.05;
  the fields ``ctrl_cost_weight``/``survive_bonus`` approximate it on gym's model.

**Horizon**: 200 by default, the MAML paper's locomotion horizon ("H = 200" for all locomotion tasks);
ProMP's configurations use 100 (pass ``horizon=100``).

MJX imports lazily: ``import jmeta``/``jmeta.rl`` never import ``mujoco``; constructing an environment
without ``mujoco-mjx`` raises one ``ImportError`` naming the extra. Environments are hashable frozen
dataclasses (usable as static arguments); their MJX model is loaded once per process and closed over by
the traced functions as constants.

Example::

    env = HalfCheetahDirection(horizon=200)
    tasks = env.sample_tasks(jax.random.key(0), 20)
    state, obs = env.reset(jax.random.key(1), jax.tree.map(lambda t: t[0], tasks))
    state, obs, reward, done = env.step(state, jnp.zeros(env.action_size), jax.tree.map(lambda t: t[0], tasks))
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import io
import os
import warnings
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jmeta import validate

PyTree = Any

__all__ = ["HalfCheetahDirection", "HalfCheetahVelocity", "AntDirection", "model_path"]

_MISSING = ("MuJoCo MJX is not installed: the locomotion environments need the optional extra, "
            "pip install 'jmeta[mjx]' (mujoco-mjx and gymnasium)")


def model_path(name: str) -> str:
    """Path of Gymnasium's packaged MJCF file ``name`` (``"half_cheetah.xml"``, ``"ant.xml"``).

    Gymnasium is located, not imported; an ``ImportError`` naming the extra if it is not installed.
    """
    spec = importlib.util.find_spec("gymnasium")
    if spec is None or spec.origin is None:
        raise ImportError(_MISSING.replace("MuJoCo MJX is not installed", "gymnasium (which ships the MJCF "
                                                                          "models) is not installed"))
    path = os.path.join(os.path.dirname(spec.origin), "envs", "mujoco", "assets", name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"gymnasium at {os.path.dirname(spec.origin)} does not ship {name} "
                                f"(expected {path}); install gymnasium>=1.0")
    return path


def _import_mjx():
    try:
        import mujoco
        # mujoco.mjx prints a notice when the optional Warp backend is missing; jmeta uses the JAX backend.
        with contextlib.redirect_stdout(io.StringIO()):
            from mujoco import mjx
    except ImportError as e:
        raise ImportError(f"{_MISSING} ({e})") from e
    return mujoco, mjx


def _parse(mujoco, path: str):
    """``MjModel`` of an MJCF file, MuJoCo's warnings turned into Python warnings.

    MuJoCo's default handler appends warnings to ``MUJOCO_LOG.TXT`` in the working directory; gym's
    ``half_cheetah.xml`` uses ``settotalmass``, which MuJoCo 4 deprecates (still applied, the masses are
    gym's), so that notice is dropped and any other warning is re-emitted.
    """
    messages = []
    getter, setter = getattr(mujoco, "get_mju_user_warning", None), getattr(mujoco, "set_mju_user_warning", None)
    if setter is None:
        return mujoco.MjModel.from_xml_path(path)
    previous = getter()
    setter(messages.append)
    try:
        model = mujoco.MjModel.from_xml_path(path)
    finally:
        setter(previous)
    for m in messages:
        if "settotalmass" not in m:
            warnings.warn(f"MuJoCo, loading {path}: {m}", stacklevel=3)
    return model


@functools.lru_cache(maxsize=None)
def _load(name: str):
    """``(mjx_model, mjx_data0, init_qpos, init_qvel, timestep)`` of a packaged model, once per process."""
    mujoco, mjx = _import_mjx()
    mj_model = _parse(mujoco, model_path(name))
    model = mjx.put_model(mj_model, impl="jax")
    data0 = mjx.make_data(model, impl="jax")
    return (model, data0, jnp.asarray(mj_model.qpos0, jnp.float32), jnp.zeros(mj_model.nv, jnp.float32),
            float(mj_model.opt.timestep))


@functools.lru_cache(maxsize=None)
def _physics(name: str, frame_skip: int):
    """``data -> data``: ``frame_skip`` calls of ``mjx.step`` on a packaged model, jitted once per process.

    Jitted (the model closed over: MJX reads its fields as static NumPy) so that JAX traces MJX's step once and
    reuses the traced (and, under ``vmap``, the batched) program wherever a rollout calls it again: before and
    after adaptation, in the meta-step and in the evaluation. Inside another ``jit`` the call is inlined by XLA,
    so the compiled program computes the same; only the Python tracing is saved.
    """
    _, mjx = _import_mjx()
    model = _load(name)[0]
    return jax.jit(lambda data: jax.lax.fori_loop(0, frame_skip, lambda _, d: mjx.step(model, d), data))


@dataclasses.dataclass(frozen=True)
class _Locomotion:
    """Shared MJX machinery: reset with gym's noise, ``frame_skip`` physics steps per action."""

    horizon: int = 200
    frame_skip: int = 5
    reset_noise_scale: float = 0.1

    # Per-subclass constants (not dataclass fields).
    _xml: ClassVar[str]
    _obs_qpos_start: ClassVar[int]
    _task_field: ClassVar[str]
    obs_size: ClassVar[int]
    action_size: ClassVar[int]
    discrete: ClassVar[bool] = False

    def __post_init__(self):
        name = type(self).__name__
        validate.integer(f"{name}.horizon", self.horizon, min=1)
        validate.integer(f"{name}.frame_skip", self.frame_skip, min=1)
        validate.number(f"{name}.reset_noise_scale", self.reset_noise_scale, min=0)
        model, _, qpos0, qvel0, _ = _load(self._xml)
        got = (qpos0.shape[0] - self._obs_qpos_start + qvel0.shape[0], model.nu)
        if got != (self.obs_size, self.action_size):
            raise RuntimeError(f"{self._xml} has obs/action sizes {got}, {name} expects "
                               f"{(self.obs_size, self.action_size)}; an incompatible gymnasium release?")

    # -- the contract ---------------------------------------------------------------------------------------

    @property
    def dt(self) -> float:
        """Seconds per action: ``frame_skip`` physics timesteps."""
        return _load(self._xml)[4] * self.frame_skip

    def reset(self, key: jax.Array, task: PyTree) -> tuple[PyTree, jax.Array]:
        """A fresh episode with gym's initial-state noise; the state is an ``mjx.Data``.

        Only ``qpos``/``qvel`` are set: gym's ``set_state`` also runs ``mj_forward``, but every ``mjx.step``
        starts with the same forward pass and reads nothing else that it computes, so the trajectory is
        bit-identical without it (checked) and the compiled rollout is smaller. Derived fields of the state
        returned here (``xpos``, contacts, ...) are therefore not yet computed.
        """
        self._check_task(task)
        _, mjx = _import_mjx()
        model, data0, qpos0, qvel0, _ = _load(self._xml)
        kq, kv = jax.random.split(key)
        s = self.reset_noise_scale
        qpos = qpos0 + jax.random.uniform(kq, qpos0.shape, jnp.float32, -s, s)
        qvel = qvel0 + s * jax.random.normal(kv, qvel0.shape, jnp.float32)
        data = data0.replace(qpos=qpos.astype(data0.qpos.dtype), qvel=qvel.astype(data0.qvel.dtype))
        return data, self._obs(data)

    def step(self, state: PyTree, action: jax.Array, task: PyTree):
        """``frame_skip`` physics steps with ``ctrl = action``; ``(state, obs, reward, done)``."""
        self._check_task(task)
        action = jnp.asarray(action)
        if action.shape != (self.action_size,):
            raise ValueError(f"action must have shape ({self.action_size},) for {type(self).__name__}; "
                             f"got {action.shape}")
        data = _physics(self._xml, self.frame_skip)(state.replace(ctrl=action.astype(state.ctrl.dtype)))
        reward = self.reward(self.forward_velocity(state, data), action.astype(jnp.float32), task)
        return data, self._obs(data), reward.astype(jnp.float32), self._done(data)

    def sample_tasks(self, key: jax.Array, n: int) -> PyTree:
        raise NotImplementedError  # every subclass defines it

    # -- pieces ---------------------------------------------------------------------------------------------

    def forward_velocity(self, before: PyTree, after: PyTree) -> jax.Array:
        """``(x_after - x_before) / dt`` of the root along x, between two states one action apart."""
        return (after.qpos[0] - before.qpos[0]) / self.dt

    def _obs(self, data) -> jax.Array:
        return jnp.concatenate([data.qpos[self._obs_qpos_start:], data.qvel]).astype(jnp.float32)

    def _check_task(self, task: PyTree) -> None:
        leaf = task.get(self._task_field) if isinstance(task, dict) else None
        if leaf is None or set(task) != {self._task_field} or jnp.shape(leaf) != ():
            shapes = jax.tree.map(jnp.shape, task) if isinstance(task, dict) else type(task).__name__
            raise ValueError(f"task for {type(self).__name__}.reset/step must be one task "
                             f"{{'{self._task_field}': scalar}} (index a sampled batch first); got {shapes}")

    def reward(self, velocity: jax.Array, action: jax.Array, task: PyTree) -> jax.Array:
        """The task's reward for one action, from the root's forward velocity (m/s) and the action."""
        raise NotImplementedError  # every subclass defines it

    def _done(self, data) -> jax.Array:
        return jnp.zeros((), bool)


def _check_n(env, n) -> int:
    return validate.integer(f"{type(env).__name__}.sample_tasks n", n, min=1)


def _sample_directions(key: jax.Array, n: int) -> jax.Array:
    """float32 [n] in {-1, +1}, each +1 with probability 1/2 (the direction tasks)."""
    return jnp.where(jax.random.bernoulli(key, 0.5, (n,)), 1.0, -1.0).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class HalfCheetahDirection(_Locomotion):
    """HalfCheetah forward/backward (MAML, ProMP): reward ``d * v - ctrl_cost_weight * ||a||^2``.

    Task: ``{"direction": float32 [n]}`` with entries in {-1, +1}, each with probability 1/2.

    Args:
      horizon: actions per episode (static; MAML's 200 by default).
      frame_skip: physics steps per action (gym's 5).
      reset_noise_scale: gym's initial-state noise (0.1).
      ctrl_cost_weight: 0.05 (= MAML-RL's and ProMP's ``0.5 * 0.1``).
    """

    ctrl_cost_weight: float = 0.05

    _xml: ClassVar[str] = "half_cheetah.xml"
    _obs_qpos_start: ClassVar[int] = 1
    _task_field: ClassVar[str] = "direction"
    obs_size: ClassVar[int] = 17
    action_size: ClassVar[int] = 6

    def __post_init__(self):
        super().__post_init__()
        validate.number("HalfCheetahDirection.ctrl_cost_weight", self.ctrl_cost_weight, min=0)

    def sample_tasks(self, key: jax.Array, n: int) -> PyTree:
        n = _check_n(self, n)
        return {"direction": _sample_directions(key, n)}

    def reward(self, velocity: jax.Array, action: jax.Array, task: PyTree) -> jax.Array:
        """``direction * velocity - ctrl_cost_weight * ||action||^2``."""
        return task["direction"] * velocity - self.ctrl_cost_weight * jnp.sum(action**2)


@dataclasses.dataclass(frozen=True)
class HalfCheetahVelocity(_Locomotion):
    """HalfCheetah goal velocity (MAML, ProMP): reward ``-|v - v_goal| - ctrl_cost_weight * ||a||^2``.

    Task: ``{"velocity": float32 [n]}`` uniform in ``[min_velocity, max_velocity]`` (MAML-RL's [0, 2]).

    Args:
      horizon, frame_skip, reset_noise_scale: as :class:`HalfCheetahDirection`.
      ctrl_cost_weight: 0.05 (= ``0.5 * 0.1``).
      min_velocity, max_velocity: the goal velocity range in m/s.
    """

    ctrl_cost_weight: float = 0.05
    min_velocity: float = 0.0
    max_velocity: float = 2.0

    _xml: ClassVar[str] = "half_cheetah.xml"
    _obs_qpos_start: ClassVar[int] = 1
    _task_field: ClassVar[str] = "velocity"
    obs_size: ClassVar[int] = 17
    action_size: ClassVar[int] = 6

    def __post_init__(self):
        super().__post_init__()
        validate.number("HalfCheetahVelocity.ctrl_cost_weight", self.ctrl_cost_weight, min=0)
        lo = validate.number("HalfCheetahVelocity.min_velocity", self.min_velocity)
        validate.number("HalfCheetahVelocity.max_velocity", self.max_velocity, min=lo)

    def sample_tasks(self, key: jax.Array, n: int) -> PyTree:
        n = _check_n(self, n)
        return {"velocity": jax.random.uniform(key, (n,), jnp.float32, self.min_velocity, self.max_velocity)}

    def reward(self, velocity: jax.Array, action: jax.Array, task: PyTree) -> jax.Array:
        """``-|velocity - task velocity| - ctrl_cost_weight * ||action||^2``."""
        return -jnp.abs(velocity - task["velocity"]) - self.ctrl_cost_weight * jnp.sum(action**2)


@dataclasses.dataclass(frozen=True)
class AntDirection(_Locomotion):
    """Ant forward/backward (MAML, ProMP): reward ``d * v - ctrl_cost_weight * ||a||^2 + survive_bonus``.

    Task: ``{"direction": float32 [n]}`` in {-1, +1}. ``done`` when the torso height ``qpos[2]`` leaves
    ``[min_z, max_z]`` or the state is not finite; the caller masks the rest of the episode.

    Args:
      horizon, frame_skip, reset_noise_scale: as :class:`HalfCheetahDirection`.
      ctrl_cost_weight: ProMP/gym's 0.5.
      survive_bonus: ProMP/gym's 1.0.
      min_z, max_z: the healthy torso height range (ProMP's (0, 1); gym's and MAML-RL's (0.2, 1.0)).
    """

    ctrl_cost_weight: float = 0.5
    survive_bonus: float = 1.0
    min_z: float = 0.0
    max_z: float = 1.0

    _xml: ClassVar[str] = "ant.xml"
    _obs_qpos_start: ClassVar[int] = 2
    _task_field: ClassVar[str] = "direction"
    obs_size: ClassVar[int] = 27
    action_size: ClassVar[int] = 8

    def __post_init__(self):
        super().__post_init__()
        validate.number("AntDirection.ctrl_cost_weight", self.ctrl_cost_weight, min=0)
        validate.number("AntDirection.survive_bonus", self.survive_bonus)
        lo = validate.number("AntDirection.min_z", self.min_z)
        validate.number("AntDirection.max_z", self.max_z, min=lo)

    def sample_tasks(self, key: jax.Array, n: int) -> PyTree:
        n = _check_n(self, n)
        return {"direction": _sample_directions(key, n)}

    def reward(self, velocity: jax.Array, action: jax.Array, task: PyTree) -> jax.Array:
        """``direction * velocity - ctrl_cost_weight * ||action||^2 + survive_bonus``."""
        return task["direction"] * velocity - self.ctrl_cost_weight * jnp.sum(action**2) + self.survive_bonus

    def _done(self, data) -> jax.Array:
        z = data.qpos[2]
        healthy = (z >= self.min_z) & (z <= self.max_z) & jnp.all(jnp.isfinite(data.qpos)) \
            & jnp.all(jnp.isfinite(data.qvel))
        return ~healthy
