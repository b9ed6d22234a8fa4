"""R2-D2 ridge head: Woodbury = primal, gradients vs finite differences, contract, jit/vmap in f32/f64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmeta.algorithms.r2d2 import R2D2, ridge_regression
from jmeta.models import from_apply, mlp
from jmeta.tasks import TaskBatch
from jmeta.train.precision import mixed_precision_task_loss
from jmeta.train.step import init_train_state, make_meta_step

from finite_differences import fd_relative_error


def gaussian_tasks(num_tasks, *, n_way=3, k_shot=2, q_query=3, dim=5, dtype=np.float32, seed=0):
    """Classification tasks: one Gaussian cluster per class, labels ``0..n_way-1``."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(num_tasks, n_way, dim)) * 1.5
    sy = np.tile(np.arange(n_way), k_shot)
    qy = np.tile(np.arange(n_way), q_query)
    sx = means[:, sy] + rng.normal(size=(num_tasks, sy.size, dim))
    qx = means[:, qy] + rng.normal(size=(num_tasks, qy.size, dim))
    rep = lambda y: np.broadcast_to(y, (num_tasks, y.size)).astype(np.int32)  # noqa: E731
    return TaskBatch(jnp.asarray(sx, dtype), jnp.asarray(rep(sy)), jnp.asarray(qx, dtype), jnp.asarray(rep(qy)))


