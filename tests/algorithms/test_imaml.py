"""iMAML: CG meta-gradient vs the exact implicit gradient and a converged unrolled solve; memory flat in K."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from jmeta.algorithms import MAML
from jmeta.algorithms.imaml import IMAML
from jmeta.inner.loop import inner_loop
from jmeta.models import from_apply, mlp
from jmeta.tasks import TaskBatch
from jmeta.train.step import init_train_state, make_meta_step


def _model(dtype=jnp.float64, seed=0, width=6):
    """Hand-written tanh MLP 1 -> width -> 1 (25 parameters at width 6), regression."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {"hidden": {"w": jax.random.normal(k1, (1, width), dtype), "b": jnp.linspace(-1, 1, width, dtype=dtype)},
              "head": {"w": jax.random.normal(k2, (width, 1), dtype) * 0.5, "b": jnp.zeros((1,), dtype)}}

    def apply(p, x):
        return jnp.tanh(x @ p["hidden"]["w"] + p["hidden"]["b"]) @ p["head"]["w"] + p["head"]["b"]

    return from_apply(apply, params, stateless=True)


def _tasks(num_tasks, dtype=np.float64, seed=0, k=8, q=10):
    rng = np.random.default_rng(seed)
    amp = rng.uniform(0.5, 2.0, size=(num_tasks, 1, 1))
    ph = rng.uniform(0, np.pi, size=(num_tasks, 1, 1))
    sx = rng.uniform(-3, 3, size=(num_tasks, k, 1))
    qx = rng.uniform(-3, 3, size=(num_tasks, q, 1))
    f = lambda x: amp * np.sin(x + ph)  # noqa: E731
    return TaskBatch(*(jnp.asarray(a, dtype) for a in (sx, f(sx), qx, f(qx))))


def _one(tasks):
    return jax.tree.map(lambda a: a[0], tasks)


def test_cg_meta_gradient_equals_exact_implicit_gradient(x64):
    """(I + H/lambda)^{-1} grad L_q at the algorithm's own phi_K, with H from jax.hessian, inverted exactly."""
    model = _model()
    task = _one(_tasks(1))
    lam = 2.0
    algos = {s: IMAML(model.apply, loss="mse", reg_lambda=lam, inner_lr=0.05, num_steps=20, cg_steps=60,
                      linear_solve=s) for s in ("cg", "dense")}
    mp = algos["cg"].init(model.params)

    @jax.jit
    def run(mp):
        grads = {s: jax.grad(lambda m: a.task_loss(m, model.state, task)[0])(mp)["params"] for s, a in algos.items()}
        phi = algos["cg"].adapt(mp, model.state, task.support_x, task.support_y)
        flat, unravel = ravel_pytree(phi)
        def mse(f, x, y):
            return jnp.mean((model.apply(unravel(f), {}, x, train=True)[0] - y) ** 2)

        ls = lambda f: mse(f, task.support_x, task.support_y)  # noqa: E731
        lq = lambda f: mse(f, task.query_x, task.query_y)  # noqa: E731
        h = jax.hessian(ls)(flat)
        exact = jnp.linalg.solve(jnp.eye(flat.size) + h / lam, jax.grad(lq)(flat))
        # damped variant: ((1 + mu) I + H / lambda)^{-1}
        damped = IMAML(model.apply, loss="mse", reg_lambda=lam, inner_lr=0.05, num_steps=20, cg_steps=60,
                       cg_damping=0.5)
        g_damped = jax.grad(lambda m: damped.task_loss(m, model.state, task)[0])(mp)["params"]
        exact_damped = jnp.linalg.solve(1.5 * jnp.eye(flat.size) + h / lam, jax.grad(lq)(flat))
        return grads, unravel(exact), g_damped, unravel(exact_damped)

    grads, exact, g_damped, exact_damped = run(mp)
    for name, g in grads.items():
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(exact)):
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-11, err_msg=name)
    for a, b in zip(jax.tree.leaves(g_damped), jax.tree.leaves(exact_damped)):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-11)
    # and it is not the first-order gradient: the Hessian term matters here
    assert not np.allclose(ravel_pytree(grads["cg"])[0], ravel_pytree(exact_damped)[0], rtol=1e-3)


