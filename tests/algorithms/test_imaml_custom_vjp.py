"""iMAML through models without forward-mode derivatives (custom_vjp convolutions): the implicit
meta-gradient with reverse-over-reverse Hessian-vector products (``hvp="reverse"``) agrees with
forward-over-reverse on the same model built from plain convolutions, and the default ``hvp="auto"``
picks the product that works (issue 17: ``IMAML(conv4(...).apply)`` failed on the CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta.algorithms import IMAML
from jmeta.models.conv import conv4
from jmeta.tasks import TaskBatch


def _task():
    kx, kq = jax.random.split(jax.random.key(1))
    return TaskBatch(support_x=jax.random.normal(kx, (6, 8, 8, 1)), support_y=jnp.array([0, 0, 1, 1, 2, 2]),
                     query_x=jax.random.normal(kq, (6, 8, 8, 1)), query_y=jnp.array([0, 1, 2, 0, 1, 2]))


def _meta_grad(conv_impl, **hvp):
    """iMAML's meta-gradient on a small conv4; ``conv_impl=None`` and no ``hvp``: the defaults."""
    impl = {} if conv_impl is None else {"conv_impl": conv_impl}
    model = conv4(3, input_shape=(8, 8, 1), hidden=4, num_blocks=2, key=jax.random.key(0), **impl)
    algo = IMAML(model.apply, loss="cross_entropy", reg_lambda=2.0, inner_lr=0.1, num_steps=5, cg_steps=5, **hvp)
    mp = algo.init(model.params)
    return jax.jit(jax.grad(lambda m: algo.task_loss(m, model.state, _task())[0]))(mp)


@pytest.fixture(scope="module")
def reference():
    """Forward-over-reverse products through plain (lax) convolutions."""
    grads = _meta_grad("lax", hvp="forward")
    assert any(float(jnp.abs(a).max()) > 1e-4 for a in jax.tree.leaves(grads))
    return grads


def _assert_close(got, want):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5)


def test_imaml_meta_gradient_same_with_custom_vjp_convolutions(reference):
    _assert_close(_meta_grad("patches_vjp", hvp="reverse"), reference)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="conv_impl='auto' is patches_vjp on the CPU only")
def test_imaml_defaults_on_conv4_compute_the_meta_gradient_on_cpu(reference):
    # conv4's default conv_impl="auto" is the custom_vjp form on the CPU; iMAML's default hvp="auto" must
    # then use reverse-over-reverse products (forward ones fail to lower: "can't apply forward-mode autodiff")
    _assert_close(_meta_grad(None), reference)


def test_imaml_auto_hvp_is_forward_without_custom_vjp_and_reverse_with_it():
    task = _task()
    for impl, forward in (("lax", True), ("patches", True), ("patches_vjp", False)):
        model = conv4(3, input_shape=(8, 8, 1), hidden=4, num_blocks=2, conv_impl=impl)
        algo = IMAML(model.apply, loss="cross_entropy")
        assert algo.hvp == "auto"
        assert algo.forward_hvp(model.params, None, model.state, task.support_x, task.support_y) is forward, impl
    assert IMAML(model.apply, hvp="reverse").forward_hvp(model.params, None, model.state, task.support_x,
                                                         task.support_y) is False
    with pytest.raises(ValueError, match="hvp must be one of .*'auto'"):
        IMAML(model.apply, hvp="backward")
