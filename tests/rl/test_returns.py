"""One GAE: :func:`jmeta.rl.returns.gae` and :func:`jmeta.rl.rl2.trial_gae` against hand-unrolled references."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jmeta.rl import trial_gae
from jmeta.rl.returns import gae


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
