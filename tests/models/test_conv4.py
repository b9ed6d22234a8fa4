"""Conv4: shapes, names, conv implementations agree, max-pool, BatchNorm modes, MAML++ per-step BatchNorm."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta.algorithms import ANIL, MAML
from jmeta.models.conv import Conv4, conv4, conv4_feature_dim, max_pool_2x2, with_per_step
from jmeta.tasks.base import TaskBatch


def _images(n, shape=(28, 28, 1), seed=0):
    return jax.random.uniform(jax.random.key(seed), (n, *shape))


@pytest.mark.parametrize("kwargs,shape,feat", [
    (dict(), (28, 28, 1), 64),
    (dict(pool="stride"), (28, 28, 1), 64),
    (dict(input_shape=(84, 84, 3), hidden=32), (84, 84, 3), 800),
])
def test_shapes_and_names(kwargs, shape, feat):
    def build(x):  # shapes only (jax.eval_shape): no initial weights drawn, no program compiled
        m = conv4(5, **kwargs)
        return m.params, m.state, m.apply(m.params, m.state, x, train=True)[0]

    params, state, out = jax.eval_shape(build, jax.ShapeDtypeStruct((4, *shape), jnp.float32))
    assert sorted(params) == ["block_0", "block_1", "block_2", "block_3", "head"]
    assert params["head"]["kernel"].shape == (feat, 5)
    assert params["block_0"]["conv"]["kernel"].shape == (3, 3, shape[2], kwargs.get("hidden", 64))
    assert sorted(state["block_0"]["bn"]) == ["mean", "var"]
    assert out.shape == (4, 5)


def test_embedding_only_mode():
    m = conv4(None)
    assert "head" not in m.params
    z, _ = jax.eval_shape(lambda x: m.apply(m.params, m.state, x, train=False), _images(3))  # shapes: no compile
    assert z.shape == (3, conv4_feature_dim((28, 28, 1)))


def test_uint8_inputs_are_scaled():
    m = conv4(5, conv_impl="lax")
    apply = jax.jit(m.apply, static_argnames="train")  # one compile per input dtype, not one per eager op
    x8 = (np.asarray(_images(3)) * 255).astype(np.uint8)
    a, _ = apply(m.params, m.state, jnp.asarray(x8), train=False)
    b, _ = apply(m.params, m.state, jnp.asarray(x8, jnp.float32) / 255, train=False)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="pool"):
        conv4(5, pool="avg")
    with pytest.raises(ValueError, match="conv_impl"):
        conv4(5, conv_impl="fft")
    with pytest.raises(ValueError, match="n_way"):
        conv4(0)
    with pytest.raises(ValueError, match="too small"):
        conv4(5, input_shape=(8, 8, 1))
    m = conv4(5)
    with pytest.raises(ValueError, match="input channels"):
        m.apply(m.params, m.state, _images(2, (28, 28, 3)), train=True)


def test_flattening_conv4_refuses_other_image_sizes():
    """pool='max' flattens the feature map, so the head's width is fixed by input_shape: other image sizes
    get a ValueError naming both sizes (not a dot_general TypeError inside the head)."""
    m = conv4(5, hidden=4, input_shape=(28, 28, 1))
    msg = r"Conv4 image height and width must be \(28, 28\) \(input_shape=\(28, 28, 1\).*got \(32, 32\)"
    with pytest.raises(ValueError, match=msg):
        m.apply(m.params, m.state, _images(2, (32, 32, 1)), train=True)
    with pytest.raises(ValueError, match=r"must be \(28, 28\).*got \(29, 28\)"):  # same feature width: still refused
        jax.jit(lambda x: m.apply(m.params, m.state, x, train=False))(_images(2, (29, 28, 1)))
    e = conv4(None, hidden=4, input_shape=(28, 28, 1))    # embedding only: the width would silently change
    with pytest.raises(ValueError, match=r"must be \(28, 28\).*got \(32, 32\)"):
        e.apply(e.params, e.state, _images(2, (32, 32, 1)), train=True)
    # pool='stride' takes a spatial mean: any size works
    s = conv4(5, hidden=4, input_shape=(28, 28, 1), pool="stride")
    out, _ = jax.eval_shape(lambda x: s.apply(s.params, s.state, x, train=True), _images(2, (32, 32, 1)))
    assert out.shape == (2, 5)


def test_max_pool_matches_reduce_window():
    x = jax.random.normal(jax.random.key(3), (2, 7, 6, 3))  # odd height: last row dropped
    ref = lambda x: jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")  # noqa
    np.testing.assert_array_equal(max_pool_2x2(x), ref(x))
    g = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(max_pool_2x2(x)))))(x)  # compiled once, not op by op
    gr = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(ref(x)))))(x)
    np.testing.assert_allclose(g, gr, rtol=1e-6)


SMALL = dict(hidden=4, num_blocks=2, input_shape=(8, 8, 1), conv_impl="lax")


def _task(n_way=3, k=1, q=2, seed=0, shape=(8, 8, 1)):
    sx = _images(n_way * k, shape, seed=seed)
    qx = _images(n_way * q, shape, seed=seed + 1)
    return TaskBatch(sx, jnp.repeat(jnp.arange(n_way), k), qx, jnp.repeat(jnp.arange(n_way), q))


@functools.cache
def _small_maml_grad(impl, pool, dtype):
    """Jitted second-order MAML meta-gradient through a 2-block Conv4 (all parameters adapted). Cached: the
    float64 lax meta-gradient is compiled once for the finite-difference and the patches-regression tests (float64
    entries are only requested under the ``x64`` fixture)."""
    rng = np.random.default_rng(0)
    task = TaskBatch(jnp.asarray(rng.random((3, 8, 8, 1)), dtype), jnp.arange(3),
                     jnp.asarray(rng.random((6, 8, 8, 1)), dtype), jnp.repeat(jnp.arange(3), 2))
    m = conv4(3, hidden=4, num_blocks=2, input_shape=(8, 8, 1), pool=pool, conv_impl=impl)
    algo = MAML(m.apply, loss="cross_entropy", inner_lr=0.4)
    mp = algo.init(jax.tree.map(lambda a: a.astype(dtype), m.params))
    state = jax.tree.map(lambda a: a.astype(dtype), m.state)
    # one compiled program gives the loss (finite differences) and the meta-gradient
    value_and_grad = jax.jit(jax.value_and_grad(lambda mp: algo.task_loss(mp, state, task)[0]))
    return (lambda mp: value_and_grad(mp)[0]), mp, value_and_grad(mp)[1]


@pytest.mark.parametrize("impl,pool", [("lax", "max"), ("patches_vjp", "max"), ("patches_vjp", "stride")])
def test_maml_meta_gradient_matches_finite_differences_float64(x64, impl, pool):
    """Second-order MAML through Conv4, compiled: the meta-gradient's directional derivatives
    equal central finite differences (float64)."""
    f, mp, g = _small_maml_grad(impl, pool, jnp.float64)
    rng = np.random.default_rng(1)
    mp = jax.tree.map(np.asarray, mp)  # the perturbations and dot products in NumPy float64: no eager-op compiles
    for _ in range(2):
        v = jax.tree.map(lambda a: rng.normal(size=a.shape), mp)
        eps = 1e-6
        fd = (f(jax.tree.map(lambda a, b: a + eps * b, mp, v)) - f(jax.tree.map(lambda a, b: a - eps * b, mp, v))) / (2 * eps)
        an = sum(np.sum(np.asarray(a) * b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(v)))
        np.testing.assert_allclose(float(an), float(fd), rtol=1e-6)


def test_conv_impls_give_the_same_maml_meta_gradient():
    """float32, compiled: patches_vjp's second-order meta-gradient equals lax's."""
    _, _, g_lax = _small_maml_grad("lax", "max", jnp.float32)
    _, _, g_pv = _small_maml_grad("patches_vjp", "max", jnp.float32)
    for a, b in zip(jax.tree.leaves(g_pv), jax.tree.leaves(g_lax)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_patches_impl_second_order_under_jit(x64):
    """Regression: with a max-pool differentiated through ``operand == max`` (jnp.max over window
    axes), XLA recomputed the im2col convolution in two fusions with different rounding and this
    meta-gradient came out wrong under jit (right eagerly). max_pool_2x2's stop-gradient selection (no
    equality with a recomputed max) fixes it."""
    _, _, g = _small_maml_grad("patches", "max", jnp.float64)
    _, _, g_lax = _small_maml_grad("lax", "max", jnp.float64)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_lax)):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


def test_anil_default_adapts_the_head():
    m = conv4(3, **SMALL)
    algo = ANIL(m.apply, loss="cross_entropy", inner_lr=0.4)
    task = _task()
    adapted = algo.adapt(algo.init(m.params), m.state, task.support_x, task.support_y)
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), adapted, m.params)
    assert changed["head"]["kernel"] and not changed["block_0"]["conv"]["kernel"]


# -- BatchNorm modes ----------------------------------------------------------------------------
def test_bn_mode_batch_uses_per_task_batch_statistics():
    """bn_mode="batch": an example's output depends on the rest of its batch (transductive), and
    task_loss returns running statistics moved towards the task's batch statistics."""
    m = conv4(3, **SMALL)
    x = _images(4, (8, 8, 1))
    a, _ = m.apply(m.params, m.state, x, train=True)
    b, _ = m.apply(m.params, m.state, x.at[1:].set(_images(3, (8, 8, 1), seed=9)), train=True)
    assert not np.allclose(a[0], b[0], atol=1e-4)
    algo = MAML(m.apply, loss="cross_entropy", inner_lr=0.4, bn_mode="batch")
    _, aux = jax.jit(algo.task_loss)(algo.init(m.params), m.state, _task())
    assert not np.allclose(aux["model_state"]["block_0"]["bn"]["mean"], m.state["block_0"]["bn"]["mean"])


