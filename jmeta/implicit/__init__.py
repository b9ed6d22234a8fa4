"""Implicit differentiation: derivatives of solved (not unrolled) inner problems.

* :func:`custom_root` / :func:`implicit_solve` / :func:`custom_fixed_point`:
  wrap a solver so its reverse-mode derivative comes from the optimality
  condition by one linear solve (jaxopt-style).
* :mod:`jmeta.implicit.linear_solve`: dense, CG, GMRES, BiCGSTAB solvers on matvecs.
* :func:`projection_simplex`: for projected-gradient solvers (MetaOptNet's SVM dual).
"""

from jmeta.implicit.linear_solve import (LINEAR_SOLVERS, make_linear_solver, solve_bicgstab, solve_cg, solve_dense,
                                         solve_gmres)
from jmeta.implicit.projections import projection_simplex
from jmeta.implicit.root import custom_fixed_point, custom_root, implicit_solve, root_vjp

__all__ = [
    "LINEAR_SOLVERS",
    "custom_fixed_point",
    "custom_root",
    "implicit_solve",
    "make_linear_solver",
    "projection_simplex",
    "root_vjp",
    "solve_bicgstab",
    "solve_cg",
    "solve_dense",
    "solve_gmres",
]
