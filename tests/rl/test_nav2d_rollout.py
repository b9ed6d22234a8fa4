"""nav2d environments, rollouts, the Gaussian policy, returns and the linear feature baseline."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta.models import from_apply
from jmeta.rl import envs
from jmeta.rl.policies import GaussianPolicy, gaussian_kl, gaussian_log_prob, gaussian_mlp_policy
from jmeta.rl.returns import (discounted_returns, fit_linear_baseline, gae, linear_baseline_values,
                              normalize_advantages)
from jmeta.rl.rollout import check_policy_env, episode_returns, rollout, rollout_tasks


def test_nav2d_matches_maml_rl_definition():
    env = envs.Nav2D()
    tasks = env.sample_tasks(jax.random.key(0), 1000)
    g = np.asarray(tasks["goal"])
    assert g.shape == (1000, 2) and g.min() >= -0.5 and g.max() <= 0.5 and g.min() < -0.45 and g.max() > 0.45
    task = {"goal": jnp.array([0.3, -0.2])}
    s, o = env.reset(jax.random.key(1), task)
    np.testing.assert_array_equal(o, [0.0, 0.0])
    # normalized action 0.5 -> move 0.05; action 3 -> clipped to 0.1; reward is the distance after the move
    s, o, r, d = env.step(s, jnp.array([0.5, 3.0]), task)
    np.testing.assert_allclose(o, [0.05, 0.1], atol=1e-7)
    np.testing.assert_allclose(r, -np.hypot(0.05 - 0.3, 0.1 + 0.2), rtol=1e-6)
    assert not bool(d)
    s, o, r, d = env.step(jnp.array([0.295, -0.195]), jnp.array([0.0, 0.0]), task)
    assert bool(d)  # both coordinates within 0.01 of the goal
    raw = envs.Nav2D(normalize_actions=False)
    _, o, _, _ = raw.step(jnp.zeros(2), jnp.array([0.05, -3.0]), task)
    np.testing.assert_allclose(o, [0.05, -0.1], atol=1e-7)


def test_corner_sparse_reward():
    env = envs.Nav2DCorner()
    goals = np.asarray(env.sample_tasks(jax.random.key(0), 400)["goal"])
    assert set(map(tuple, goals.tolist())) == set(envs.CORNERS)
    task = {"goal": jnp.array([2.0, 2.0])}
    _, o = env.reset(jax.random.key(0), task)
    assert np.all(np.abs(o) <= 0.2)
    # inside the L1 radius 0.5 around the origin: 0
    _, _, r, _ = env.step(jnp.array([0.1, 0.1]), jnp.array([1.0, 0.0]), task)
    assert float(r) == 0.0
    # outside, heading into the goal's quadrant: progress towards the goal
    s = jnp.array([0.5, 0.5])
    new, _, r, d = env.step(s, jnp.array([1.0, 1.0]), task)
    np.testing.assert_allclose(r, np.linalg.norm([1.5, 1.5]) - np.linalg.norm([1.3, 1.3]), rtol=1e-6)
    assert not bool(d)
    # outside, nearest corner is another one: 0
    _, _, r, _ = env.step(jnp.array([-0.5, 0.5]), jnp.array([-1.0, 0.0]), task)
    assert float(r) == 0.0
    dense = envs.Nav2DCorner(reward_type="dense")
    _, _, r, _ = dense.step(s, jnp.array([1.0, 1.0]), task)
    np.testing.assert_allclose(r, -np.linalg.norm([1.3, 1.3]), rtol=1e-6)


def test_env_bad_input():
    with pytest.raises(ValueError, match="horizon"):
        envs.Nav2D(horizon=0)
    with pytest.raises(ValueError, match="reward_type"):
        envs.Nav2DCorner(reward_type="shaped")
    with pytest.raises(ValueError, match=r"action must have shape \(2,\) for Nav2DCorner; got \(3,\)"):
        envs.Nav2DCorner().step(jnp.zeros(2), jnp.zeros(3), {"goal": jnp.zeros(2)})
    with pytest.raises(ValueError, match="max_action"):
        envs.Nav2DCorner(max_action=0.0)
    with pytest.raises(ValueError, match="goal_high"):
        envs.Nav2D(goal_low=0.5, goal_high=0.5)
    with pytest.raises(TypeError):
        envs.Nav2D(100, -0.5)  # keyword-only fields
    assert (envs.Nav2D().max_action, envs.Nav2DCorner().max_action) == (0.1, 0.2)
    assert hash(envs.Nav2DCorner()) == hash(envs.Nav2DCorner()) and envs.Nav2D() != envs.Nav2DCorner()


def test_algorithms_name_the_action_space_they_need():
    from jmeta.rl import MAMLRL, RL2

    with pytest.raises(ValueError, match=r"MAMLRL needs an environment with continuous actions; "
                                         r"BernoulliBandit has discrete=True"):
        MAMLRL(envs.BernoulliBandit(), None)
    with pytest.raises(ValueError, match=r"RL2 \(a categorical GRU policy\) needs an environment with discrete "
                                         r"actions; Nav2D has discrete=False"):
        RL2(envs.Nav2D(), None)


@pytest.fixture(scope="module")
def setup():
    env = envs.Nav2D(horizon=20)
    policy = gaussian_mlp_policy(2, 2, (16, 16), key=jax.random.key(3))
    return env, policy, policy.init()


def test_rollout_shapes_deterministic_and_vmap_equals_loop(setup):
    env, policy, params = setup
    tasks = env.sample_tasks(jax.random.key(0), 3)
    f = jax.jit(lambda p, t, k: rollout_tasks(env, policy, p, t, k, num_episodes=4))
    a = f(params, tasks, jax.random.key(5))
    b = f(params, tasks, jax.random.key(5))
    assert a.obs.shape == (3, 4, 20, 2) and a.actions.shape == (3, 4, 20, 2) and a.rewards.shape == (3, 4, 20)
    assert a.mask.shape == a.log_probs.shape == a.dones.shape == (3, 4, 20)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    c = f(params, tasks, jax.random.key(6))
    assert not np.allclose(a.actions, c.actions)
    keys = jax.random.split(jax.random.key(5), 3)
    one_task = jax.jit(lambda p, t, k: rollout(env, policy, p, t, k, num_episodes=4))
    for i in range(3):
        one = one_task(params, envs.index_task(tasks, i), keys[i])
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y[i], rtol=1e-5, atol=1e-6), one, a)
    # log_probs are the behaviour policy's; obs[t+1] is obs[t] plus the clipped move
    np.testing.assert_allclose(a.log_probs, policy.log_prob(params, a.obs, a.actions), rtol=1e-5, atol=1e-5)
    move = np.clip(0.1 * np.asarray(a.actions[..., :-1, :]), -0.1, 0.1)
    np.testing.assert_allclose(a.obs[..., 1:, :], a.obs[..., :-1, :] + move, atol=1e-5)
    # per-task params: identical copies equal shared params
    stacked = jax.tree.map(lambda x: jnp.stack([x] * 3), params)
    d = jax.jit(lambda p, t, k: rollout_tasks(env, policy, p, t, k, num_episodes=4, params_per_task=True))(
        stacked, tasks, jax.random.key(5))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, d)


def test_done_masking():
    # a goal at the origin: done at the first step with a zero move; everything after is masked
    env = envs.Nav2D(horizon=5)
    lin = from_apply(lambda p, x: p["w"] * x, {"w": jnp.zeros(())}, stateless=True)
    policy = GaussianPolicy(lin, 2, 2, init_log_std=-30.0)
    tr = rollout(env, policy, policy.init(), {"goal": jnp.array([0.0, 0.0])}, jax.random.key(0), num_episodes=2)
    np.testing.assert_array_equal(tr.mask, [[1, 0, 0, 0, 0]] * 2)
    np.testing.assert_allclose(episode_returns(tr), [0.0, 0.0], atol=1e-6)
    tr2 = rollout(env, policy, policy.init(), {"goal": jnp.array([0.3, 0.0])}, jax.random.key(0), num_episodes=1)
    np.testing.assert_array_equal(tr2.mask, [[1] * 5])
    np.testing.assert_allclose(episode_returns(tr2), [-1.5], rtol=1e-5)


def test_policy_size_mismatch_is_one_clear_error(setup):
    env, _, _ = setup
    with pytest.raises(ValueError, match=r"policy.action_size is 3 but env.action_size is 2"):
        check_policy_env(gaussian_mlp_policy(2, 3, (8,)), env)
    with pytest.raises(ValueError, match="action_size=4 needs"):
        GaussianPolicy(gaussian_mlp_policy(2, 3, (8,)).model, 2, 4)


def test_gaussian_densities_against_scipy_formulas(x64):
    rng = np.random.default_rng(0)
    m0, m1, a = (rng.normal(size=3) for _ in range(3))
    s0, s1 = rng.normal(size=3) * 0.3, rng.normal(size=3) * 0.3
    lp = sum(-0.5 * ((a - m0) / np.exp(s0)) ** 2 - s0 - 0.5 * np.log(2 * np.pi))
    np.testing.assert_allclose(gaussian_log_prob(m0, s0, a), lp, rtol=1e-12)
    # KL by Monte Carlo of log-ratios
    x = m0 + np.exp(s0) * rng.normal(size=(400000, 3))
    mc = np.mean(gaussian_log_prob(m0, s0, x) - gaussian_log_prob(m1, s1, x))
    np.testing.assert_allclose(gaussian_kl(m0, s0, m1, s1), mc, rtol=0.02)


def test_returns_gae_and_baseline(x64):
    r = jnp.array([[1.0, 2.0, 3.0, 4.0]])
    m = jnp.array([[1.0, 1.0, 1.0, 0.0]])
    g = discounted_returns(r, m, 0.5)
    np.testing.assert_allclose(g, [[1 + 0.5 * 2 + 0.25 * 3, 2 + 1.5, 3, 0]])
    v = jnp.array([[0.5, -1.0, 2.0, 7.0]])
    np.testing.assert_allclose(gae(r, v, m, 0.5, 1.0), (g - v) * m, atol=1e-12)
    # lam = 0: one-step TD errors
    np.testing.assert_allclose(gae(r, v, m, 0.5, 0.0), [[1 + 0.5 * -1 - 0.5, 2 + 0.5 * 2 + 1, 3 - 2, 0]])
    a = normalize_advantages(jnp.array([[1.0, 2.0, 3.0, 100.0]]), m)
    np.testing.assert_allclose(a, [[-np.sqrt(1.5), 0, np.sqrt(1.5), 0]], rtol=1e-6)
    # the baseline reproduces returns that are exactly linear in its features
    rng = np.random.default_rng(1)
    obs = jnp.asarray(rng.normal(size=(5, 7, 2)))
    mask = jnp.ones((5, 7))
    t = np.arange(7) / 100.0
    target = 0.3 * obs[..., 0] - 2 * obs[..., 1] ** 2 + 5 * t + 1.5
    c = fit_linear_baseline(obs, target, mask, reg_coeff=1e-12)
    np.testing.assert_allclose(linear_baseline_values(c, obs, mask), target, atol=1e-6)


def test_rollout_tasks_refuses_tasks_of_the_wrong_shape(setup):
    env, policy, params = setup
    with pytest.raises(ValueError, match=r"tasks\['goal'\] has shape \(3, 3\); Nav2D tasks have shape \(3, 2\)"):
        rollout_tasks(env, policy, params, {"goal": jnp.zeros((3, 3))}, jax.random.key(0), num_episodes=2)
    with pytest.raises(ValueError, match="leading task axis"):
        rollout_tasks(env, policy, params, {"goal": jnp.zeros(())}, jax.random.key(0), num_episodes=2)