def small_embedding(dim=5, width=6, dtype=jnp.float64, seed=0):
    """A hand-written 1-hidden-layer embedding (no flax), ``[n, dim] -> [n, width]``."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {"w1": jax.random.normal(k1, (dim, 8), dtype) * 0.5, "b1": jnp.full((8,), 0.1, dtype),
              "w2": jax.random.normal(k2, (8, width), dtype) * 0.5}

    def apply(p, x):
        return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]

    return from_apply(apply, params, stateless=True)


def fd_error(f, x, **kwargs):
    """``(max relative error, grad)`` along two unnormalised random directions."""
    return fd_relative_error(f, x, **{"n_dirs": 2, "normalize": False, **kwargs})


def test_woodbury_equals_primal_solution_and_gradient(x64):
    rng = np.random.default_rng(0)
    for n, d in ((6, 10), (10, 4)):
        x = jnp.asarray(rng.normal(size=(n, d)))
        y = jnp.asarray(np.eye(3)[np.arange(n) % 3])
        lam = 0.7

        @jax.jit
        def both(x, y):
            return [ridge_regression(x, y, lam, form=f) for f in ("dual", "primal", "auto")]

        dual, primal, auto = both(x, y)
        np.testing.assert_allclose(dual, primal, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(auto, primal, rtol=1e-10, atol=1e-12)
        # normal equations of the ridge objective hold
        np.testing.assert_allclose(x.T @ (x @ dual - y) + lam * dual, 0.0, atol=1e-10)
        grads = jax.jit(lambda x: [jax.grad(lambda x: jnp.sum(jnp.sin(ridge_regression(x, y, lam, form=f))))(x)
                                   for f in ("dual", "primal")])
        gd, gp = grads(x)
        np.testing.assert_allclose(gd, gp, rtol=1e-9, atol=1e-11)


def test_r2d2_meta_gradient_matches_finite_differences(x64):
    model = small_embedding()
    algo = R2D2(model.apply, n_way=3, init_lambda=0.5, init_scale=3.0, fit_intercept=True)
    task = jax.tree.map(lambda a: a[0], gaussian_tasks(1, dtype=np.float64))
    mp = algo.init(model.params)
    assert set(mp) == {"params", "log_lambda", "scale", "bias"}
    assert mp["log_lambda"].dtype == jnp.float64
    err, g = fd_error(lambda m: algo.task_loss(m, model.state, task)[0], mp)
    assert err < 1e-6, err
    assert abs(float(g["log_lambda"])) > 1e-6 and abs(float(g["scale"])) > 1e-6
    assert abs(float(g["bias"])) < 1e-12  # a scalar logit bias cancels in softmax cross-entropy


def test_contract_adapt_predict_evaluate_agree():
    model = small_embedding(dtype=jnp.float32)
    algo = R2D2(model.apply, n_way=3, init_scale=5.0)
    task = jax.tree.map(lambda a: a[0], gaussian_tasks(1))
    mp = algo.init(model.params)

    @jax.jit
    def run(mp, task):
        adapted = algo.adapt(mp, model.state, task.support_x, task.support_y)
        logits = algo.predict(mp, adapted, model.state, task.query_x)
        obj, aux = algo.task_loss(mp, model.state, task)
        return adapted, logits, obj, aux, algo.evaluate(mp, model.state, task)

    adapted, logits, obj, aux, ev = run(mp, task)
    assert adapted["w"].shape == (6, 3) and logits.shape == (9, 3)
    assert ev["loss"].shape == (1,) and ev["accuracy"].shape == (1,)
    np.testing.assert_allclose(ev["loss"][0], aux["metrics"]["loss"], rtol=1e-6)
    np.testing.assert_allclose(obj, aux["metrics"]["loss"], rtol=1e-6)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, task.query_y).mean()
    np.testing.assert_allclose(ce, obj, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_meta_training_under_jit_and_vmap(dtype, request):
    if dtype == "float64":
        request.getfixturevalue("x64")
    if True:
        model = mlp(5, (16,), 8)
        params = jax.tree.map(lambda a: a.astype(dtype), model.params)
        algo = R2D2(model.apply, n_way=3, init_scale=5.0, label_smoothing=0.1)
        tasks = gaussian_tasks(4, dtype=dtype)
        step = make_meta_step(algo, lambda key, n, data: tasks, optax.adam(1e-2), meta_batch_size=4)
        state = init_train_state(algo, params, model.state, optax.adam(1e-2))
        first = None
        for _ in range(15):
            state, metrics = step(state, jax.random.key(0))
            first = metrics if first is None else first
        assert all(leaf.dtype == jnp.dtype(dtype) for leaf in jax.tree.leaves(state.meta_params))
        assert float(metrics["loss"]) < float(first["loss"])


def assert_bf16_matches_f32(algo, params, state, task):
    """``task_loss`` and its meta-gradient in bfloat16 (mixed precision) are finite and close to float32."""
    mp = algo.init(params)

    def vg(compute_dtype):
        f = mixed_precision_task_loss(algo, compute_dtype)
        return jax.jit(jax.value_and_grad(lambda m: f(m, state, task)[0]))(mp)

    (v16, g16), (v32, g32) = vg(jnp.bfloat16), vg(jnp.float32)
    assert v16.dtype == jnp.float32 and np.isfinite(float(v16))
    np.testing.assert_allclose(v16, v32, rtol=0.05)
    for a, b in zip(jax.tree.leaves(g16), jax.tree.leaves(g32)):
        assert a.dtype == jnp.float32 and np.all(np.isfinite(a))
        # bfloat16 has an 8-bit mantissa: compare each leaf relative to its norm
        assert float(jnp.linalg.norm(a - b)) <= 0.1 * float(jnp.linalg.norm(b)) + 1e-3, (a, b)


@pytest.mark.parametrize("form", ["dual", "primal"])
def test_bfloat16_task_loss_and_meta_step_match_float32(form):
    # jax.scipy.linalg.solve has no bfloat16 kernel: the ridge solve runs in float32 and is cast back
    model = small_embedding(dtype=jnp.float32)
    algo = R2D2(model.apply, n_way=3, init_scale=3.0, fit_intercept=True, form=form)
    tasks = gaussian_tasks(4)
    assert_bf16_matches_f32(algo, model.params, model.state, jax.tree.map(lambda a: a[0], tasks))
    x16, y16 = tasks.support_x[0].astype(jnp.bfloat16), jax.nn.one_hot(tasks.support_y[0], 3, dtype=jnp.bfloat16)
    w = jax.eval_shape(lambda x, y: ridge_regression(x, y, 0.5, form=form), x16, y16)  # the dtype, no op-by-op run
    assert w.dtype == jnp.bfloat16
    step = make_meta_step(algo, lambda key, n, data: tasks, optax.adam(1e-2), meta_batch_size=4, compute_dtype="bfloat16")
    state = init_train_state(algo, model.params, model.state, optax.adam(1e-2))
    state, metrics = step(state, jax.random.key(0))
    assert np.isfinite(float(metrics["loss"]))
    assert all(leaf.dtype == jnp.float32 and np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state.meta_params))


def test_ridge_regression_keeps_float64(x64):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 4)))
    w = jax.eval_shape(lambda x: ridge_regression(x, jnp.eye(3)[np.arange(6) % 3], 0.3), x)  # no op-by-op run
    assert w.dtype == jnp.float64


def test_label_smoothing_targets_follow_metaoptnet():
    # MetaOptNet (kjunelee/MetaOptNet train.py): 1 - eps on the true class, eps / (K - 1) on the others
    model = small_embedding(dtype=jnp.float32)
    algo = R2D2(model.apply, n_way=5, label_smoothing=0.1)
    t = np.asarray(algo.smoothed_targets(jnp.array([0, 3])))
    np.testing.assert_allclose(t[0], [0.9, 0.025, 0.025, 0.025, 0.025], rtol=1e-6)
    np.testing.assert_allclose(t[1], [0.025, 0.025, 0.025, 0.9, 0.025], rtol=1e-6)
    np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)


def test_label_smoothing_objective_is_cross_entropy_against_metaoptnet_targets():
    # 3-way, eps = 0.2: targets 0.8 on the true class, 0.1 on each other (optax.smooth_labels: 0.8667 / 0.0667)
    model = small_embedding(dtype=jnp.float32)
    algo3 = R2D2(model.apply, n_way=3, init_scale=5.0, label_smoothing=0.2)
    task = jax.tree.map(lambda a: a[0], gaussian_tasks(1))
    mp = algo3.init(model.params)

    @jax.jit  # one compiled program, not op by op
    def run(mp, task):
        adapted = algo3.adapt(mp, model.state, task.support_x, task.support_y)
        return algo3.task_loss(mp, model.state, task)[0], jax.nn.log_softmax(
            algo3.predict(mp, adapted, model.state, task.query_x))

    obj, logp = run(mp, task)
    targets = np.where(np.eye(3)[np.asarray(task.query_y)] == 1, 0.8, 0.1)
    np.testing.assert_allclose(obj, -np.mean(np.sum(targets * np.asarray(logp), -1)), rtol=1e-5)


def test_clear_errors():
    model = small_embedding(dtype=jnp.float32)
    with pytest.raises(ValueError, match="n_way"):
        R2D2(model.apply, n_way=1)
    with pytest.raises(ValueError, match="init_lambda"):
        R2D2(model.apply, n_way=3, init_lambda=0.0)
    with pytest.raises(ValueError, match="form"):
        R2D2(model.apply, n_way=3, form="svd")
    with pytest.raises(ValueError, match="bn_mode"):
        R2D2(model.apply, n_way=3, bn_mode="train")
    with pytest.raises(ValueError, match="label_smoothing"):
        R2D2(model.apply, n_way=3, label_smoothing=1.0)
    with pytest.raises(TypeError, match="apply"):
        R2D2(None, n_way=3)
    algo = R2D2(model.apply, n_way=3)
    with pytest.raises(TypeError, match="integers"):
        algo.adapt(algo.init(model.params), model.state, jnp.ones((4, 5)), jnp.ones((4,)))
