r"""Linear solvers for implicit differentiation: ``solve(matvec, b) -> x``.

Every solver here finds ``x`` with :math:`(A + \rho I)\,x = b` given only the
matrix-vector product ``matvec(v) = A v`` on pytrees (the ridge :math:`\rho`
is optional damping). They are what :func:`jmeta.implicit.custom_root` uses
to solve :math:`(\partial_x F)^\top u = v` in its backward pass:

* ``"dense"``: materialise :math:`A` column by column (``vmap`` of
  ``matvec`` over the unit vectors) and call ``jnp.linalg.solve``. Exact and
  robust for any non-singular :math:`A`; cost :math:`O(n)` matvecs plus
  :math:`O(n^3)`, so for systems up to a few thousand unknowns.
* ``"cg"``: conjugate gradient (``jax.scipy.sparse.linalg.cg``); needs
  :math:`A` symmetric positive definite (e.g. the Hessian of a strongly
  convex inner objective). Memory :math:`O(n)`.
* ``"gmres"``, ``"bicgstab"``: Krylov solvers for general non-symmetric
  :math:`A` (``jax.scipy.sparse.linalg``).

All of them work under ``jit`` and ``vmap`` and in float32 and float64.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jmeta import validate

PyTree = Any
LinearSolver = Callable[[Callable[[PyTree], PyTree], PyTree], PyTree]

LINEAR_SOLVERS = ("dense", "cg", "gmres", "bicgstab")


def _add_ridge(matvec, ridge):
    if ridge == 0:
        return matvec
    return lambda v: jax.tree.map(lambda a, b: a + ridge * b, matvec(v), v)


def solve_dense(matvec: Callable[[PyTree], PyTree], b: PyTree, *, ridge: float = 0.0) -> PyTree:
    r"""Solves :math:`(A + \rho I) x = b` by materialising :math:`A` (``n`` matvecs) and an LU solve.

    Args:
      matvec: ``v -> A v`` on pytrees shaped like ``b``.
      b: right-hand side (a pytree of arrays).
      ridge: :math:`\rho \ge 0` added to the diagonal.

    Returns:
      ``x`` with the structure of ``b``.
    """
    flat_b, unravel = ravel_pytree(b)
    n = flat_b.shape[0]

    def mv(v):
        return ravel_pytree(matvec(unravel(v)))[0]

    eye = jnp.eye(n, dtype=flat_b.dtype)
    a = jax.vmap(mv, out_axes=1)(eye)  # column i = A e_i
    if ridge:
        a = a + ridge * eye
    return unravel(jnp.linalg.solve(a, flat_b))


def solve_cg(matvec, b, *, ridge: float = 0.0, tol: float = 1e-6, maxiter: int | None = None, init=None):
    r"""Conjugate gradient for symmetric positive definite :math:`A + \rho I`.

    Stops when :math:`\lVert r\rVert \le \mathrm{tol}\,\lVert b\rVert` or after ``maxiter`` iterations
    (default ``10 n``, as scipy). A plain ``lax.while_loop`` (no ``lax.custom_linear_solve``), so the
    matvec need not be differentiable in forward mode -- it may be a ``jax.vjp`` through
    ``jax.custom_vjp`` functions. The solve itself is not differentiated (it runs inside backward passes).
    """
    a = _add_ridge(matvec, ridge)
    flat_b, unravel = ravel_pytree(b)
    n = flat_b.shape[0]
    maxiter = 10 * n if maxiter is None else maxiter

    def mv(v):
        return ravel_pytree(a(unravel(v)))[0].astype(flat_b.dtype)

    x0 = jnp.zeros_like(flat_b) if init is None else ravel_pytree(init)[0].astype(flat_b.dtype)
    r0 = flat_b - mv(x0) if init is not None else flat_b
    rs0 = jnp.vdot(r0, r0)
    thresh = (tol * jnp.linalg.norm(flat_b)) ** 2

    def cond(c):
        k, _, _, _, rs = c
        return (k < maxiter) & (rs > thresh)

    def body(c):
        k, x, r, p, rs = c
        ap = mv(p)
        alpha = rs / jnp.vdot(p, ap)
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = jnp.vdot(r, r)
        p = r + (rs_new / rs) * p
        return k + 1, x, r, p, rs_new

    _, x, _, _, _ = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), x0, r0, r0, rs0))
    return unravel(x)


def solve_gmres(matvec, b, *, ridge: float = 0.0, tol: float = 1e-6, maxiter: int | None = None, init=None,
                restart: int = 20):
    r"""Restarted GMRES for a general non-singular :math:`A + \rho I`.

    ``maxiter`` counts Krylov iterations (matrix-vector products), as for
    :func:`solve_cg`: the restart length is ``min(restart, maxiter)`` and the
    number of restart cycles (what ``jax.scipy.sparse.linalg.gmres`` calls
    ``maxiter``) is ``ceil(maxiter / restart)``, so at most ``maxiter``
    iterations rounded up to a whole cycle run.
    """
    cycles = None
    if maxiter is not None:
        restart = min(restart, maxiter)
        cycles = -(-maxiter // restart)
    return jax.scipy.sparse.linalg.gmres(_add_ridge(matvec, ridge), b, x0=init, tol=tol, maxiter=cycles,
                                         restart=restart, solve_method="batched")[0]


def solve_bicgstab(matvec, b, *, ridge: float = 0.0, tol: float = 1e-6, maxiter: int | None = None, init=None):
    r"""BiCGSTAB for a general non-singular :math:`A + \rho I`."""
    return jax.scipy.sparse.linalg.bicgstab(_add_ridge(matvec, ridge), b, x0=init, tol=tol, maxiter=maxiter)[0]


def make_linear_solver(solve: str | LinearSolver = "dense", *, ridge: float = 0.0, tol: float = 1e-6,
                       maxiter: int | None = None) -> LinearSolver:
    """Resolves a solver name (or callable) to ``solve(matvec, b) -> x``.

    Args:
      solve: one of :data:`LINEAR_SOLVERS` or a callable ``solve(matvec, b) -> x``
        (used as is; ``ridge``/``tol``/``maxiter`` are then ignored).
      ridge: damping :math:`\\rho \\ge 0` added to the diagonal.
      tol: relative residual tolerance of the iterative solvers.
      maxiter: iteration cap of the iterative solvers (``None``: their default).

    Raises:
      ValueError: for an unknown name or invalid ``ridge``/``tol``/``maxiter``.
    """
    if callable(solve):
        return solve
    if solve not in LINEAR_SOLVERS:
        raise ValueError(f"solve must be one of {LINEAR_SOLVERS} or a callable solve(matvec, b), got {solve!r}")
    ridge = validate.number("ridge", ridge, min=0)
    tol = validate.number("tol", tol, min=0)
    maxiter = validate.integer("maxiter", maxiter, min=1, optional=True)
    if solve == "dense":
        return lambda matvec, b: solve_dense(matvec, b, ridge=ridge)
    fn = {"cg": solve_cg, "gmres": solve_gmres, "bicgstab": solve_bicgstab}[solve]
    return lambda matvec, b: fn(matvec, b, ridge=ridge, tol=float(tol), maxiter=maxiter)


__all__ = ["LINEAR_SOLVERS", "LinearSolver", "make_linear_solver", "solve_bicgstab", "solve_cg", "solve_dense",
           "solve_gmres"]
