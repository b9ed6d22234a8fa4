"""RL^2 with the Gaussian GRU policy (continuous actions, :func:`jmeta.rl.recurrent.gaussian_gru_policy`): the
density against the formula in float64, the PPO gradient against finite differences, trial rollouts on nav2d
(deterministic per key, the continuous previous action fed back) and the size checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from finite_differences import fd_relative_error

from jmeta.rl import RL2, PPOConfig, rl2_input_size, rollout_trial
from jmeta.rl.envs import BernoulliBandit, Nav2D, index_task
from jmeta.rl.recurrent import GaussianRecurrentPolicy, gaussian_gru_policy


@pytest.fixture(scope="module")
def nav():
    """nav2d with 4-step episodes and a width-4 Gaussian GRU (log-std -0.5 so the density is not the default's)."""
    env = Nav2D(horizon=4)
    policy = gaussian_gru_policy(rl2_input_size(env), env.action_size, hidden_size=4, init_log_std=-0.5,
                                 key=jax.random.key(0))
    task = index_task(env.sample_tasks(jax.random.key(1), 1), 0)
    return env, policy, task


def _step_by_hand(params, h, x):
    """The Gaussian GRU step in float64 NumPy (flax's gate layout: r, z, n; no bias on the recurrent kernel)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    c = p["cell"]
    xi = x @ c["dense_i"]["kernel"] + c["dense_i"]["bias"]
    hh = h @ c["dense_h"]["kernel"]
    H = h.shape[-1]
    sig = lambda u: 1 / (1 + np.exp(-u))  # noqa: E731
    r, z = sig(xi[:H] + hh[:H]), sig(xi[H:2 * H] + hh[H:2 * H])
    n = np.tanh(xi[2 * H:] + r * hh[2 * H:])
    h = (1 - z) * n + z * h
    return h, h @ p["mu"]["kernel"] + p["mu"]["bias"], p["log_std"], (h @ p["v"]["kernel"] + p["v"]["bias"])[0]


def test_log_prob_and_step_match_the_density_formula_in_float64(nav, x64):
    _, policy, _ = nav
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) + 0.3 * rng.normal(size=a.shape), policy.params)
    h, x = rng.normal(size=4), rng.normal(size=policy.input_size)
    a = rng.normal(size=2)
    h1, (mean, log_std), value = policy.step(params, jnp.asarray(h), jnp.asarray(x))
    assert mean.dtype == jnp.float64 and log_std.dtype == jnp.float64
    h_ref, mean_ref, log_std_ref, value_ref = _step_by_hand(params, h, x)
    for got, want in ((h1, h_ref), (mean, mean_ref), (log_std, log_std_ref), (value, value_ref)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)
    sigma = np.exp(log_std_ref)
    density = np.prod(np.exp(-0.5 * ((a - mean_ref) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi)))
    np.testing.assert_allclose(float(policy.log_prob((mean, log_std), jnp.asarray(a))), np.log(density),
                               rtol=1e-12)
    entropy = np.sum(0.5 * np.log(2 * np.pi * np.e * sigma ** 2))
    np.testing.assert_allclose(float(policy.entropy((mean, log_std))), entropy, rtol=1e-12)


def test_ppo_loss_gradient_against_finite_differences(nav, x64):
    """RL2's PPO-clip loss through the Gaussian GRU's unroll (the loss the PPO update differentiates), float64."""
    env, policy, _ = nav
    rng = np.random.default_rng(1)
    rl2 = RL2(env, policy, num_episodes=2, meta_batch_size=2, ppo=PPOConfig(num_minibatches=1, entropy_coef=0.1))
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) + 0.3 * rng.normal(size=a.shape), policy.params)
    inputs = jnp.asarray(rng.normal(size=(2, 5, policy.input_size)))
    actions = jnp.asarray(rng.normal(size=(2, 5, 2)))
    heads, _ = jax.vmap(lambda x: policy.unroll(params, x))(inputs)
    lp = policy.log_prob(heads, actions)
    assert lp.shape == (2, 5)
    mb = {"inputs": inputs, "actions": actions, "log_probs": lp + jnp.asarray(rng.normal(scale=0.1, size=(2, 5))),
          "advantages": jnp.asarray(rng.normal(size=(2, 5))), "returns": jnp.asarray(rng.normal(size=(2, 5))),
          "mask": jnp.array([[True] * 5, [True, True, True, True, False]])}
    ratio = np.exp(np.asarray(lp - mb["log_probs"]))[np.asarray(mb["mask"])]
    assert np.min(np.abs(np.abs(ratio - 1) - 0.2)) > 1e-3  # away from the clip kinks
    assert jax.tree.leaves(jax.eval_shape(lambda p: rl2._loss(p, mb)[0], params))[0].dtype == jnp.float64
    err, g = fd_relative_error(lambda p: rl2._loss(p, mb)[0], params, n_dirs=4)
    assert err < 1e-6, err
    assert float(jnp.abs(g["log_std"]).max()) > 0 and float(jnp.abs(g["mu"]["kernel"]).max()) > 0


def test_rollout_is_deterministic_per_key_and_feeds_the_action_back(nav):
    env, policy, task = nav
    roll = jax.jit(lambda k: rollout_trial(env, policy, policy.params, task, k, 2))
    a, b, c = roll(jax.random.key(3)), roll(jax.random.key(3)), roll(jax.random.key(4))
    for x, y in zip(a, b):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
    assert not np.array_equal(np.asarray(a.actions), np.asarray(c.actions))
    assert a.actions.shape == (2, 4, 2) and a.actions.dtype == jnp.float32 and bool(a.mask.all())
    acts = np.asarray(a.actions).reshape(8, 2)
    prev = np.asarray(a.inputs).reshape(8, policy.input_size)[:, 2:4]  # [obs 2, prev action 2, prev r, first]
    np.testing.assert_array_equal(prev[0], 0.0)  # the trial start
    np.testing.assert_array_equal(prev[1:], acts[:-1])  # the sampled action, across the episode boundary too
    np.testing.assert_array_equal(np.asarray(a.inputs)[:, :, -1], [[1, 0, 0, 0]] * 2)
    # the stored log-probabilities are the policy's density of its actions (a second route: the unroll)
    heads, values = policy.unroll(policy.params, jnp.asarray(a.inputs).reshape(8, -1))
    np.testing.assert_allclose(policy.log_prob(heads, jnp.asarray(acts)), np.asarray(a.log_probs).reshape(8),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(values, np.asarray(a.values).reshape(8), rtol=1e-5, atol=1e-5)


def test_size_and_kind_mismatches_are_one_clear_error_each(nav):
    env, policy, _ = nav
    assert isinstance(policy, GaussianRecurrentPolicy) and not policy.discrete
    with pytest.raises(ValueError, match=r"policy.num_actions \(3\) must equal the environment's action_size \(2\)"):
        RL2(env, gaussian_gru_policy(rl2_input_size(env), 3, hidden_size=4))
    with pytest.raises(ValueError, match=r"policy.input_size \(5\) must equal rl2_input_size\(env\)"):
        RL2(env, gaussian_gru_policy(5, 2, hidden_size=4))
    with pytest.raises(ValueError, match=r"RL2 \(a Gaussian GRU policy\) needs an environment with continuous "
                                         r"actions; BernoulliBandit has discrete=True"):
        RL2(BernoulliBandit(num_arms=2), gaussian_gru_policy(6, 2, hidden_size=4))
    with pytest.raises(ValueError, match="action_size must be an integer >= 1; got 0"):
        gaussian_gru_policy(6, 0)
    with pytest.raises(ValueError, match="init_log_std must be a number"):
        gaussian_gru_policy(6, 2, init_log_std="wide")
