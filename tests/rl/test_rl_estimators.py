"""Inner policy-gradient estimators against the analytic gradient/Hessian of a linear-Gaussian bandit (float64).

Problem: one observation ``x`` (fixed), a Gaussian policy ``a ~ N(w.x + b, exp(s)^2)`` (1-d action), reward
``r(a) = -(a - c)^2``. Expected return ``J = -((w.x + b - c)^2 + exp(2 s))``, in closed form. For each
estimator we draw N independent one-step episodes, take each episode's gradient (and DiCE's Hessian) of its
surrogate, and require the sample mean within 4 standard errors of the analytic value (per entry), with the
standard error small enough that the check has power (below 5% of the largest analytic entry).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jmeta.models import from_apply
from jmeta.rl.estimators import dice_surrogate, lvc_surrogate, magic_box, reinforce_surrogate
from jmeta.rl.policies import GaussianPolicy

N = 40000
C = 0.7


def _setup():
    x = jnp.array([0.5, -1.0])
    model = from_apply(lambda p, o: (p["w"] @ o + p["b"])[None], {"w": jnp.array([0.3, 0.2]), "b": jnp.array(0.1)},
                       stateless=True)
    policy = GaussianPolicy(model, 2, 1, init_log_std=-0.5)
    params = policy.init()
    flat, unravel = ravel_pytree(params)

    def expected_return(f):
        p = unravel(f)
        mu = p["mean"]["w"] @ x + p["mean"]["b"]
        return -((mu - C) ** 2 + jnp.exp(2 * p["log_std"][0]))

    return x, policy, flat, unravel, expected_return


def _per_sample(fn, n=N, seed=0):
    """Per-episode derivatives: mean and standard error over n draws."""
    samples = jax.jit(jax.vmap(fn))(jax.random.split(jax.random.key(seed), n))
    samples = np.asarray(samples)
    return samples.mean(0), samples.std(0, ddof=1) / np.sqrt(n)


def _assert_within(mean, se, exact, k=4.0):
    exact = np.asarray(exact)
    assert np.all(se < 0.05 * np.abs(exact).max()), (se, exact)
    assert np.all(np.abs(mean - exact) <= k * se + 1e-12), (mean, exact, se)


@pytest.mark.parametrize("estimator", ["dice", "dice_baseline", "lvc", "reinforce", "lvc_behaviour"])
def test_expected_gradient_is_the_policy_gradient(x64, estimator):
    x, policy, flat, unravel, J = _setup()

    def one(key):
        def surrogate(f):
            p = unravel(f)
            a, _ = policy.sample(jax.lax.stop_gradient(p), x, key)
            a = jax.lax.stop_gradient(a)
            lp = policy.log_prob(p, x[None], a[None])  # [T=1]
            r = -jnp.sum((a - C) ** 2)[None]
            m = jnp.ones(1)
            if estimator == "dice":
                return dice_surrogate(lp, r, m)
            if estimator == "dice_baseline":
                return dice_surrogate(lp, r, m, values=jnp.array([-0.4]))
            if estimator == "lvc":
                return lvc_surrogate(lp, r, m)
            if estimator == "lvc_behaviour":
                return lvc_surrogate(lp, r, m, behaviour_log_probs=jax.lax.stop_gradient(lp))
            return reinforce_surrogate(lp, r, m)
        return jax.grad(surrogate)(flat)

    mean, se = _per_sample(one)
    _assert_within(mean, se, jax.grad(J)(flat))


def test_dice_hessian_is_the_exact_hessian(x64):
    x, policy, flat, unravel, J = _setup()

    def one(key):
        def surrogate(f):
            p = unravel(f)
            a, blp = policy.sample(jax.lax.stop_gradient(p), x, key)
            a = jax.lax.stop_gradient(a)
            lp = policy.log_prob(p, x[None], a[None])
            r = -jnp.sum((a - C) ** 2)[None]
            return dice_surrogate(lp, r, jnp.ones(1))
        return jax.hessian(surrogate)(flat)

    mean, se = _per_sample(one, n=100000)
    exact = np.asarray(jax.hessian(J)(flat))
    # entries that are exactly 0 analytically still get the 4-SE test; the power check is on the largest entry
    assert np.all(np.abs(mean - exact) <= 4 * se + 1e-12), (mean, exact, se)
    assert se.max() < 0.1 * np.abs(exact).max()
    # the REINFORCE surrogate's Hessian misses the score-function term: its mean is far off
    def reinforce_h(key):
        def surrogate(f):
            p = unravel(f)
            a, _ = policy.sample(jax.lax.stop_gradient(p), x, key)
            a = jax.lax.stop_gradient(a)
            return reinforce_surrogate(policy.log_prob(p, x[None], a[None]), -jnp.sum((a - C) ** 2)[None], jnp.ones(1))
        return jax.hessian(surrogate)(flat)
    m2, se2 = _per_sample(reinforce_h, n=20000)
    assert np.max(np.abs(m2 - exact) / (se2 + 1e-12)) > 10


def test_dice_two_step_hessian_with_cross_terms(x64):
    """Two steps, state-independent policy, r_1 = -(a_1 - c)^2, r_2 = -(a_1 + a_2 - 2c)^2: the return depends
    on both actions, so the exact Hessian needs DiCE's cumulative log-probabilities."""
    def J(f):
        mu, s = f[0], f[1]
        var = jnp.exp(2 * s)
        return -((mu - C) ** 2 + var) - ((2 * mu - 2 * C) ** 2 + 2 * var)

    flat = jnp.array([0.2, -0.3])

    def one(key):
        def surrogate(f):
            mu, s = f[0], f[1]
            eps = jax.random.normal(key, (2,))
            a = jax.lax.stop_gradient(mu + jnp.exp(s) * eps)
            lp = -0.5 * ((a - mu) / jnp.exp(s)) ** 2 - s
            r = jnp.stack([-(a[0] - C) ** 2, -(a[0] + a[1] - 2 * C) ** 2])
            return 2 * dice_surrogate(lp, r, jnp.ones(2))  # mean over 2 steps -> times 2 is the sum
        return jax.hessian(surrogate)(flat)

    mean, se = _per_sample(one, n=100000)
    exact = np.asarray(jax.hessian(J)(flat))
    assert np.all(np.abs(mean - exact) <= 4 * se), (mean, exact, se)
    assert se.max() < 0.1 * np.abs(exact).max()


def test_magic_box_and_behaviour_weight_agree_at_sampling_point(x64):
    lp0 = jnp.array([-0.3, -1.2])
    f1 = lambda d: lvc_surrogate(lp0 + d, jnp.array([1.0, -2.0]), jnp.ones(2))  # noqa: E731
    f2 = lambda d: lvc_surrogate(lp0 + d, jnp.array([1.0, -2.0]), jnp.ones(2), behaviour_log_probs=lp0)  # noqa
    z = jnp.zeros(2)
    np.testing.assert_allclose(f1(z), f2(z))
    np.testing.assert_allclose(jax.grad(f1)(z), jax.grad(f2)(z))
    np.testing.assert_allclose(jax.hessian(f1)(z), jax.hessian(f2)(z))
    assert float(magic_box(jnp.array(3.0))) == 1.0
