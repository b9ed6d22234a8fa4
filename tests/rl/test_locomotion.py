"""MJX locomotion environments: vmapped rollouts over tasks x episodes, rewards recomputed from the states.

MJX compiles slowly on the CPU (tens of seconds per program), so the HalfCheetah tests share ONE compiled
rollout program (module fixture, XLA backend optimisation off) and check everything on its outputs; the
velocity task's reward is checked on the same states through the environment's own reward method. The Ant
rollout (RK4 integrator) runs only with ``JMETA_TEST_ANT=1``: measured on the shared 2-core machine, this file
took 40-42 s of CPU time without it and 67 s with it (2.3-4.7 min wall at load averages 10-18).
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("mujoco.mjx", reason="MuJoCo MJX not installed (pip install 'jmeta[mjx]')")
pytest.importorskip("gymnasium", reason="gymnasium (ships the MJCF models) not installed (pip install 'jmeta[mjx]')")

from jmeta.rl.envs import check_env, index_task  # noqa: E402
from jmeta.rl.envs import locomotion as loco  # noqa: E402

# Compile-time saver for tests only: LLVM's expensive passes off (the programs are tiny at test sizes), and XLA:CPU's
# older elemental emitters instead of its fusion emitters (measured: the rollout program compiled in 5.8 s instead
# of 8.7 s of CPU on the shared 2-core machine).
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
                 "xla_cpu_use_fusion_emitters": False}
T, E = 3, 2  # horizon and episodes per task in the tests
DT = 0.01 * 5  # the models' timestep x gym's frame_skip


def _rollout_fn(env):
    """``(tasks [N], keys [N]) ->`` per task x episode x step: x before/after, obs, qpos, qvel, action, reward,
    done; vmapped over tasks and episodes, ``lax.scan`` over the horizon, random-normal actions."""

    def episode(task, key):
        k_reset, k_act = jax.random.split(key)
        state, obs0 = env.reset(k_reset, task)

        def body(state, k):
            action = jax.random.normal(k, (env.action_size,))
            new, obs, reward, done = env.step(state, action, task)
            return new, dict(x_before=state.qpos[0], x_after=new.qpos[0], obs=obs, qpos=new.qpos, qvel=new.qvel,
                             action=action, reward=reward, done=done)

        _, out = jax.lax.scan(body, state, jax.random.split(k_act, env.horizon))
        return obs0, out

    def run(tasks, keys):
        return jax.vmap(lambda task, k: jax.vmap(lambda kk: episode(task, kk))(jax.random.split(k, E)))(tasks, keys)

    return run


@pytest.fixture(scope="module")
def cheetah():
    env = loco.HalfCheetahDirection(horizon=T)
    tasks = {"direction": jnp.array([1.0, -1.0])}
    keys = jax.random.split(jax.random.key(0), 2)
    run = jax.jit(_rollout_fn(env)).lower(tasks, keys).compile(compiler_options=_FAST_COMPILE)
    return env, run, tasks, keys


def test_static_sizes_and_contract():
    for env, sizes in [(loco.HalfCheetahDirection(), (17, 6)), (loco.HalfCheetahVelocity(), (17, 6)),
                       (loco.AntDirection(), (27, 8))]:
        assert check_env(env) is env
        assert (env.obs_size, env.action_size, env.horizon, env.discrete) == (*sizes, 200, False)
        assert env.dt == pytest.approx(DT)
        assert hash(env) == hash(type(env)())  # usable as a static argument


def test_loading_writes_no_mujoco_log(tmp_path, monkeypatch):
    # MuJoCo 4 deprecates half_cheetah.xml's settotalmass; its default handler would append that to
    # ./MUJOCO_LOG.TXT on every load.
    monkeypatch.chdir(tmp_path)
    loco._load.cache_clear()
    loco.HalfCheetahVelocity()
    loco.AntDirection()
    assert list(tmp_path.iterdir()) == []


def test_sample_tasks_distributions():
    key = jax.random.key(3)
    d = loco.HalfCheetahDirection().sample_tasks(key, 1000)["direction"]
    assert d.shape == (1000,) and d.dtype == jnp.float32 and set(np.unique(d).tolist()) == {-1.0, 1.0}
    assert 400 < int((d > 0).sum()) < 600  # Binomial(1000, 1/2): 6 standard deviations
    v = loco.HalfCheetahVelocity().sample_tasks(key, 1000)["velocity"]
    assert v.shape == (1000,) and float(v.min()) >= 0.0 and float(v.max()) <= 2.0
    assert abs(float(v.mean()) - 1.0) < 0.06  # U(0, 2): sd of the mean 0.018
    a = loco.AntDirection().sample_tasks(key, 8)["direction"]
    assert set(np.unique(a).tolist()) <= {-1.0, 1.0}
    np.testing.assert_array_equal(loco.HalfCheetahDirection().sample_tasks(key, 1000)["direction"], d)


def test_vmapped_rollout_shapes_finite_deterministic(cheetah):
    env, run, tasks, keys = cheetah
    obs0, out = jax.device_get(run(tasks, keys))
    assert obs0.shape == (2, E, 17) and obs0.dtype == jnp.float32
    assert out["obs"].shape == (2, E, T, 17) and out["obs"].dtype == jnp.float32
    assert out["reward"].shape == (2, E, T) and out["reward"].dtype == jnp.float32
    assert out["done"].shape == (2, E, T) and out["done"].dtype == jnp.bool_ and not bool(out["done"].any())
    for leaf in jax.tree.leaves((obs0, out)):
        assert bool(np.all(np.isfinite(leaf)))
    assert float(np.abs(out["x_after"] - out["x_before"]).max()) > 1e-4  # it moves
    obs0_again, out_again = jax.device_get(run(tasks, keys))
    jax.tree.map(np.testing.assert_array_equal, (obs0, out), (obs0_again, out_again))
    _, out_other = jax.device_get(run(tasks, jax.random.split(jax.random.key(1), 2)))
    assert not np.allclose(out["reward"], out_other["reward"])


def test_reset_noise_and_observation(cheetah):
    env, run, tasks, keys = cheetah
    obs0, out = jax.device_get(run(tasks, keys))
    # gym's reset: qpos0 + U(-0.1, 0.1) (qpos0 = 0 for the cheetah), qvel ~ 0.1 N(0, 1); obs = [qpos[1:], qvel]
    assert float(np.abs(obs0[..., :8]).max()) <= 0.1 + 1e-6
    assert 0.01 < float(np.std(obs0[..., 8:])) < 0.3
    np.testing.assert_array_equal(out["obs"], np.concatenate([out["qpos"][..., 1:], out["qvel"]], -1))


def test_direction_reward_formula_and_opposite_directions(cheetah):
    env, run, tasks, keys = cheetah
    same_keys = jnp.stack([keys[0], keys[0]])  # both tasks see the same resets and actions: the same motion
    _, out = jax.device_get(run(tasks, same_keys))
    np.testing.assert_array_equal(out["qpos"][0], out["qpos"][1])
    velocity = (out["x_after"] - out["x_before"]) / DT
    ctrl = 0.05 * np.sum(out["action"] ** 2, -1)
    expected = np.asarray(tasks["direction"])[:, None, None] * velocity - ctrl
    np.testing.assert_allclose(out["reward"], expected, rtol=1e-5, atol=1e-5)
    # forward reward of the +1 task is minus that of the -1 task for the same motion
    np.testing.assert_allclose(out["reward"][0] + ctrl[0], -(out["reward"][1] + ctrl[1]), rtol=1e-5, atol=1e-6)
    assert float(np.abs(velocity).max()) > 1e-2


def test_velocity_reward_formula_on_the_same_states(cheetah):
    env, run, tasks, keys = cheetah
    _, out = jax.device_get(run(tasks, keys))
    vel_env = loco.HalfCheetahVelocity(horizon=T)
    velocity = ((out["x_after"] - out["x_before"]) / DT).reshape(-1)
    actions = out["action"].reshape(-1, 6)
    goal = {"velocity": jnp.array(1.3)}
    # jitted: one compiled program each rather than one per operation of the eager vmap
    rewards = jax.jit(jax.vmap(lambda v, a: vel_env.reward(v, a, goal)))(velocity, actions)
    expected = -np.abs(velocity - np.float32(1.3)) - np.float32(0.05) * np.sum(actions**2, -1)
    np.testing.assert_allclose(rewards, expected, rtol=1e-6, atol=1e-6)
    # the direction env's step used the same formula route: its rewards recompute through its reward method
    dir_rewards = jax.jit(jax.vmap(lambda v, a, d: env.reward(v, a, {"direction": d})))(
        velocity, actions, np.repeat(np.asarray(tasks["direction"]), E * T))
    np.testing.assert_allclose(out["reward"].reshape(-1), dir_rewards, rtol=1e-5, atol=1e-5)


def test_vmap_equals_loop_for_two_tasks(cheetah):
    env, run, tasks, keys = cheetah
    _, batched = jax.device_get(run(tasks, keys))

    def one_task(task, key):
        return _rollout_fn(env)(jax.tree.map(lambda a: a[None], task), key[None])

    single = jax.jit(one_task).lower(index_task(tasks, 0), keys[0]).compile(compiler_options=_FAST_COMPILE)
    for i in range(2):
        _, one = jax.device_get(single(index_task(tasks, i), keys[i]))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b[i], rtol=1e-5, atol=1e-5), one, batched)


def test_ant_done_is_the_healthy_height_range():
    from types import SimpleNamespace
    env = loco.AntDirection()
    qvel = jnp.zeros(14)

    def done(z, env=env, qvel=qvel):
        return bool(env._done(SimpleNamespace(qpos=jnp.zeros(15).at[2].set(z), qvel=qvel)))

    assert [done(z) for z in (-0.01, 0.0, 0.5, 1.0, 1.01)] == [True, False, False, False, True]  # ProMP's [0, 1]
    assert done(0.1, env=loco.AntDirection(min_z=0.2)) and not done(0.3, env=loco.AntDirection(min_z=0.2))
    assert done(0.5, qvel=qvel.at[3].set(jnp.nan))
    assert not bool(loco.HalfCheetahDirection()._done(None))


def test_bad_inputs_one_clear_error_each():
    env = loco.HalfCheetahDirection(horizon=T)
    task = {"direction": jnp.array(1.0)}
    with pytest.raises(ValueError, match="horizon must be an integer >= 1; got 0"):
        loco.HalfCheetahDirection(horizon=0)
    with pytest.raises(ValueError, match="frame_skip"):
        loco.AntDirection(frame_skip=0)
    with pytest.raises(ValueError, match="max_velocity"):
        loco.HalfCheetahVelocity(min_velocity=2.0, max_velocity=1.0)
    with pytest.raises(ValueError, match="sample_tasks n must be an integer >= 1; got 0"):
        env.sample_tasks(jax.random.key(0), 0)
    with pytest.raises(ValueError, match=r"task for HalfCheetahDirection.reset/step must be one task"):
        env.reset(jax.random.key(0), {"direction": jnp.ones(3)})  # a batch, not one task
    with pytest.raises(ValueError, match=r"must be one task \{'direction'"):
        env.reset(jax.random.key(0), {"velocity": jnp.array(1.0)})
    state = jax.eval_shape(env.reset, jax.random.key(0), task)[0]
    with pytest.raises(ValueError, match=r"action must have shape \(6,\) for HalfCheetahDirection; got \(8,\)"):
        jax.eval_shape(env.step, state, jnp.zeros(8), task)


def test_missing_extra_names_it(monkeypatch):
    loco._load.cache_clear()
    monkeypatch.setitem(sys.modules, "mujoco", None)
    monkeypatch.setitem(sys.modules, "mujoco.mjx", None)
    try:
        with pytest.raises(ImportError, match=r"pip install 'jmeta\[mjx\]'"):
            loco.HalfCheetahDirection()
    finally:
        loco._load.cache_clear()


def test_import_jmeta_rl_does_not_import_mujoco():
    code = ("import sys, jmeta, jmeta.rl, jmeta.rl.envs, jmeta.rl.envs.locomotion; "
            "assert 'mujoco' not in sys.modules and 'gymnasium' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.mark.skipif(not os.environ.get("JMETA_TEST_ANT"), reason="Ant's RK4 program adds ~27 s of CPU "
                    "compile time to this file's ~40 s; set JMETA_TEST_ANT=1 to run it")
def test_ant_direction_rollout_and_reward():
    env = loco.AntDirection(horizon=T)
    tasks = {"direction": jnp.array([1.0, -1.0])}
    key = jax.random.key(0)
    keys = jnp.stack([key, key])
    run = jax.jit(_rollout_fn(env)).lower(tasks, keys).compile(compiler_options=_FAST_COMPILE)
    obs0, out = run(tasks, keys)
    assert obs0.shape == (2, E, 27) and out["obs"].shape == (2, E, T, 27) and out["reward"].shape == (2, E, T)
    for leaf in jax.tree.leaves((obs0, out)):
        assert bool(jnp.all(jnp.isfinite(leaf)))
    np.testing.assert_array_equal(out["obs"], jnp.concatenate([out["qpos"][..., 2:], out["qvel"]], -1))
    velocity = (out["x_after"] - out["x_before"]) / DT
    ctrl = 0.5 * jnp.sum(out["action"] ** 2, -1)
    expected = tasks["direction"][:, None, None] * velocity - ctrl + 1.0
    np.testing.assert_allclose(out["reward"], expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out["reward"][0] + ctrl[0] - 1.0, -(out["reward"][1] + ctrl[1] - 1.0), atol=1e-5)
    z = out["qpos"][..., 2]
    assert (env.min_z, env.max_z) == (0.0, 1.0)  # ProMP's healthy range
    np.testing.assert_array_equal(out["done"], (z < 0.0) | (z > 1.0))
