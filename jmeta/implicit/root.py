r"""Implicit differentiation of solutions of equations: "solve, then differentiate the optimality condition".

A solver computes :math:`x^\star(\theta)` with :math:`F(x^\star, \theta) = 0`
(a gradient that vanishes, a fixed point of a projected-gradient step, KKT
conditions). By the implicit function theorem

.. math::
    \partial_\theta x^\star = -(\partial_x F)^{-1}\,\partial_\theta F,
    \qquad
    v^\top \partial_\theta x^\star = -u^\top \partial_\theta F
    \ \text{ with }\ (\partial_x F)^\top u = v,

so the reverse-mode derivative of *any* solver (unrolled or not, with any
number of iterations) costs one linear solve with matvecs
:math:`u \mapsto (\partial_x F)^\top u` (a ``jax.vjp`` of ``F``) and one more
``vjp``; nothing of the solver's iterations is stored. This is the approach of
jaxopt's ``custom_root`` (Blondel et al. 2022, "Efficient and Modular Implicit
Differentiation"), used by iMAML (Rajeswaran et al. 2019) and MetaOptNet (Lee
et al. 2019).

Example (ridge regression solved by gradient descent, differentiated implicitly)::

    import jax, jax.numpy as jnp
    from jmeta.implicit import custom_root

    def optimality(w, x, y, lam):            # gradient of the ridge objective
        return x.T @ (x @ w - y) + lam * w

    @custom_root(optimality, solve="cg")     # the Hessian x^T x + lam I is SPD
    def ridge(init, x, y, lam):
        step = 1.0 / (jnp.linalg.norm(x, 2) ** 2 + lam)
        body = lambda _, w: w - step * optimality(w, x, y, lam)
        return jax.lax.fori_loop(0, 500, body, init)

    g = jax.grad(lambda x: ridge(jnp.zeros(3), x, y, 0.1).sum())(x)   # no tape through the 500 steps

Limitations: the wrapped solver is a ``jax.custom_vjp``, so reverse mode only
(``jax.jvp``/``jax.jacfwd`` of it raise); the derivative with respect to
``init`` is zero; ``F`` must be differentiable at the solution and
:math:`\partial_x F` non-singular there.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.implicit.linear_solve import LinearSolver, make_linear_solver

PyTree = Any


def _zero_cotangent(x):
    x = jnp.asarray(x) if not hasattr(x, "dtype") else x
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(np.shape(x), dtype=jax.dtypes.float0)


def _check_square(optimality_fn, sol, args):
    out = jax.eval_shape(lambda x: optimality_fn(x, *args), sol)
    want = (jax.tree.structure(sol), [tuple(jnp.shape(a)) for a in jax.tree.leaves(sol)])
    got = (jax.tree.structure(out), [tuple(a.shape) for a in jax.tree.leaves(out)])
    if want != got:
        raise ValueError("optimality_fn(x, *args) must return a pytree with the structure and shapes of x "
                         f"(a square system); x is {want[0]} with shapes {want[1]}, optimality_fn returned "
                         f"{got[0]} with shapes {got[1]}")


def root_vjp(optimality_fn: Callable[..., PyTree], sol: PyTree, args: tuple, cotangent: PyTree,
             solve: str | LinearSolver = "dense", *, symmetric: bool = False) -> tuple:
    r"""Cotangents of ``args`` for the root ``sol`` of ``optimality_fn(sol, *args) = 0``.

    Solves :math:`(\partial_x F)^\top u = v` (``v = cotangent``) and returns
    :math:`-u^\top \partial_{\mathrm{args}} F`, one entry per element of ``args``
    (``float0`` zeros for integer arguments).

    Args:
      optimality_fn: ``F(x, *args)``, same structure and shapes as ``x``.
      sol: the solution ``x*``.
      args: the tuple of arguments ``F`` depends on.
      cotangent: the incoming cotangent ``v`` (structure of ``sol``).
      solve: a name from :data:`jmeta.implicit.LINEAR_SOLVERS` or ``solve(matvec, b)``.
      symmetric: :math:`\partial_x F` is symmetric (e.g. ``F`` a gradient:
        then it is a Hessian), so the matvecs use forward mode
        (``jax.linearize`` of ``F``: forward-over-reverse Hessian-vector
        products) instead of ``jax.vjp``. Leave it ``False`` (reverse-over-reverse
        products, the same numbers for a symmetric matrix) when ``F`` calls
        ``jax.custom_vjp`` functions, which have no forward mode (e.g. jmeta's
        ``conv_impl="patches_vjp"`` convolutions).
    """
    _check_square(optimality_fn, sol, args)
    lin = make_linear_solver(solve)
    if symmetric:
        _, matvec = jax.linearize(lambda x: optimality_fn(x, *args), sol)
    else:
        _, vjp_x = jax.vjp(lambda x: optimality_fn(x, *args), sol)

        def matvec(w):
            return vjp_x(w)[0]

    u = lin(matvec, cotangent)
    _, vjp_a = jax.vjp(lambda *a: optimality_fn(sol, *a), *args)
    return vjp_a(jax.tree.map(jnp.negative, u))


def custom_root(optimality_fn: Callable[..., PyTree], *, solve: str | LinearSolver = "dense",
                has_aux: bool = False, tol: float = 1e-6, maxiter: int | None = None, ridge: float = 0.0,
                symmetric: bool = False):
    r"""Decorator: gives ``solver(init, *args) -> x*`` the implicit reverse-mode derivative.

    ``optimality_fn(x, *args)`` must vanish at the solver's output. Under
    ``jax.grad``/``jax.vjp`` the wrapped solver runs forward without a tape
    (its iterations are never differentiated) and its backward pass solves

    .. math:: (\partial_x F + \rho I)^\top u = v,\qquad
              \bar{\mathrm{args}} = -u^\top \partial_{\mathrm{args}} F .

    Args:
      optimality_fn: ``F(x, *args) -> pytree`` shaped like ``x`` (same
        positional arguments as the solver after ``init``).
      solve: linear solver for the backward pass: ``"dense"`` (small systems,
        any non-singular Jacobian), ``"cg"`` (symmetric positive definite
        :math:`\partial_x F`, e.g. a gradient of a strongly convex function),
        ``"gmres"``, ``"bicgstab"`` or ``solve(matvec, b) -> x``.
      has_aux: the solver returns ``(x, aux)``; ``aux`` is passed through and
        gets no gradient.
      tol: relative residual tolerance of iterative linear solvers.
      maxiter: iteration cap of iterative linear solvers (e.g. iMAML's CG steps).
      ridge: damping :math:`\rho \ge 0` added to :math:`\partial_x F` (``0``: exact).
      symmetric: :math:`\partial_x F` is symmetric; matvecs then use forward
        mode (see :func:`root_vjp`), e.g. Hessian-vector products by
        forward-over-reverse when ``F`` is a gradient.

    Returns:
      A decorator; the decorated function has the solver's signature
      ``(init, *args)``, works under ``jit`` and ``vmap``, and returns zero
      cotangents for ``init``.

    Example:
      >>> @custom_root(lambda x, a: x * x - a)          # x* = sqrt(a)
      ... def sqrt(init, a):
      ...     return jax.lax.fori_loop(0, 30, lambda _, x: 0.5 * (x + a / x), init)
      >>> jax.grad(lambda a: sqrt(1.0, a))(4.0)        # 1 / (2 sqrt(4)) = 0.25
    """
    if not callable(optimality_fn):
        raise TypeError(f"optimality_fn must be callable F(x, *args), got {type(optimality_fn).__name__}")
    lin = make_linear_solver(solve, ridge=ridge, tol=tol, maxiter=maxiter)

    def decorator(solver: Callable[..., Any]):
        if not callable(solver):
            raise TypeError(f"custom_root decorates a solver(init, *args), got {type(solver).__name__}")

        @jax.custom_vjp
        def wrapped(init, *args):
            return solver(init, *args)

        def fwd(init, *args):
            out = solver(init, *args)
            sol = out[0] if has_aux else out
            return out, (init, sol, args)

        def bwd(res, ct):
            init, sol, args = res
            ct_sol = ct[0] if has_aux else ct
            ct_args = root_vjp(optimality_fn, sol, args, ct_sol, solve=lin, symmetric=symmetric)
            return (jax.tree.map(_zero_cotangent, init), *ct_args)

        wrapped.defvjp(fwd, bwd)
        wrapped.__doc__ = solver.__doc__
        wrapped.__name__ = getattr(solver, "__name__", "solver")
        wrapped.__wrapped__ = solver
        return wrapped

    return decorator


def custom_fixed_point(fixed_point_fn: Callable[..., PyTree], **kwargs):
    r"""Like :func:`custom_root` for a fixed point :math:`x^\star = T(x^\star, \theta)`.

    Uses :math:`F(x, \theta) = T(x, \theta) - x` (e.g. ``T`` a projected
    gradient step, whose fixed points are the solutions of a constrained
    convex problem). ``kwargs`` go to :func:`custom_root`.
    """
    if not callable(fixed_point_fn):
        raise TypeError(f"fixed_point_fn must be callable T(x, *args), got {type(fixed_point_fn).__name__}")

    def optimality_fn(x, *args):
        return jax.tree.map(jnp.subtract, fixed_point_fn(x, *args), x)

    return custom_root(optimality_fn, **kwargs)


def implicit_solve(solver: Callable[..., Any], optimality_fn: Callable[..., PyTree], **kwargs):
    """Function form of :func:`custom_root`: ``implicit_solve(solver, F, **kw) == custom_root(F, **kw)(solver)``."""
    return custom_root(optimality_fn, **kwargs)(solver)


__all__ = ["custom_fixed_point", "custom_root", "implicit_solve", "root_vjp"]
