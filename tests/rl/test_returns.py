"""One GAE: :func:`jmeta.rl.returns.gae` and :func:`jmeta.rl.rl2.trial_gae` against hand-unrolled references."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.rl import trial_gae
from jmeta.rl.returns import fit_linear_baseline, gae


def _skip_reference(r, v, m, gamma, lam):
    """GAE by a Python loop over one sequence, masked steps skipped (their advantage 0), V = 0 past the end."""
    adv, a_next, v_next = np.zeros(len(r)), 0.0, 0.0
    for t in reversed(range(len(r))):
        if m[t]:
            a_next = r[t] + gamma * v_next - v[t] + gamma * lam * a_next
            v_next = v[t]
            adv[t] = a_next
    return adv


def _episode_reference(r, v, done_at, gamma, lam):
    """GAE of one episode that ends after step ``done_at`` (rllab's path), written out term by term:
    ``A_t = sum_{k=0}^{done_at - t} (gamma lam)^k delta_{t+k}``, ``V(s_{done_at + 1}) = 0``; 0 afterwards."""
    T = len(r)
    vv = [v[t] if t <= done_at else 0.0 for t in range(T)] + [0.0]
    delta = [r[t] + gamma * vv[t + 1] - vv[t] for t in range(done_at + 1)]
    return np.array([sum((gamma * lam) ** k * delta[t + k] for k in range(done_at + 1 - t)) if t <= done_at else 0.0
                     for t in range(T)])


def test_gae_equals_the_unrolled_sum_per_done_masked_episode(x64):
    rng = np.random.default_rng(0)
    E, T = 4, 9
    r, v = rng.normal(size=(E, T)), rng.normal(size=(E, T))
    done_at = [T - 1, 3, 0, 6]  # a full episode, two early dones, one after the first step
    mask = np.array([[1.0 if t <= d else 0.0 for t in range(T)] for d in done_at])
    for gamma, lam in ((0.99, 1.0), (0.9, 0.8), (0.5, 0.0)):
        got = np.asarray(gae(jnp.asarray(r), jnp.asarray(v), jnp.asarray(mask), gamma, lam))
        want = np.stack([_episode_reference(r[e], v[e], done_at[e], gamma, lam) for e in range(E)])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_gae_and_trial_gae_are_one_estimator_over_arbitrary_masks(x64):
    rng = np.random.default_rng(1)
    L = 14
    r, v = rng.normal(size=L), rng.normal(size=L)
    # an RL^2 trial: episode 1 done after step 2, episode 2 full, episode 3 done after its first step
    m = np.array([1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0], bool)
    want = _skip_reference(r, v, m, 0.95, 0.9)
    adv, ret = trial_gae(jnp.asarray(r), jnp.asarray(v), discount=0.95, gae_lambda=0.9, mask=jnp.asarray(m))
    np.testing.assert_allclose(adv, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(ret, np.asarray(adv) + v)
    np.testing.assert_array_equal(gae(jnp.asarray(r), jnp.asarray(v), jnp.asarray(m), 0.95, 0.9), adv)
    # float 0/1 masks, a batch axis and no mask at all give the same numbers
    batch = gae(jnp.asarray(np.stack([r, r])), jnp.asarray(np.stack([v, v])),
                jnp.asarray(np.stack([m, np.ones(L, bool)]).astype(float)), 0.95, 0.9)
    np.testing.assert_array_equal(batch[0], adv)
    np.testing.assert_array_equal(batch[1], trial_gae(jnp.asarray(r), jnp.asarray(v), discount=0.95,
                                                      gae_lambda=0.9)[0])
    np.testing.assert_allclose(batch[1], _skip_reference(r, v, np.ones(L, bool), 0.95, 0.9), rtol=1e-12, atol=1e-12)


def test_gae_keeps_float32():
    r = jnp.ones((2, 5), jnp.float32)
    assert gae(r, r, jnp.ones((2, 5), jnp.float32), 0.99, 1.0).dtype == jnp.float32
    assert trial_gae(r[0], r[0], discount=0.99, gae_lambda=0.95)[0].dtype == jnp.float32


def _baseline_data(tasks=5, episodes=3, horizon=20, obs_size=17, seed=0):
    rng = np.random.default_rng(seed)
    obs = jnp.asarray(rng.normal(size=(tasks, episodes, horizon, obs_size)))
    returns = jnp.asarray(rng.normal(size=(tasks, episodes, horizon)))
    mask = jnp.asarray(rng.random((tasks, episodes, horizon)) < 0.9, obs.dtype)
    return obs, returns, mask


def test_vmapped_linear_baseline_makes_no_batched_lapack_call():
    """Over a meta-batch, every LAPACK call of the baseline fit gets one matrix (``[38, 38]``), never a batch.

    A batched CPU LAPACK call whose cost ``batch * n^3`` exceeds 2e5 flops deadlocked XLA's thread pool under
    jaxlib 0.10.x (``benchmarks/lapack_deadlock.py``): 5 tasks x ``[38, 38]`` HalfCheetah baselines did.
    """
    obs, returns, mask = _baseline_data()
    text = jax.jit(jax.vmap(fit_linear_baseline)).trace(obs, returns, mask).lower(
        lowering_platforms=("cpu",)).as_text()
    calls = [line for line in text.splitlines() if re.search(r"custom_call @lapack_", line)]
    assert any("@lapack_sgetrf_ffi" in line for line in calls), "the fit solves with LAPACK (an LU per solve)"
    for line in calls:
        assert re.search(r'num_batch_dims = "0"', line), f"batched LAPACK call: {line.strip()[:200]}"


def test_vmapped_linear_baseline_equals_the_per_task_fit(x64):
    """The sequential solve under ``vmap`` (and nested ``vmap``) gives each task's own fit; no gradient flows."""
    obs, returns, mask = _baseline_data()
    loop = np.stack([np.asarray(fit_linear_baseline(obs[i], returns[i], mask[i])) for i in range(5)])
    np.testing.assert_allclose(jax.jit(jax.vmap(fit_linear_baseline))(obs, returns, mask), loop, rtol=1e-10)
    nested = jax.vmap(jax.vmap(fit_linear_baseline))(obs.reshape(1, *obs.shape), returns[None], mask[None])
    np.testing.assert_allclose(nested[0], loop, rtol=1e-10)
    # the normal equations hold for each task: F^T F c = F^T y (up to the ridge term 1e-5 c)
    from jmeta.rl.returns import baseline_features
    f = np.asarray(baseline_features(obs[2], mask[2])).reshape(-1, 38)
    y = np.asarray(returns[2] * mask[2]).reshape(-1)
    np.testing.assert_allclose(f.T @ f @ loop[2] + 1e-5 * loop[2], f.T @ y, atol=1e-8)
    g = jax.grad(lambda o: jnp.sum(jax.vmap(fit_linear_baseline)(o, returns, mask)))(obs)
    assert not np.any(np.asarray(g))
