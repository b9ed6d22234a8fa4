"""iMAML through models without forward-mode derivatives (custom_vjp convolutions): the implicit
meta-gradient with reverse-over-reverse Hessian-vector products (``hvp="reverse"``) agrees with
forward-over-reverse on the same model built from plain convolutions."""

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.algorithms import IMAML
from jmeta.models.conv import conv4
from jmeta.tasks import TaskBatch


def _task():
    kx, kq = jax.random.split(jax.random.key(1))
    return TaskBatch(support_x=jax.random.normal(kx, (6, 8, 8, 1)), support_y=jnp.array([0, 0, 1, 1, 2, 2]),
                     query_x=jax.random.normal(kq, (6, 8, 8, 1)), query_y=jnp.array([0, 1, 2, 0, 1, 2]))


def test_imaml_meta_gradient_same_with_custom_vjp_convolutions():
    task = _task()
    grads = {}
    for impl, hvp in (("lax", "forward"), ("patches_vjp", "reverse")):
        model = conv4(3, input_shape=(8, 8, 1), hidden=4, num_blocks=2, conv_impl=impl, key=jax.random.key(0))
        algo = IMAML(model.apply, loss="cross_entropy", reg_lambda=2.0, inner_lr=0.1, num_steps=5, cg_steps=5,
                     hvp=hvp)
        mp = algo.init(model.params)
        grads[impl] = jax.jit(jax.grad(lambda m: algo.task_loss(m, model.state, task)[0]))(mp)
    leaves_a, leaves_b = jax.tree.leaves(grads["lax"]), jax.tree.leaves(grads["patches_vjp"])
    assert any(float(jnp.abs(a).max()) > 1e-4 for a in leaves_a)
    for a, b in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5)