def test_bn_mode_frozen_uses_running_statistics():
    """bn_mode="frozen": outputs are per-example (no batch dependence), computed with the running
    statistics, and the statistics are never updated."""
    m = conv4(3, **SMALL)
    state = jax.tree.map(lambda v: v + 0.3, m.state)  # non-trivial running statistics
    x = _images(4, (8, 8, 1))
    a, _ = m.apply(m.params, state, x, train=False)
    b, _ = m.apply(m.params, state, x.at[1:].set(_images(3, (8, 8, 1), seed=9)), train=False)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)
    c, _ = m.apply(m.params, m.state, x, train=False)
    assert not np.allclose(a, c)
    algo = MAML(m.apply, loss="cross_entropy", inner_lr=0.4, bn_mode="frozen")
    _, aux = jax.jit(algo.task_loss)(algo.init(m.params), state, _task())
    for u, v in zip(jax.tree.leaves(aux["model_state"]), jax.tree.leaves(state)):
        np.testing.assert_array_equal(u, v)


def test_per_step_bn_shapes_rows_and_gradients():
    """MAML++ per-step BatchNorm: step k uses row k of every BN variable (clipped to K-1), equals the
    plain model with that row, updates only that row of the statistics, and its gradient reaches
    only that row."""
    k = 3
    base = conv4(3, **SMALL)
    m = conv4(3, **SMALL, per_step_bn=k)
    assert m.params["block_0"]["bn"]["scale"].shape == (k, 4)
    assert m.state["block_1"]["bn"]["var"].shape == (k, 4)
    assert m.params["block_0"]["conv"]["kernel"].shape == base.params["block_0"]["conv"]["kernel"].shape
    # distinct rows, so that the row used is visible
    rows = jnp.arange(k, dtype=jnp.float32)[:, None]
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: v + 0.1 * rows if "bn" in jax.tree_util.keystr(p) else v, m.params)
    state = jax.tree_util.tree_map_with_path(
        lambda p, v: v + 0.2 * rows if "bn" in jax.tree_util.keystr(p) else v, m.state)
    x = _images(4, (8, 8, 1))
    for step in (0, 1, 2, 7):
        r = min(step, k - 1)
        row = lambda t: jax.tree_util.tree_map_with_path(  # noqa: E731
            lambda p, v: v[r] if "bn" in jax.tree_util.keystr(p) else v, t)
        for train in (True, False):
            out, new_state = m.apply(params, state, x, train=train, step=step)
            ref, ref_state = base.apply(row(params), row(state), x, train=train)
            np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
            mean, ref_mean = new_state["block_1"]["bn"]["mean"], ref_state["block_1"]["bn"]["mean"]
            np.testing.assert_allclose(mean[r], ref_mean, rtol=1e-6)
            others = [i for i in range(k) if i != r]
            np.testing.assert_array_equal(np.asarray(mean)[others], np.asarray(state["block_1"]["bn"]["mean"])[others])
    g = jax.grad(lambda p: jnp.sum(m.apply(p, state, x, train=True, step=1)[0] ** 2))(params)
    gs = g["block_0"]["bn"]["scale"]
    assert np.all(np.asarray(gs[0]) == 0) and np.all(np.asarray(gs[2]) == 0) and np.any(np.asarray(gs[1]) != 0)
    # traced step index works under jit
    out = jax.jit(lambda s: m.apply(params, state, x, train=True, step=s)[0])(jnp.int32(2))
    np.testing.assert_allclose(out, m.apply(params, state, x, train=True, step=2)[0], rtol=1e-5, atol=1e-6)


