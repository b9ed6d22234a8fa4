"""max_pool_2x2 against lax.reduce_window where windows tie and hold NaNs: the same values, and the gradient goes to
the first maximum of each window (row-major), as reduce_window's select_and_scatter and PyTorch do."""

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.models.conv import max_pool_2x2


def _ref(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def test_ties_send_the_gradient_to_the_first_maximum():
    # integer values in {-1, 0, 1}: most 2x2 windows tie; an odd width drops the last column
    x = jnp.round(jax.random.uniform(jax.random.key(0), (3, 6, 7, 4), minval=-1.5, maxval=1.5))
    assert int(jnp.sum(_ref(x) == jnp.max(x))) > 0
    np.testing.assert_array_equal(max_pool_2x2(x), _ref(x))
    w = jax.random.normal(jax.random.key(1), _ref(x).shape)  # distinct cotangents: a misrouted one shows
    f = jax.jit(lambda p: jax.grad(lambda x: jnp.sum(w * p(x)))(x), static_argnums=0)
    g, g_ref = f(max_pool_2x2), f(_ref)
    np.testing.assert_array_equal(g, g_ref)
    # one cotangent per window, and it lands on one element of it
    assert int(jnp.sum(g != 0)) == w.size


def test_second_derivative_is_the_selection():
    x = jax.random.normal(jax.random.key(2), (2, 4, 4, 3))
    h = jax.jit(jax.hessian(lambda x: jnp.sum(jnp.sin(max_pool_2x2(x)))))(x)
    picked = jax.grad(lambda x: jnp.sum(max_pool_2x2(x)))(x)  # 1 where the maximum is
    expected = jnp.diag((-jnp.sin(x) * picked).ravel()).reshape(x.shape * 2)
    np.testing.assert_allclose(h, expected, atol=1e-6)


def test_nan_propagates_and_takes_the_gradient():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    x = x.at[0, 1, 0, 0].set(jnp.nan).at[0, 2, 3, 0].set(jnp.nan)  # bottom-left of window (0, 0); one of (1, 1)
    y = max_pool_2x2(x)
    assert bool(jnp.isnan(y[0, 0, 0, 0])) and bool(jnp.isnan(y[0, 1, 1, 0]))
    np.testing.assert_array_equal(y[0, 0, 1, 0], 7.0)
    np.testing.assert_array_equal(y[0, 1, 0, 0], 13.0)
    # the cotangent 1 on the NaN windows only: it lands on their NaN element
    g = jax.grad(lambda x: jnp.sum(jnp.where(jnp.isnan(max_pool_2x2(x)), 1.0, 0.0) * max_pool_2x2(x)))(x)
    assert float(g[0, 1, 0, 0]) == 1.0 and float(g[0, 2, 3, 0]) == 1.0 and float(jnp.sum(g)) == 2.0
