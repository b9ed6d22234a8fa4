"""ANIL's default ``adapt_params="head"`` adapts the head of jmeta's own models (issue 17: it matched no
parameter of the MLP, whose layers are ``layers_0..2``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta.algorithms import ANIL
from jmeta.models import conv4, mlp
from jmeta.tasks import Sinusoid, TaskBatch


def _image_task():
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
    return TaskBatch(x, jnp.arange(3), x, jnp.arange(3))


CASES = {
    "mlp": (lambda: mlp(1, (8, 8), 1), "mse", lambda: jax.tree.map(lambda a: a[0], Sinusoid(5, 5).sample(
        jax.random.key(0), 1)), "layers_2"),
    "conv4": (lambda: conv4(3, input_shape=(8, 8, 1), hidden=2, num_blocks=2, conv_impl="lax"), "cross_entropy",
              _image_task, "head"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_anil_defaults_adapt_only_the_declared_head(name):
    build, loss, task_fn, head = CASES[name]
    model, task = build(), task_fn()
    assert model.apply.head == head
    algo = ANIL(model.apply, loss=loss, inner_lr=0.5)
    mp = algo.init(model.params)
    adapted = algo.adapt(mp, model.state, task.support_x, task.support_y)
    for key in model.params:
        moved = [bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(adapted[key]),
                                                        jax.tree.leaves(model.params[key]))]
        assert all(moved) if key == head else not any(moved), (key, moved)
    # the meta-gradient reaches the body through the adapted head
    g = jax.grad(lambda m: algo.task_loss(m, model.state, task)[0])(mp)
    body = [k for k in model.params if k != head]
    assert any(float(jnp.abs(a).max()) > 0 for k in body for a in jax.tree.leaves(g["params"][k]))


def test_anil_explicit_adapt_params_still_wins():
    model = mlp(1, (8, 8), 1)
    task = jax.tree.map(lambda a: a[0], Sinusoid(5, 5).sample(jax.random.key(0), 1))
    algo = ANIL(model.apply, loss="mse", inner_lr=0.5, adapt_params="layers_1")
    adapted = algo.adapt(algo.init(model.params), model.state, task.support_x, task.support_y)
    np.testing.assert_array_equal(adapted["layers_2"]["kernel"], model.params["layers_2"]["kernel"])
    assert bool(jnp.any(adapted["layers_1"]["kernel"] != model.params["layers_1"]["kernel"]))