def test_per_step_maml_reference_loop():
    """The model side of MAML++ per-step BN inside a hand-unrolled 2-step MAML (BN affine parameters
    not adapted, as in MAML++): with all rows equal, the per-step model's meta-gradient equals plain
    MAML's, and the BN gradients summed over rows equal the plain BN gradients (chain rule)."""
    base = conv4(3, **SMALL)
    m = conv4(3, **SMALL, per_step_bn=2)
    task = _task()
    from jmeta.losses import cross_entropy

    def unrolled(p, apply_fn, per_step):
        kw = (lambda i: {"step": i}) if per_step else (lambda i: {})
        fast = p
        for i in range(2):
            loss = lambda q: cross_entropy(apply_fn(q, m.state if per_step else base.state,  # noqa: E731
                                                    task.support_x, train=True, **kw(i))[0], task.support_y)
            fast = jax.tree_util.tree_map_with_path(
                lambda path, a, g: a if "bn" in jax.tree_util.keystr(path) else a - 0.4 * g,
                fast, jax.grad(loss)(fast))
        out = apply_fn(fast, m.state if per_step else base.state, task.query_x, train=True, **kw(1))[0]
        return cross_entropy(out, task.query_y)

    g_ps = jax.jit(jax.grad(lambda p: unrolled(p, m.apply, True)))(m.params)
    g = jax.jit(jax.grad(lambda p: unrolled(p, base.apply, False)))(base.params)
    np.testing.assert_allclose(g_ps["block_0"]["conv"]["kernel"], g["block_0"]["conv"]["kernel"],
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g_ps["block_1"]["bn"]["scale"].sum(0), g["block_1"]["bn"]["scale"],
                               rtol=1e-4, atol=1e-6)


