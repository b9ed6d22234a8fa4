"""Bernoulli bandits and random tabular MDPs (Duan et al. 2016) on the environment contract."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta.rl.envs import BernoulliBandit, RandomTabularMDP, check_env, index_task

ENVS = [BernoulliBandit(num_arms=4, horizon=3), RandomTabularMDP(num_states=4, num_actions=3, horizon=5)]
#: tasks drawn per call for ENVS: one size for every test, so each environment's sampler compiles once
N_TASKS = 5


_JITTED = {}


def _jitted(env):
    """``(reset, step)`` of ``env``, jitted once per environment (tests stay fast on a loaded CPU)."""
    if env not in _JITTED:
        _JITTED[env] = (jax.jit(env.reset), jax.jit(env.step))
    return _JITTED[env]


def _episode(env, task, key, actions):
    """A Python-loop episode: the observations and rewards of ``actions``."""
    reset, step = _jitted(env)
    state, obs = reset(key, task)
    obs_seq, rewards = [obs], []
    for a in actions:
        state, obs, r, done = step(state, jnp.int32(a), task)
        assert not bool(done)
        obs_seq.append(obs)
        rewards.append(r)
    return np.stack(obs_seq), np.stack(rewards)


@pytest.mark.parametrize("env", ENVS, ids=["bandit", "tabular"])
def test_contract_and_determinism_for_a_key(env):
    assert check_env(env) is env and env.discrete
    t1, t2 = env.sample_tasks(jax.random.key(0), N_TASKS), env.sample_tasks(jax.random.key(0), N_TASKS)
    jax.tree.map(np.testing.assert_array_equal, t1, t2)
    t3 = env.sample_tasks(jax.random.key(1), N_TASKS)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(t1), jax.tree.leaves(t3)))
    task = index_task(t1, 0)
    actions = [i % env.action_size for i in range(env.horizon)]
    o1, r1 = _episode(env, task, jax.random.key(5), actions)
    o2, r2 = _episode(env, task, jax.random.key(5), actions)
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_array_equal(r1, r2)
    assert o1.shape == (env.horizon + 1, env.obs_size) and o1.dtype == np.float32 and r1.dtype == np.float32
    # another key draws other rewards (tabular: Gaussian rewards, always different; bandit: 40 pulls)
    acts = [0] * 40 if isinstance(env, BernoulliBandit) else actions
    _, ra = _episode(env, {"p": jnp.full((4,), 0.5)} if isinstance(env, BernoulliBandit) else task,
                     jax.random.key(5), acts)
    _, rb = _episode(env, {"p": jnp.full((4,), 0.5)} if isinstance(env, BernoulliBandit) else task,
                     jax.random.key(6), acts)
    assert not np.array_equal(ra, rb)


@pytest.mark.parametrize("env", ENVS, ids=["bandit", "tabular"])
def test_vmap_over_tasks_equals_a_loop(env):
    n = N_TASKS
    tasks = env.sample_tasks(jax.random.key(2), n)
    keys = jax.random.split(jax.random.key(3), n)
    actions = jnp.arange(n, dtype=jnp.int32) % env.action_size

    def one(task, key, a):
        state, obs0 = env.reset(key, task)
        state, obs1, r1, _ = env.step(state, a, task)
        state, obs2, r2, _ = env.step(state, a, task)
        return obs0, obs1, obs2, jnp.stack([r1, r2])

    batched = jax.jit(jax.vmap(one))(tasks, keys, actions)
    one = jax.jit(one)
    for i in range(n):
        single = one(index_task(tasks, i), keys[i], actions[i])
        for b, s in zip(batched, single):
            np.testing.assert_allclose(b[i], s, rtol=1e-6, atol=1e-6)


def test_bandit_task_distribution_and_rewards():
    env = BernoulliBandit(num_arms=5)
    p = np.asarray(env.sample_tasks(jax.random.key(0), 4000)["p"])
    assert p.shape == (4000, 5) and p.min() >= 0 and p.max() <= 1
    # U[0, 1]: mean 1/2, variance 1/12 (20000 draws: standard error of the mean 0.002)
    assert abs(p.mean() - 0.5) < 0.01 and abs(p.var() - 1 / 12) < 0.005
    # Bernoulli(p[a]) rewards: 4000 pulls of each arm of one task, within 5 standard errors
    task = {"p": jnp.array([0.05, 0.3, 0.5, 0.8, 0.95], jnp.float32)}

    def pull(key, a):
        state, _ = env.reset(key, task)
        return env.step(state, a, task)[2]

    keys = jax.random.split(jax.random.key(1), 4000)
    pulls = jax.jit(jax.vmap(pull, (0, None)))
    for a in range(5):
        r = np.asarray(pulls(keys, jnp.int32(a)))
        assert set(np.unique(r)) <= {0.0, 1.0}
        pa = float(task["p"][a])
        assert abs(r.mean() - pa) < 5 * np.sqrt(pa * (1 - pa) / 4000), (a, r.mean(), pa)


def test_tabular_task_distribution_transitions_and_rewards():
    env = RandomTabularMDP(num_states=10, num_actions=5, horizon=10)
    tasks = env.sample_tasks(jax.random.key(0), 1000)
    P, R = np.asarray(tasks["P"]), np.asarray(tasks["R"])
    assert P.shape == (1000, 10, 5, 10) and R.shape == (1000, 10, 5)
    np.testing.assert_allclose(P.sum(-1), 1.0, atol=1e-5)
    assert P.min() >= 0
    # flat Dirichlet over 10 states: each component ~ Beta(1, 9), mean 0.1, variance 9 / (100 * 11)
    assert abs(P.mean() - 0.1) < 1e-3 and abs(P.var() - 9 / 1100) < 5e-4
    # mean rewards ~ N(1, 1) (50000 draws)
    assert abs(R.mean() - 1.0) < 0.03 and abs(R.std() - 1.0) < 0.03
    # one step from state 0 (every episode starts there): next state ~ P[0, a], reward ~ N(R[0, a], 1)
    task = index_task(tasks, 0)
    state, obs = jax.jit(env.reset)(jax.random.key(1), task)
    np.testing.assert_array_equal(obs, np.eye(10)[0])

    def one_step(key, a):
        state, _ = env.reset(key, task)
        state, obs, r, _ = env.step(state, a, task)
        return state.s, obs, r

    n = 20000
    s, obs, r = jax.jit(jax.vmap(one_step, (0, None)))(jax.random.split(jax.random.key(2), n), jnp.int32(3))
    np.testing.assert_array_equal(np.asarray(obs), np.eye(10)[np.asarray(s)])
    freq = np.bincount(np.asarray(s), minlength=10) / n
    p = np.asarray(task["P"][0, 3])
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / n) + 1e-4), (freq, p)
    assert abs(float(np.mean(r)) - float(task["R"][0, 3])) < 5 / np.sqrt(n)
    assert abs(float(np.std(r)) - 1.0) < 0.03


@pytest.mark.parametrize("env", ENVS, ids=["bandit", "tabular"])
def test_bad_actions_one_clear_error_each(env):
    task = index_task(env.sample_tasks(jax.random.key(0), N_TASKS), 0)
    state, _ = _jitted(env)[0](jax.random.key(1), task)
    with pytest.raises(TypeError, match=r"action must be an int32 scalar .* got dtype float32"):
        env.step(state, jnp.float32(1.0), task)
    with pytest.raises(TypeError, match="action must be an int32 scalar .* got a boolean"):
        env.step(state, True, task)
    with pytest.raises(ValueError, match=r"action must be a scalar \(shape \(\)\) .* got shape \(2,\)"):
        env.step(state, jnp.array([0, 1], jnp.int32), task)
    # the same checks hold under jit (they are static: dtype and shape)
    with pytest.raises(TypeError, match="action must be an int32 scalar"):
        jax.jit(lambda a: env.step(state, a, task))(jnp.float32(0.0))
    step = _jitted(env)[1]
    step(state, 1, task)  # a Python int is a valid action
    step(state, np.int64(1), task)


def test_bad_sizes_one_clear_error_each():
    with pytest.raises(ValueError, match=r"num_arms must be an integer >= 1; got 0"):
        BernoulliBandit(num_arms=0)
    with pytest.raises(ValueError, match=r"horizon must be an integer >= 1; got 0"):
        BernoulliBandit(num_arms=3, horizon=0)
    with pytest.raises(ValueError, match=r"horizon must be an integer >= 1; got 0"):
        RandomTabularMDP(horizon=0)
    with pytest.raises(ValueError, match=r"num_states must be an integer >= 1; got 0"):
        RandomTabularMDP(num_states=0)
    with pytest.raises(ValueError, match=r"num_actions must be an integer >= 1; got 2.0"):
        RandomTabularMDP(num_actions=2.0)
    with pytest.raises(ValueError, match=r"n must be an integer >= 1; got 0"):
        BernoulliBandit().sample_tasks(jax.random.key(0), 0)


def test_wrong_task_pytree_one_clear_error_each():
    bandit = BernoulliBandit(num_arms=3)
    tasks = bandit.sample_tasks(jax.random.key(0), 4)
    with pytest.raises(ValueError, match=r"task\['p'\] must have shape \(3,\) for one task; got \(4, 3\) "
                                         r"\(a batch of tasks: index one task"):
        bandit.reset(jax.random.key(0), tasks)
    with pytest.raises(ValueError, match=r"task\['p'\] must have shape \(3,\) for one task; got \(5,\)"):
        bandit.reset(jax.random.key(0), {"p": jnp.ones(5)})
    with pytest.raises(ValueError, match="must be a dict with key 'p'"):
        bandit.reset(jax.random.key(0), jnp.ones(3))
    mdp = RandomTabularMDP(num_states=4, num_actions=2)
    task = {"P": jnp.full((4, 2, 4), 0.25), "R": jnp.zeros((4, 2))}  # one valid task (the shapes are what counts)
    state, _ = mdp.reset(jax.random.key(0), task)
    with pytest.raises(ValueError, match=r"task\['R'\] must have shape \(4, 2\) for one task; got \(2, 4\)"):
        mdp.step(state, 0, {"P": task["P"], "R": task["R"].T})
    with pytest.raises(ValueError, match="must be a dict with keys 'P'"):
        mdp.reset(jax.random.key(0), {"P": task["P"]})
