"""Implicit differentiation utility: against closed forms, finite differences, under jit/vmap, f32/f64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta.implicit import (custom_fixed_point, custom_root, implicit_solve, make_linear_solver, projection_simplex,
                            root_vjp, solve_dense)


def _ridge_optimality(w, x, y, lam):
    return x.T @ (x @ w - y) + lam * w


def _ridge_solver(init, x, y, lam):
    """Plain gradient descent, many steps (its iterations are never differentiated)."""
    step = 1.0 / (jnp.sum(x * x) + lam)
    return jax.lax.fori_loop(0, 3000, lambda _, w: w - step * _ridge_optimality(w, x, y, lam), init)


def _ridge_closed(x, y, lam):
    return jnp.linalg.solve(x.T @ x + lam * jnp.eye(x.shape[1], dtype=x.dtype), x.T @ y)


def _ridge_data(dtype, tasks=3, n=8, d=3):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(tasks, n, d)), dtype)
    y = jnp.asarray(rng.normal(size=(tasks, n)), dtype)
    lam = jnp.asarray([0.5, 1.0, 2.0][:tasks], dtype)
    return x, y, lam


def _check_ridge(dtype, rtol, solves):
    x, y, lam = _ridge_data(dtype)
    q = jnp.asarray([1.0, -2.0, 0.5], dtype)

    def reference(x, y, lam):
        return jnp.sum(jax.vmap(_ridge_closed)(x, y, lam) @ q)

    g_ref = jax.jit(jax.grad(reference, argnums=(0, 1, 2)))(x, y, lam)
    for solve in solves:
        solver = custom_root(_ridge_optimality, solve=solve, tol=1e-10, maxiter=50)(_ridge_solver)

        def implicit(x, y, lam):
            w = jax.vmap(solver)(jnp.zeros(x.shape[::2], dtype), x, y, lam)
            return jnp.sum(w @ q)

        val, g = jax.jit(jax.value_and_grad(implicit, argnums=(0, 1, 2)))(x, y, lam)
        np.testing.assert_allclose(val, reference(x, y, lam), rtol=rtol)
        for a, b in zip(g, g_ref):
            assert a.dtype == dtype
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol, err_msg=solve)


def test_ridge_gradients_equal_closed_form_float64(x64):
    _check_ridge(jnp.float64, 1e-8, ("dense", "cg", "gmres", "bicgstab"))


def test_ridge_gradients_equal_closed_form_float32():
    _check_ridge(jnp.float32, 2e-4, ("dense",))


def test_docstring_sqrt_example_and_symmetric_forward_mode_matvecs():
    @custom_root(lambda x, a: x * x - a)
    def sqrt(init, a):
        return jax.lax.fori_loop(0, 30, lambda _, x: 0.5 * (x + a / x), init)

    np.testing.assert_allclose(jax.jit(jax.grad(lambda a: sqrt(1.0, a)))(4.0), 0.25, rtol=1e-6)
    # gradient of a convex function: symmetric Jacobian, forward-over-reverse matvecs
    opt = jax.grad(lambda w, x, y, lam: 0.5 * jnp.sum((x @ w - y) ** 2) + 0.5 * lam * jnp.sum(w * w))
    solver = custom_root(opt, solve="cg", symmetric=True, tol=1e-8, maxiter=20)(_ridge_solver)
    x, y, lam = _ridge_data(jnp.float32, tasks=1)
    g = jax.jit(jax.grad(lambda x: jnp.sum(solver(jnp.zeros(3), x[0], y[0], lam[0]))))(x)
    g_ref = jax.jit(jax.grad(lambda x: jnp.sum(_ridge_closed(x[0], y[0], lam[0]))))(x)
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5)


def test_pytree_solution_aux_and_zero_init_gradient(x64):
    """x* a dict; aux passed through without gradient; d/d init = 0; integer args get no cotangent."""

    def optimality(p, a, n):
        return {"u": p["u"] - a * jnp.cos(p["v"]), "v": p["v"] - 0.5 * jnp.sin(p["u"]) * n}

    @custom_root(optimality, solve="dense", has_aux=True)
    def solver(init, a, n):
        def body(_, p):
            return {"u": a * jnp.cos(p["v"]), "v": 0.5 * jnp.sin(p["u"]) * n}
        p = jax.lax.fori_loop(0, 200, body, init)
        return p, jnp.asarray(200)

    init = {"u": jnp.asarray(0.1), "v": jnp.asarray(0.2)}
    n = jnp.asarray(1, jnp.int32)

    def f(a, init):
        p, aux = solver(init, a, n)
        assert jnp.issubdtype(aux.dtype, jnp.integer)
        return p["u"] + 2.0 * p["v"]

    g_a, g_init = jax.jit(jax.grad(f, argnums=(0, 1)))(jnp.asarray(0.7), init)
    eps = 1e-6
    fj = jax.jit(f)
    fd = (fj(jnp.asarray(0.7 + eps), init) - fj(jnp.asarray(0.7 - eps), init)) / (2 * eps)
    np.testing.assert_allclose(g_a, fd, rtol=1e-7)
    assert all(float(v) == 0.0 for v in jax.tree.leaves(g_init))


def test_fixed_point_of_projected_gradient_matches_finite_differences(x64):
    """Simplex-constrained least squares solved by projected gradient; differentiated via its fixed point."""
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.normal(size=(6, 4)))
    b = jnp.asarray(rng.normal(size=(6,)))

    def step(p, a, b):
        return projection_simplex(p - 0.05 * a.T @ (a @ p - b))

    @custom_fixed_point(step, solve="gmres", tol=1e-12, maxiter=100)
    def solve(init, a, b):
        return jax.lax.fori_loop(0, 5000, lambda _, p: step(p, a, b), init)

    @jax.jit
    def f_and_active(a, b):
        p = solve(jnp.full(4, 0.25), a, b)
        return jnp.sum(p * jnp.arange(1.0, 5.0)), jnp.sum(p > 0)

    f = jax.jit(lambda a, b: f_and_active(a, b)[0])
    assert 0 < int(f_and_active(a, b)[1]) < 4, "instance should have an active constraint"
    g_a, g_b = jax.jit(jax.grad(f, argnums=(0, 1)))(a, b)
    eps = 1e-6
    va, vb = jnp.asarray(rng.normal(size=a.shape)), jnp.asarray(rng.normal(size=b.shape))
    fd_a = (f(a + eps * va, b) - f(a - eps * va, b)) / (2 * eps)
    fd_b = (f(a, b + eps * vb) - f(a, b - eps * vb)) / (2 * eps)
    np.testing.assert_allclose(jnp.vdot(g_a, va), fd_a, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(jnp.vdot(g_b, vb), fd_b, rtol=1e-6, atol=1e-9)


def test_implicit_solve_function_form_and_root_vjp(x64):
    x, y, lam = _ridge_data(jnp.float64, tasks=1)
    x, y, lam = x[0], y[0], lam[0]
    solver = implicit_solve(_ridge_solver, _ridge_optimality, solve="dense")

    @jax.jit
    def cotangents(x, y, lam):
        w = solver(jnp.zeros(3, x.dtype), x, y, lam)
        return root_vjp(_ridge_optimality, w, (x, y, lam), jnp.ones(3), solve="cg")

    g_ref = jax.grad(lambda x, y, lam: jnp.sum(_ridge_closed(x, y, lam)), argnums=(0, 1, 2))(x, y, lam)
    for a, b in zip(cotangents(x, y, lam), g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-8)


def test_linear_solvers_and_damping():
    m = jnp.asarray([[4.0, 1.0], [1.0, 3.0]])
    b = jnp.asarray([1.0, 2.0])
    names = ("dense", "cg", "gmres", "bicgstab")
    xs = jax.jit(lambda m, b: [make_linear_solver(n, ridge=1.0, tol=1e-7)(lambda v: m @ v, b) for n in names])(m, b)
    for name, x in zip(names, xs):
        np.testing.assert_allclose((m + jnp.eye(2)) @ x, b, rtol=1e-5, err_msg=name)
    x = solve_dense(lambda t: {"a": 2.0 * t["a"]}, {"a": jnp.ones((2, 2))})
    np.testing.assert_allclose(x["a"], 0.5)


def test_projection_simplex_against_bisection():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 5)) * 2
    p = np.asarray(projection_simplex(jnp.asarray(x), scale=2.0))
    for xi, pi in zip(x, p):
        lo, hi = xi.min() - 2.0, xi.max()
        for _ in range(100):
            tau = 0.5 * (lo + hi)
            lo, hi = (tau, hi) if np.maximum(xi - tau, 0).sum() > 2.0 else (lo, tau)
        np.testing.assert_allclose(pi, np.maximum(xi - tau, 0), atol=1e-5)


def test_clear_errors():
    with pytest.raises(ValueError, match="solve must be one of"):
        custom_root(_ridge_optimality, solve="lu")
    with pytest.raises(ValueError, match="ridge must be"):
        custom_root(_ridge_optimality, ridge=-1.0)
    with pytest.raises(ValueError, match="maxiter"):
        custom_root(_ridge_optimality, solve="cg", maxiter=0)
    with pytest.raises(TypeError, match="optimality_fn"):
        custom_root(3)
    bad = custom_root(lambda w, x: jnp.concatenate([w, w]))(lambda init, x: init * x)
    with pytest.raises(ValueError, match="square system"):
        jax.grad(lambda x: jnp.sum(bad(jnp.ones(2), x)))(jnp.ones(2))


def test_gmres_maxiter_counts_iterations_as_cg_does(x64):
    """maxiter (iMAML's cg_steps) is a number of Krylov iterations for GMRES too, not of restart cycles: one
    iteration from 0 is the minimal-residual step along b, x = (b.Ab / |Ab|^2) b."""
    from jmeta.implicit.linear_solve import solve_cg, solve_gmres

    rng = np.random.default_rng(0)
    m = rng.normal(size=(30, 30))
    a = jnp.asarray(m @ m.T + 30 * np.eye(30))
    b = jnp.asarray(rng.normal(size=30))
    ab = a @ b

    def matvec(v):  # one function for every solve (a new closure per call traced and compiled its loop again)
        return a @ v

    one = solve_gmres(matvec, b, tol=1e-14, maxiter=1)
    np.testing.assert_allclose(one, (b @ ab) / (ab @ ab) * b, rtol=1e-10)
    sols = {}
    for k in (2, 5):  # on an SPD system k GMRES steps minimise the residual: never worse than k CG steps ...
        sols[k] = [f(matvec, b, tol=1e-14, maxiter=k) for f in (solve_gmres, solve_cg)]
        res = [float(jnp.linalg.norm(a @ x - b)) for x in sols[k]]
        assert res[0] <= res[1] * (1 + 1e-9)
    exact = jnp.linalg.solve(a, b)  # ... and far from converged, as 20-iteration restart cycles would be
    assert float(jnp.linalg.norm(sols[2][0] - exact)) > 1e-6  # the GMRES solve with maxiter=2
