"""MetaOptNet: SVM dual vs KKT and scipy, implicit gradients vs finite differences and unrolled, jit/vmap f32/f64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmeta.algorithms.metaoptnet import (MetaOptNet, _fixed_point, crammer_singer_svm, svm_dual_objective,
                                         svm_kkt_residual)
from jmeta.algorithms.r2d2 import R2D2
from jmeta.models import mlp
from jmeta.train.step import init_train_state, make_meta_step

from test_r2d2 import assert_bf16_matches_f32, fd_error, gaussian_tasks, small_embedding


def _svm_problem(n=10, d=16, k=4, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    labels = np.arange(n) % k
    return jnp.asarray(x, dtype), labels, jnp.asarray(np.eye(k)[labels], dtype)


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("float64", 1e-9)])
def test_dual_solution_satisfies_kkt_batched(dtype, tol, request):
    if dtype == "float64":
        request.getfixturevalue("x64")
    probs = [_svm_problem(seed=s, dtype=dtype) for s in range(4)]
    x = np.stack([np.asarray(p[0]) for p in probs]) * np.asarray([0.3, 1.0, 3.0, 1.0], dtype)[:, None, None]
    y = np.stack([np.asarray(p[2]) for p in probs])

    @jax.jit
    def solve(x, y):  # the solve and the KKT residuals of its solutions in one compiled program
        gram = jnp.einsum("bnd,bmd->bnm", x, x)
        alpha, info = jax.vmap(lambda g, yy: crammer_singer_svm(g, yy, C=0.1, ridge=1.0, tol=tol, max_iter=3000))(
            gram, y)
        return alpha, info, jax.vmap(lambda a, g, yy: svm_kkt_residual(a, g, yy, C=0.1, ridge=1.0))(alpha, gram, y)

    alpha, info, kkt = solve(x, y)
    assert alpha.dtype == jnp.dtype(dtype)
    assert np.all(np.asarray(info.iterations) < 3000), info.iterations
    assert np.all(np.asarray(info.kkt_residual) <= tol)
    kkt, alpha = np.asarray(kkt), np.asarray(alpha)  # the checks on the host, not op by op
    assert float(np.max(kkt)) <= tol and float(np.min(kkt)) >= -10 * tol
    # feasibility: alpha_i <= C y_i, rows sum to zero
    assert float(np.max(alpha - 0.1 * y)) <= 1e-6
    np.testing.assert_allclose(np.sum(alpha, -1), 0.0, atol=1e-6)


def test_svm_agrees_with_scipy_on_primal_objective(x64):
    """Plain Crammer-Singer SVM (ridge 0): our dual vs scipy SLSQP on the primal QP with slacks."""
    from scipy.optimize import minimize

    x64_, labels, y = _svm_problem(n=12, d=6, k=3, seed=3)
    x, c = np.asarray(x64_), 0.1
    n, d = x.shape
    k = y.shape[1]

    def primal(w):
        s = x @ w
        return 0.5 * np.sum(w * w) + c * np.sum(np.max(1 - np.asarray(y) + s - s[np.arange(n), labels][:, None], 1))

    rows, rhs = [], []
    for i in range(n):
        for j in range(k):
            wr = np.zeros((d, k))
            wr[:, labels[i]] += x[i]
            wr[:, j] -= x[i]
            rows.append(np.concatenate([wr.ravel(), np.eye(n)[i]]))
            rhs.append(1.0 - (j == labels[i]))
    a, b = np.array(rows), np.array(rhs)
    res = minimize(lambda z: 0.5 * z[:d * k] @ z[:d * k] + c * z[d * k:].sum(), np.zeros(d * k + n),
                   jac=lambda z: np.concatenate([z[:d * k], np.full(n, c)]), method="SLSQP",
                   constraints=[{"type": "ineq", "fun": lambda z: a @ z - b, "jac": lambda z: a}],
                   options={"ftol": 1e-12, "maxiter": 500})
    assert res.success, res.message
    gram = x64_ @ x64_.T
    alpha, info = jax.jit(lambda g, yy: crammer_singer_svm(g, yy, C=c, ridge=0.0, tol=1e-10, max_iter=5000))(gram, y)
    ours = primal(x.T @ np.asarray(alpha))
    np.testing.assert_allclose(ours, res.fun, rtol=1e-7)
    # strong duality: primal value = -(dual objective)
    np.testing.assert_allclose(-float(svm_dual_objective(alpha, gram, y)), ours, rtol=1e-7)


@pytest.mark.parametrize("ridge", [0.0, 1.0])
def test_implicit_gradient_matches_finite_differences_and_unrolled_solve(x64, ridge):
    x, _, y = _svm_problem()
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.normal(size=(7, x.shape[1])))
    ql = jnp.asarray(rng.integers(0, 4, size=7))

    def query_loss(x, alpha):
        logits = 3.0 * q @ (x.T @ alpha)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[jnp.arange(7), ql])

    def implicit(x, solve="dense"):
        alpha, _ = crammer_singer_svm(x @ x.T, y, C=0.1, ridge=ridge, tol=1e-12, max_iter=20000, implicit_solve=solve)
        return query_loss(x, alpha)

    def unrolled(x):  # backprop through 3000 projected-gradient steps
        gram = x @ x.T
        beta = jax.lax.fori_loop(0, 3000, lambda _, b: _fixed_point(b, gram, y, 0.1, ridge), y)
        return query_loss(x, 0.1 * (y - beta))

    err, g = fd_error(implicit, x, eps=1e-5)
    assert err < 1e-6, err
    if ridge:  # strongly convex dual: the unrolled iterates' derivatives converge too
        g_unrolled, g_gmres = jax.jit(lambda x: (jax.grad(unrolled)(x), jax.grad(lambda x: implicit(x, "gmres"))(x)))(x)
        np.testing.assert_allclose(g, g_unrolled, rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(g_gmres, g, rtol=1e-7, atol=1e-10)


def test_metaoptnet_meta_gradient_matches_finite_differences(x64):
    model = small_embedding(width=12)
    algo = MetaOptNet(model.apply, n_way=3, init_scale=2.0, tol=1e-12, max_iter=20000)
    task = jax.tree.map(lambda a: a[0], gaussian_tasks(1, dtype=np.float64))
    mp = algo.init(model.params)
    assert set(mp) == {"params", "scale"}
    err, g = fd_error(lambda m: algo.task_loss(m, model.state, task)[0], mp, eps=1e-5)
    assert err < 1e-6, err
    assert float(jnp.abs(g["scale"])) > 0


def test_ridge_head_is_r2d2_without_adjust_layer():
    model = small_embedding(dtype=jnp.float32)
    task = jax.tree.map(lambda a: a[0], gaussian_tasks(1))
    rr = MetaOptNet(model.apply, n_way=3, head="ridge", ridge_lambda=50.0, init_scale=7.0)
    r2 = R2D2(model.apply, n_way=3, init_lambda=50.0, learn_lambda=False, init_scale=7.0)

    @jax.jit
    def both(p):
        return [a.task_loss(a.init(p), model.state, task)[0] for a in (rr, r2)]

    a, b = both(model.params)
    np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_meta_training_under_jit_and_vmap(dtype, request):
    if dtype == "float64":
        request.getfixturevalue("x64")
    # the flax MLP in float32; the (cheaper to trace) hand-written embedding in float64
    model = mlp(5, (16,), 8) if dtype == "float32" else small_embedding(width=8)
    params = jax.tree.map(lambda a: a.astype(dtype), model.params)
    algo = MetaOptNet(model.apply, n_way=3, init_scale=5.0, label_smoothing=0.1)
    tasks = gaussian_tasks(4, dtype=dtype)
    step = make_meta_step(algo, lambda key, n, data: tasks, optax.adam(1e-2), meta_batch_size=4)
    state = init_train_state(algo, params, model.state, optax.adam(1e-2))
    losses = []
    for _ in range(10):
        state, metrics = step(state, jax.random.key(0))
        losses.append(float(metrics["loss"]))
    assert all(leaf.dtype == jnp.dtype(dtype) for leaf in jax.tree.leaves(state.meta_params))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert float(metrics["svm_kkt_residual"]) <= algo.tol and float(metrics["svm_iterations"]) >= 1
    if dtype == "float64":
        return
    # the batched while_loop gives each task its own solution: vmap equals a loop over tasks
    fit = jax.jit(lambda t: algo.adapt(state.meta_params, state.model_state, t.support_x, t.support_y)["w"])
    batched = jax.jit(jax.vmap(fit))(tasks)
    for i in range(4):
        np.testing.assert_allclose(batched[i], fit(jax.tree.map(lambda a: a[i], tasks)),
                                   rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("head", ["svm", "ridge"])
def test_bfloat16_task_loss_and_meta_step_match_float32(head):
    # the SVM dual (FISTA and its dense implicit backward solve) and the ridge solve run in float32
    model = small_embedding(width=12, dtype=jnp.float32)
    algo = MetaOptNet(model.apply, n_way=3, init_scale=2.0, head=head)
    tasks = gaussian_tasks(4)
    assert_bf16_matches_f32(algo, model.params, model.state, jax.tree.map(lambda a: a[0], tasks))
    step = make_meta_step(algo, lambda key, n, data: tasks, optax.adam(1e-2), meta_batch_size=4, compute_dtype="bfloat16")
    state = init_train_state(algo, model.params, model.state, optax.adam(1e-2))
    state, metrics = step(state, jax.random.key(0))
    assert np.isfinite(float(metrics["loss"]))
    assert all(leaf.dtype == jnp.float32 and np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state.meta_params))


def test_svm_low_precision_gram_is_solved_in_float32():
    x, _, y = _svm_problem(dtype=np.float32)
    gram = x @ x.T
    solve = jax.jit(crammer_singer_svm)  # one program per dtype, not the solver's ops one by one
    a32, _ = solve(gram, y)
    a16, info = solve(gram.astype(jnp.bfloat16), y.astype(jnp.bfloat16))
    assert a16.dtype == jnp.bfloat16 and info.kkt_residual.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(a16, np.float32), a32, atol=0.1 * float(jnp.max(jnp.abs(a32))))
    y16 = y.astype(jnp.bfloat16)
    g = jax.jit(jax.grad(lambda g, y: jnp.sum(jnp.sin(crammer_singer_svm(g, y)[0]))))(gram.astype(jnp.bfloat16), y16)
    assert g.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g, np.float32)))


def test_clear_errors():
    model = small_embedding(dtype=jnp.float32)
    with pytest.raises(ValueError, match="head"):
        MetaOptNet(model.apply, n_way=3, head="lr")
    with pytest.raises(ValueError, match="C must"):
        MetaOptNet(model.apply, n_way=3, C=0.0)
    with pytest.raises(ValueError, match="implicit_solve"):
        MetaOptNet(model.apply, n_way=3, implicit_solve="cg")
    with pytest.raises(ValueError, match="max_iter"):
        MetaOptNet(model.apply, n_way=3, max_iter=0)
    with pytest.raises(ValueError, match="gram_ridge"):
        MetaOptNet(model.apply, n_way=3, gram_ridge=-1.0)
