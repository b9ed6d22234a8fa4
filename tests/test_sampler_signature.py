"""One sampler signature, ``sample(key, num_tasks, data)``, for every task family and user ``sample_fn``.

The forms before it (``EpisodeSampler.sample(images, key, n)``, ``sample_one(images, key)``, a user
``sample_fn(key, n)``) still work for one release, warn, and give the same result; the data stay an argument
of the compiled step (not a constant baked into the program).
"""

from __future__ import annotations

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmeta.algorithms import MAML, ProtoNet
from jmeta.models import mlp
from jmeta.tasks import EpisodeSampler, Sinusoid
from jmeta.tasks.base import sample_tasks
from jmeta.train import evaluate, init_train_state, make_meta_step

IMAGES_SHAPE = (40, 20, 12, 12, 1)


@pytest.fixture(scope="module")
def images():
    return jnp.asarray(np.random.default_rng(0).integers(0, 256, IMAGES_SHAPE, dtype=np.uint8))


def _same(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_sinusoid_takes_no_data():
    fam, key = Sinusoid(5, 5), jax.random.key(0)
    _same(fam.sample(key, 3), fam.sample(key, 3, None))
    _same(fam.sample(key, 3), fam.sample(key, 3, ()))
    with pytest.raises(TypeError, match="Sinusoid.sample samples without data"):
        fam.sample(key, 3, jnp.zeros(2))
    assert fam == Sinusoid(5, 5) and hash(fam) == hash(Sinusoid(5, 5)) and jax.tree.leaves(fam) == []


def test_episode_sampler_old_order_warns_and_agrees(images):
    sampler, key = EpisodeSampler(5, 1, 2), jax.random.key(3)
    new = sampler.sample(key, 4, images)
    with pytest.warns(DeprecationWarning, match=r"sample\(key, num_tasks, images\)"):
        old = sampler.sample(images, key, 4)
    _same(new, old)
    with pytest.warns(DeprecationWarning, match=r"sample_one\(key, images\)"):
        one_old = sampler.sample_one(images, key)
    _same(sampler.sample_one(key, images), one_old)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampler.sample(key, 4, images=images)
        sampler.bind(images).sample(key, 4)
    with pytest.raises(TypeError, match="its images are bound"):
        sampler.bind(images).sample(key, 4, images)


def _episode_setup(images):
    sampler = EpisodeSampler(3, 1, 2)
    apply = lambda p, s, x, *, train: (x.reshape(x.shape[0], -1) @ p["w"], s)  # noqa: E731
    alg = ProtoNet(apply, n_way=3)
    params = {"w": jnp.ones((int(np.prod(IMAGES_SHAPE[2:])), 4)) / 100}
    opt = optax.sgd(0.1)
    return sampler, alg, init_train_state(alg, params, None, opt), opt


def test_data_is_an_argument_of_the_compiled_step(images):
    sampler, alg, state, opt = _episode_setup(images)
    dims = "x".join(map(str, IMAGES_SHAPE))
    step = make_meta_step(alg, sampler.sample, opt, meta_batch_size=2)
    text = step.lower(state, jax.random.key(0), images).as_text()
    main = re.search(r"func\.func public @main\((.*?)\) ->", text, re.S).group(1)
    assert f"tensor<{dims}xui8>" in main  # the images come in as an argument
    assert not re.search(rf"constant.*tensor<{dims}xui8>", text)
    # the check can fail: a sampler closing over the images bakes them into the program
    baked = make_meta_step(alg, lambda k, n, d: sampler.sample(k, n, images), opt, meta_batch_size=2)
    text = baked.lower(state, jax.random.key(0)).as_text()
    assert re.search(rf"constant.*tensor<{dims}xui8>", text)


def test_two_argument_sample_fn_warns_and_gives_the_same_step():
    model = mlp(hidden=(8,), key=jax.random.key(0))
    alg = MAML(model.apply, inner_lr=0.1)
    opt = optax.adam(1e-3)
    state = init_train_state(alg, model.params, model.state, opt)
    fam = Sinusoid(5, 5)
    new = make_meta_step(alg, fam.sample, opt, meta_batch_size=2)(state, jax.random.key(1))
    old_step = make_meta_step(alg, lambda key, n: fam.sample(key, n), opt, meta_batch_size=2)
    with pytest.warns(DeprecationWarning, match=r"sample_fn taking \(key, num_tasks\) is deprecated"):
        old = old_step(state, jax.random.key(1))
    _same(new, old)
    with pytest.raises(TypeError, match=r"sample_fn takes only \(key, num_tasks\)"):
        old_step(state, jax.random.key(1), jnp.zeros(3))

    kw = dict(num_tasks=4, batch_size=2)
    r_new = evaluate(alg, state.meta_params, state.model_state, fam.sample, jax.random.key(2), **kw)
    with pytest.warns(DeprecationWarning, match="deprecated"):
        r_old = evaluate(alg, state.meta_params, state.model_state, lambda k, n: fam.sample(k, n),
                         jax.random.key(2), **kw)
    assert r_new == r_old


def test_a_type_error_inside_the_sampler_is_not_taken_for_the_old_signature():
    def sampler(key, num_tasks, data):
        raise TypeError("inside the sampler")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError, match="inside the sampler"):
            sample_tasks(sampler, jax.random.key(0), 2)
    with pytest.raises(TypeError, match=r"sample_fn must take \(key, num_tasks, data\)"):
        sample_tasks(lambda key: None, jax.random.key(0), 2)