def test_with_per_step_errors():
    m = conv4(3, **SMALL)
    with pytest.raises(ValueError, match="per_step_bn"):
        conv4(3, **SMALL, per_step_bn=0)
    with pytest.raises(ValueError, match="picks no"):
        with_per_step(m, 2, lambda p: False)


def test_module_is_a_plain_nnx_module():
    from flax import nnx

    mod = Conv4(5, rngs=nnx.Rngs(1))
    assert isinstance(mod, nnx.Module)
    assert nnx.jit(lambda m, x: m(x))(mod, _images(2)).shape == (2, 5)  # one compile, not one per eager op


def test_numpy_float64_and_integer_images_follow_the_model_dtype():
    """NumPy float64 images were refused outside jit (float32 inside); uint8 images were scaled in float32 and
    refused by a bfloat16 model (mixed precision casts only float task leaves)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jmeta.models import conv4
    from jmeta.models.resnet import resnet12
    from jmeta.train.precision import cast_floating

    m = conv4(5)
    x64 = np.random.default_rng(0).random((2, 28, 28, 1))
    np.testing.assert_allclose(m(x64), jax.jit(lambda x: m(x))(x64), rtol=1e-5, atol=1e-6)
    for model, shape in ((m, (2, 28, 28, 1)), (resnet12(5, input_shape=(16, 16, 3), widths=(4, 4, 4, 4)),
                                                (2, 16, 16, 3))):
        out, _ = jax.eval_shape(lambda p, s, x: model.apply(p, s, x, train=True),
                                cast_floating(model.params, jnp.bfloat16), model.state,
                                jax.ShapeDtypeStruct(shape, jnp.uint8))
        assert out.dtype == jnp.bfloat16
    u8 = (x64 * 255).astype(np.uint8)
    np.testing.assert_allclose(m(u8), m(u8.astype(np.float32) / 255.0), rtol=1e-6, atol=1e-6)
