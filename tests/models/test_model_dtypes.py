"""One dtype per model, also under ``jax_enable_x64`` (issue 17: conv4 made float64 kernels beside float32
BatchNorm and head parameters, and the MAML gradient warned that scatter inputs had incompatible types)."""

import warnings

import jax
import jax.numpy as jnp
import pytest

from jmeta.algorithms import MAML
from jmeta.models import conv4, mlp, resnet12
from jmeta.tasks import TaskBatch

# (build, one example's shape, loss, first_order): ResNet-12's second-order program takes a minute to compile on
# two CPU cores; its parameter dtypes come from the same Conv2d layer as conv4's, checked second-order. Two
# residual blocks (as conv4's two blocks) hold every kind of layer of the four (3x3 and 1x1 convolutions,
# BatchNorm, pooling, head) at half the compile.
MODELS = {
    "conv4": (lambda: conv4(3, input_shape=(8, 8, 1), hidden=4, num_blocks=2), (8, 8, 1), "cross_entropy", False),
    "resnet12": (lambda: resnet12(3, input_shape=(16, 16, 3), widths=(2, 2)), (16, 16, 3), "cross_entropy", True),
    "mlp": (lambda: mlp(1, (8, 8), 1), (1,), "mse", False),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_dtype_per_model_and_a_warning_free_maml_gradient_under_x64(x64, name):
    build, shape, loss, first_order = MODELS[name]
    model = build()
    dtypes = {leaf.dtype for leaf in jax.tree.leaves((model.params, model.state))}
    assert dtypes == {jnp.dtype(jnp.float32)}, (name, dtypes)
    kx, kq = jax.random.split(jax.random.key(1))
    x, q = jax.random.normal(kx, (3, *shape)), jax.random.normal(kq, (3, *shape))   # float64 under x64
    assert x.dtype == jnp.float64
    y = jnp.arange(3) if loss == "cross_entropy" else jnp.ones((3, 1))
    algo = MAML(model.apply, loss=loss, inner_lr=0.1, first_order=first_order)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = jax.jit(jax.grad(lambda mp: algo.task_loss(mp, model.state, TaskBatch(x, y, q, y))[0]))(
            algo.init(model.params))
    assert {leaf.dtype for leaf in jax.tree.leaves(g)} == {jnp.dtype(jnp.float32)}
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(g))