@pytest.mark.parametrize("adapt_params", [None, "head"])
def test_implicit_gradient_equals_backprop_through_converged_unrolled_solve(x64, adapt_params):
    """With the proximal problem solved to convergence, the implicit gradient equals MAML-style backprop
    through the whole (long) unrolled inner loop, including the shared-body cross term of ``adapt_params``."""
    model = _model()
    task = _one(_tasks(1, seed=1))
    lam, lr, steps = 4.0, 0.05, 600
    algo = IMAML(model.apply, loss="mse", reg_lambda=lam, inner_lr=lr, num_steps=steps, cg_steps=100,
                 cg_tol=1e-14, adapt_params=adapt_params)
    mp = algo.init(model.params)

    def unrolled(mp):
        fast, slow = algo._split(mp["params"])
        res = inner_loop(lambda f: algo.proximal_loss(f, fast, slow, model.state, task.support_x, task.support_y),
                         fast, optax.sgd(lr), steps)
        from jmeta.algorithms.base import combine
        out, _ = model.apply(combine(res.params, slow), model.state, task.query_x, train=True)
        return jnp.mean((out - task.query_y) ** 2)

    @jax.jit
    def both(mp):
        g = jax.grad(lambda m: algo.task_loss(m, model.state, task)[0])(mp)
        residual = ravel_pytree(algo.optimality(*_fast_args(algo, mp, model, task)))[0]
        return g, jax.grad(unrolled)(mp), jnp.max(jnp.abs(residual))

    g, g_unrolled, residual = both(mp)
    assert float(residual) < 1e-10, "inner problem not converged; the comparison would be meaningless"
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_unrolled)):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10)


def _fast_args(algo, mp, model, task):
    fast, slow = algo._split(mp["params"])
    phi = algo._split(algo.adapt(mp, model.state, task.support_x, task.support_y))[0]
    return phi, fast, slow, model.state, task.support_x, task.support_y


def _peak_bytes(algo, mp, state, task):
    compiled = jax.jit(jax.grad(lambda m: algo.task_loss(m, state, task)[0])).lower(mp).compile()
    ma = compiled.memory_analysis()
    return ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes


def test_memory_does_not_grow_with_inner_steps_while_maml_does():
    model = _model(jnp.float32, width=32)
    task = _one(_tasks(1, dtype=np.float32))
    mp = {"params": model.params}
    imaml = [_peak_bytes(IMAML(model.apply, loss="mse", num_steps=k), mp, model.state, task) for k in (5, 100)]
    maml = [_peak_bytes(MAML(model.apply, loss="mse", num_steps=k), mp, model.state, task) for k in (5, 100)]
    assert imaml[1] <= 1.1 * imaml[0], imaml
    assert maml[1] > 3 * maml[0], maml


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_meta_training_under_jit_and_vmap(dtype, request):
    if dtype == "float64":
        request.getfixturevalue("x64")
    model = mlp(1, (16,), 1) if dtype == "float32" else _model()
    params = jax.tree.map(lambda a: a.astype(dtype), model.params)
    algo = IMAML(model.apply, loss="mse", reg_lambda=1.0, inner_lr=0.05, num_steps=5)
    tasks = _tasks(4, dtype=dtype)
    step = make_meta_step(algo, lambda key, n, data: tasks, optax.adam(1e-2), meta_batch_size=4)
    state = init_train_state(algo, params, model.state, optax.adam(1e-2))
    losses = []
    for _ in range(10):
        state, metrics = step(state, jax.random.key(0))
        losses.append(float(metrics["loss"]))
    assert all(leaf.dtype == jnp.dtype(dtype) for leaf in jax.tree.leaves(state.meta_params))
    # the implicit gradient at an inexact inner solution (5 steps) is approximate; it must still descend early on
    assert np.all(np.isfinite(losses)) and min(losses[1:4]) < losses[0]


def test_evaluate_curve_and_adapt_are_consistent():
    model = _model(jnp.float32)
    task = _one(_tasks(1, dtype=np.float32))
    algo = IMAML(model.apply, loss="mse", reg_lambda=1.0, inner_lr=0.05, num_steps=5, eval_steps=8)
    mp = algo.init(model.params)

    @jax.jit
    def run(mp):
        curve = algo.evaluate(mp, model.state, task)
        adapted = algo.adapt(mp, model.state, task.support_x, task.support_y, num_steps=8)
        pred = algo.predict(mp, adapted, model.state, task.query_x)
        before = jnp.mean((model.apply(mp["params"], {}, task.query_x, train=True)[0] - task.query_y) ** 2)
        return curve, jnp.mean((pred - task.query_y) ** 2), before

    curve, after, before = run(mp)
    assert curve["loss"].shape == (9,)
    np.testing.assert_allclose(curve["loss"][0], before, rtol=1e-6)
    np.testing.assert_allclose(curve["loss"][-1], after, rtol=1e-5)


def test_clear_errors():
    model = _model(jnp.float32)
    for kw, match in ((dict(reg_lambda=0.0), "reg_lambda"), (dict(cg_steps=0), "cg_steps"),
                      (dict(linear_solve="lu"), "linear_solve"), (dict(bn_mode="running"), "bn_mode"),
                      (dict(cg_damping=-1.0), "cg_damping"), (dict(num_steps=0), "num_steps"),
                      (dict(loss="hinge"), "loss")):
        with pytest.raises(ValueError, match=match):
            IMAML(model.apply, **kw)
    with pytest.raises(TypeError, match="inner_transform"):
        IMAML(model.apply, inner_transform=optax.adam)
