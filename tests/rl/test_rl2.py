"""RL^2: the GRU policy, trial rollouts, GAE, the PPO-clip loss and update, and learning on a bandit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from finite_differences import fd_relative_error

from jmeta.rl import RL2, PPOConfig, gru_policy, ppo_loss, rl2_input, rl2_input_size, rollout_trial, trial_gae
from jmeta.rl.envs import BernoulliBandit, RandomTabularMDP, index_task
from jmeta.rl.ppo import ppo_update
from jmeta.rl.recurrent import categorical_entropy, categorical_log_prob


@pytest.fixture(scope="module")
def small():
    """A 3-armed bandit with 2 pulls per episode and a width-8 GRU policy."""
    env = BernoulliBandit(num_arms=3, horizon=2)
    policy = gru_policy(rl2_input_size(env), env.action_size, hidden_size=8, key=jax.random.key(0))
    task = index_task(env.sample_tasks(jax.random.key(1), 1), 0)
    return env, policy, task


def _gru_by_hand(params, h, x):
    """The GRU cell written out (flax's gate layout: r, z, n; no bias on the recurrent kernel)."""
    c = params["cell"]
    xi = x @ c["dense_i"]["kernel"] + c["dense_i"]["bias"]
    hh = h @ c["dense_h"]["kernel"]
    H = h.shape[-1]
    r = jax.nn.sigmoid(xi[:H] + hh[:H])
    z = jax.nn.sigmoid(xi[H:2 * H] + hh[H:2 * H])
    n = jnp.tanh(xi[2 * H:] + r * hh[2 * H:])
    h = (1 - z) * n + z * h
    return h, h @ params["pi"]["kernel"] + params["pi"]["bias"], (h @ params["v"]["kernel"] + params["v"]["bias"])[0]


def test_policy_step_equals_the_gru_equations(small):
    _, policy, _ = small
    h = jax.random.normal(jax.random.key(2), (8,))
    x = jax.random.normal(jax.random.key(3), (policy.input_size,))
    for a, b in zip(policy.step(policy.params, h, x), _gru_by_hand(policy.params, h, x)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_hand_unrolled_two_step_rollout_equals_the_scan():
    """Two single-pull episodes of one trial, unrolled in Python (same key splits), equal rollout_trial."""
    env = BernoulliBandit(num_arms=3, horizon=1)
    policy = gru_policy(rl2_input_size(env), 3, hidden_size=8, key=jax.random.key(0))
    params = jax.tree.map(lambda a: 3.0 * a, policy.params)  # sharper policy: the sampled actions matter
    task = {"p": jnp.array([0.2, 0.9, 0.5])}
    key = jax.random.key(7)
    trial = jax.jit(lambda p, k: rollout_trial(env, policy, p, task, k, 2))(params, key)

    h, prev_a, prev_r = jnp.zeros(8), -1, 0.0
    for e, k_e in enumerate(jax.random.split(key, 2)):
        k_reset, k_steps = jax.random.split(k_e)
        state, obs = env.reset(k_reset, task)
        (k_t,) = jax.random.split(k_steps, 1)
        x = jnp.concatenate([obs, jax.nn.one_hot(prev_a, 3), jnp.array([prev_r, 1.0])])
        h, logits, value = _gru_by_hand(params, h, x)
        a = jax.random.categorical(k_t, logits)
        state, obs, r, _ = env.step(state, a.astype(jnp.int32), task)
        np.testing.assert_allclose(trial.inputs[e, 0], x, rtol=1e-6, atol=1e-6)
        assert int(trial.actions[e, 0]) == int(a)
        assert float(trial.rewards[e, 0]) == float(r)
        np.testing.assert_allclose(trial.log_probs[e, 0], jax.nn.log_softmax(logits)[a], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(trial.values[e, 0], value, rtol=1e-5, atol=1e-6)
        prev_a, prev_r = int(a), float(r)
    assert bool(trial.mask.all())


def test_hidden_state_is_carried_across_episodes(small):
    env, policy, task = small
    params = jax.tree.map(lambda a: 3.0 * a, policy.params)
    trial = jax.jit(lambda k: rollout_trial(env, policy, params, task, k, 3))(jax.random.key(4))
    E, T = trial.rewards.shape
    assert (E, T) == (3, 2)
    # the RL^2 input: previous action/reward carried over episode boundaries, the start flag on step 0
    np.testing.assert_array_equal(trial.inputs[:, :, -1], [[1, 0]] * 3)
    np.testing.assert_array_equal(trial.inputs[0, 0, 1:4], 0.0)  # no previous action at the trial start
    for e in range(1, 3):
        np.testing.assert_array_equal(trial.inputs[e, 0, 1:4], np.eye(3)[int(trial.actions[e - 1, -1])])
        assert float(trial.inputs[e, 0, 4]) == float(trial.rewards[e - 1, -1])
    # re-running the policy over the whole trial from the trial start reproduces the behaviour log-probs ...
    logits, values = policy.unroll(params, trial.inputs.reshape(E * T, -1))
    np.testing.assert_allclose(categorical_log_prob(logits, trial.actions.reshape(-1)), trial.log_probs.reshape(-1),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(values, trial.values.reshape(-1), rtol=1e-5, atol=1e-5)
    # ... and resetting the hidden state at the start of episode 2 changes the outputs there
    logits_reset, _ = policy.unroll(params, trial.inputs[1])
    assert float(jnp.max(jnp.abs(logits_reset - logits[T:2 * T]))) > 1e-3


def test_rl2_input_layout():
    x = rl2_input(jnp.array([0.5, 0.25]), jnp.int32(2), jnp.float32(1.0), jnp.bool_(True), 4)
    np.testing.assert_array_equal(x, [0.5, 0.25, 0, 0, 1, 0, 1.0, 1.0])
    x0 = rl2_input(jnp.array([0.5, 0.25]), jnp.int32(-1), jnp.float32(0.0), jnp.bool_(False), 4)
    np.testing.assert_array_equal(x0, [0.5, 0.25, 0, 0, 0, 0, 0, 0])


def _gae_loop(r, v, gamma, lam):
    adv, nxt_adv, nxt_v = np.zeros(len(r)), 0.0, 0.0
    for t in reversed(range(len(r))):
        delta = r[t] + gamma * nxt_v - v[t]
        nxt_adv = delta + gamma * lam * nxt_adv
        adv[t], nxt_v = nxt_adv, v[t]
    return adv


def test_trial_gae_against_a_loop_and_masked_equals_compressed():
    rng = np.random.default_rng(0)
    r, v = rng.normal(size=12).astype(np.float32), rng.normal(size=12).astype(np.float32)
    adv, ret = trial_gae(jnp.asarray(r), jnp.asarray(v), discount=0.9, gae_lambda=0.8)
    np.testing.assert_allclose(adv, _gae_loop(r, v, 0.9, 0.8), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, adv + v, rtol=1e-6)
    mask = np.array([1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0], bool)
    adv_m, _ = trial_gae(jnp.asarray(r), jnp.asarray(v), discount=0.9, gae_lambda=0.8, mask=jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(adv_m)[mask], _gae_loop(r[mask], v[mask], 0.9, 0.8), rtol=1e-5, atol=1e-5)


def test_ppo_loss_gradient_against_finite_differences(small, x64):
    """The PPO-clip loss of a categorical policy (logits as parameters) and through the RL^2 GRU, float64."""
    rng = np.random.default_rng(0)
    L, A = 16, 4
    actions = jnp.asarray(rng.integers(0, A, L))
    old = jnp.asarray(rng.normal(size=(L, A)))
    theta = {"logits": old + 0.3 * jnp.asarray(rng.normal(size=(L, A))), "values": jnp.asarray(rng.normal(size=L))}
    old_lp = categorical_log_prob(old, actions)
    adv, ret = jnp.asarray(rng.normal(size=L)), jnp.asarray(rng.normal(size=L))
    mask = jnp.asarray(rng.random(L) > 0.2)

    def loss(p):
        lp = categorical_log_prob(p["logits"], actions)
        return ppo_loss(lp, old_lp, adv, p["values"], ret, categorical_entropy(p["logits"]), clip_eps=0.2,
                        value_coef=0.5, entropy_coef=0.01, mask=mask)[0]

    ratio = np.exp(np.asarray(categorical_log_prob(theta["logits"], actions) - old_lp))
    assert ((ratio < 0.8) | (ratio > 1.2)).any() and ((ratio > 0.8) & (ratio < 1.2)).any()  # both branches
    assert np.min(np.abs(np.abs(ratio - 1) - 0.2)) > 1e-3  # away from the kinks
    err, _ = fd_relative_error(loss, theta, n_dirs=4)
    assert err < 1e-6, err

    # the same loss through the recurrent unroll of RL2 (the loss the PPO update differentiates)
    env, policy, _ = small  # a 3-armed bandit with 2 pulls per episode, the width-8 GRU (built in float32)
    rl2 = RL2(env, policy, num_episodes=2, meta_batch_size=2, ppo=PPOConfig(num_minibatches=1))
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), policy.params)
    # a minibatch of 2 trials x 4 steps (RL^2 inputs of the right layout, random values), one step masked
    inputs = jnp.asarray(rng.normal(size=(2, 4, 6)))
    actions = jnp.asarray(rng.integers(0, 3, (2, 4)))
    logits, _ = jax.vmap(lambda x: policy.unroll(params, x))(inputs)
    mb = {"inputs": inputs, "actions": actions,
          "log_probs": categorical_log_prob(logits, actions) + jnp.asarray(rng.normal(scale=0.1, size=(2, 4))),
          "advantages": jnp.asarray(rng.normal(size=(2, 4))), "returns": jnp.asarray(rng.normal(size=(2, 4))),
          "mask": jnp.array([[True] * 4, [True, True, True, False]])}
    assert jax.tree.leaves(jax.eval_shape(lambda p: rl2._loss(p, mb)[0], params))[0].dtype == jnp.float64
    err, g = fd_relative_error(lambda p: rl2._loss(p, mb)[0], params, n_dirs=4)
    assert err < 1e-6, err
    assert all(float(jnp.abs(a).max()) > 0 for a in jax.tree.leaves(g))


def test_ppo_update_descends_and_checks_minibatches():
    rng = np.random.default_rng(1)
    N, A = 8, 3
    actions = jnp.asarray(rng.integers(0, A, (N, 5)))
    batch = {"actions": actions, "old": jnp.full((N, 5), -np.log(A), jnp.float32),
             "adv": jnp.asarray(rng.normal(size=(N, 5)), jnp.float32)}

    def loss_fn(p, mb):
        lp = categorical_log_prob(jnp.broadcast_to(p, mb["actions"].shape + (A,)), mb["actions"])
        return ppo_loss(lp, mb["old"], mb["adv"], jnp.zeros_like(lp), jnp.zeros_like(lp), jnp.zeros_like(lp),
                        clip_eps=0.2, value_coef=0.0, entropy_coef=0.0)

    import optax

    p0 = jnp.zeros(A)
    opt = optax.sgd(0.1)
    p1, _, metrics = ppo_update(loss_fn, p0, opt.init(p0), opt, batch, jax.random.key(0), epochs=2,
                                num_minibatches=4)
    assert float(loss_fn(p1, batch)[0]) < float(loss_fn(p0, batch)[0])
    assert set(metrics) >= {"loss", "policy_loss", "approx_kl", "clip_fraction"}
    with pytest.raises(ValueError, match="num_minibatches must divide the batch's leading axis 8; got 3"):
        ppo_update(loss_fn, p0, opt.init(p0), opt, batch, jax.random.key(0), epochs=1, num_minibatches=3)


def test_bad_inputs_one_clear_error_each(small):
    env, policy, _ = small
    # the action-size mismatch, horizon 0 and wrong task pytrees: tests/rl/test_rl_conformance.py
    with pytest.raises(ValueError, match=r"policy.input_size \(5\) must equal rl2_input_size\(env\)"):
        RL2(env, gru_policy(5, 3, hidden_size=8))
    with pytest.raises(ValueError, match=r"ppo.num_minibatches \(3\) must divide meta_batch_size \(8\)"):
        RL2(env, policy, meta_batch_size=8, ppo=PPOConfig(num_minibatches=3))
    with pytest.raises(ValueError, match="num_episodes must be an integer >= 1; got 0"):
        RL2(env, policy, num_episodes=0)
    with pytest.raises(ValueError, match="clip_eps must be a number > 0; got -0.1"):
        PPOConfig(clip_eps=-0.1)
    with pytest.raises(ValueError, match="learning_rate must be a number > 0; got 0.0"):
        PPOConfig(learning_rate=0.0)
    with pytest.raises(ValueError, match="hidden_size must be an integer >= 1; got 0"):
        gru_policy(5, 3, hidden_size=0)
    with pytest.raises(ValueError, match=r"policy input x must have shape \(6,\) for one time step of one trial; "
                                         r"got \(3,\)"):
        policy.step(policy.params, policy.initial_hidden(), jnp.zeros(3))
    rl2 = RL2(env, policy, meta_batch_size=4, ppo=PPOConfig(num_minibatches=2))
    with pytest.raises(ValueError, match=r"task\['p'\] must have shape \(3,\) for one task; got \(5,\)"):
        rl2.rollouts(policy.params, {"p": jnp.ones((2, 5))}, jax.random.key(0))
    with pytest.raises(ValueError, match="tasks leaves disagree on the task axis"):
        RL2(RandomTabularMDP(3, 2, 2), gru_policy(7, 2, hidden_size=4)).rollouts(
            None, {"P": jnp.ones((2, 3, 2, 3)), "R": jnp.ones((3, 3, 2))}, jax.random.key(0))


def test_the_step_compiles_once_and_is_deterministic():
    """On a random tabular MDP (the bandit's step is compiled by the learning test below)."""
    env = RandomTabularMDP(num_states=3, num_actions=2, horizon=3)
    policy = gru_policy(rl2_input_size(env), 2, hidden_size=8, key=jax.random.key(0))
    rl2 = RL2(env, policy, num_episodes=2, meta_batch_size=4, ppo=PPOConfig(epochs=1, num_minibatches=2))
    step = rl2.make_step()
    state = rl2.init(jax.random.key(0))
    states = []
    for _ in range(3):
        state, metrics = step(state)
        states.append(state)
    assert int(state.iteration) == 3 and metrics["episode_return"].shape == (2,)
    assert all(np.isfinite(float(metrics[k])) for k in ("loss", "policy_loss", "value_loss", "entropy"))
    again = step(rl2.init(jax.random.key(0)))[0]  # a fresh start: same result, still no new trace
    assert step.num_traces == 1
    jax.tree.map(np.testing.assert_array_equal, again.params, states[0].params)
    assert not np.array_equal(states[0].params["pi"]["kernel"], states[1].params["pi"]["kernel"])


def test_rl2_learns_a_five_armed_bandit():
    """Fixed-seed RL^2 on 5-armed bandits, trials of 10 single-pull episodes (Duan et al.'s n=10, k=5).

    Measured (300 iterations x 128 trials, 2000 held-out tasks, seeds 0-2, loaded 2-core CPU): trial return
    6.23 / 6.29 / 6.27 against 5.01 for the uniform random policy (0.501 per pull); episode 1 0.49-0.51 (no
    policy can beat 0.5 there in expectation), episodes 6-10 0.65-0.67 per pull. The test asks for margins
    of about 60% of those gaps: +0.08 per pull over random, +0.08 from episode 1 to episodes 6-10.
    """
    env = BernoulliBandit(num_arms=5)
    policy = gru_policy(rl2_input_size(env), 5, hidden_size=32, key=jax.random.key(0))
    rl2 = RL2(env, policy, num_episodes=10, meta_batch_size=128)
    state = rl2.init(jax.random.key(1000))
    step = rl2.make_step()
    for _ in range(300):
        state, _ = step(state)
    key = jax.random.key(99)  # held-out tasks: training draws its tasks from the state's key chain
    report = rl2.evaluate(state.params, key, 1000)
    before = rl2.evaluate(policy.params, key, 1000)
    random_per_pull = float(env.sample_tasks(jax.random.split(key)[0], 1000)["p"].mean())
    r = report["returns"]
    per_pull = r.mean()
    assert per_pull > random_per_pull + 0.08, (per_pull, random_per_pull)
    assert per_pull > before["returns"].mean() + 0.08, (per_pull, before["returns"].mean())
    assert r[:, 5:].mean() > r[:, 0].mean() + 0.08, report["summary"]
    assert abs(before["returns"].mean() - random_per_pull) < 0.03  # the untrained policy is about uniform
    s = report["summary"]
    assert s["return in episode 10"] == pytest.approx(r[:, 9].mean()) and s["return in episode 1 ci95"] > 0
