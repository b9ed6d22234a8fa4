"""jmeta.ops.draws: flat draws reshaped give jax.random's numbers bit for bit, eagerly, under jit and under vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta.ops import draws


@pytest.mark.parametrize("shape", [(3, 3, 2, 4), (5, 1), (7,), ()])
def test_same_numbers_as_jax_random(shape):
    key = jax.random.key(3)
    np.testing.assert_array_equal(draws.normal(key, shape), jax.random.normal(key, shape))
    np.testing.assert_array_equal(draws.uniform(key, shape, jnp.float32, -2.0, 0.5),
                                  jax.random.uniform(key, shape, jnp.float32, -2.0, 0.5))


def test_same_numbers_under_jit_and_vmap():
    keys = jax.random.split(jax.random.key(0), 3)
    ours = jax.jit(jax.vmap(lambda k: draws.normal(k, (4, 6))))(keys)
    ref = jax.jit(jax.vmap(lambda k: jax.random.normal(k, (4, 6))))(keys)
    np.testing.assert_array_equal(ours, ref)
