r"""MetaOptNet: a multi-class linear SVM (or ridge) head solved per task, differentiated implicitly (Lee et al. 2019).

The shared embedding maps the ``n`` support examples to
:math:`X\in\mathbb{R}^{n\times d}`; per task a Crammer-Singer multi-class
linear SVM is fitted on them,

.. math::
    \min_{W,\xi}\ \tfrac12 \lVert W\rVert_F^2 + C\sum_i \xi_i
    \quad\text{s.t.}\quad w_{y_i}^\top x_i - w_k^\top x_i \ge 1 - \delta_{y_i k} - \xi_i\ \ \forall i,k,

through its dual, a QP in :math:`\alpha\in\mathbb{R}^{n\times K}` that depends
on the data only through the Gram matrix :math:`G = XX^\top` (:math:`Y` the
one-hot labels, :math:`\rho` an optional ridge, see below):

.. math::
    \min_\alpha\ \tfrac12 \operatorname{tr}\big(\alpha^\top (G + \rho I)\alpha\big) - \langle \alpha, Y\rangle
    \quad\text{s.t.}\quad \alpha_i \le C\,Y_i,\ \ \mathbf{1}^\top \alpha_i = 0,
    \qquad W = X^\top \alpha .

With :math:`\alpha = C(Y - \beta)` the constraints say exactly that every row
:math:`\beta_i` lies on the probability simplex, so the dual is solved on the
device, batched over tasks, by **FISTA with adaptive restart** (O'Donoghue &
Candès 2015) on a product of simplices (step :math:`1/L`,
:math:`L = C^2(\lambda_{\max}(G)+\rho)` by power iteration), started at
:math:`\beta = Y` (:math:`\alpha = 0`), for at most ``max_iter`` iterations and
until the KKT residual

.. math::
    r_i = \max_k \gamma_{ik} - \langle \beta_i, \gamma_i\rangle \ \ge 0,\qquad
    \gamma = (G+\rho I)\alpha - Y,

(complementary slackness of example ``i`` in units of the margin; zero exactly
at the optimum, and :math:`C\sum_i r_i` bounds the dual suboptimality) satisfies
:math:`\max_i r_i \le` ``tol``.

The solution is differentiated with respect to :math:`G` (hence the embedding)
**implicitly** via :func:`jmeta.implicit.custom_fixed_point` applied to the
projected-gradient fixed point :math:`\beta = \Pi_\Delta(\beta - \eta\nabla_\beta f)`,
never by backpropagating through the iterations. The query logits are
``scale * emb(x_q) @ W`` with a learnable ``scale``.

``gram_ridge`` :math:`\rho`: the reference implementation adds :math:`1\cdot I`
to the dual's kernel matrix "to avoid PSD errors from the QP solver"; it makes
the dual strongly convex (a unique, differentiable solution even when
:math:`n > d`) and is the default here. ``gram_ridge=0`` gives the plain
Crammer-Singer SVM above (then :math:`G` should be positive definite, i.e.
independent embeddings with :math:`d \ge n`, for the implicit derivative to
exist).

MetaOptNet-RR (``head="ridge"``): the ridge-regression dual
:math:`\alpha = (G + \lambda I)^{-1}Y` in closed form (``ridge_lambda``, 50 in
the reference), the same head as :class:`~jmeta.algorithms.r2d2.R2D2` without
its adjust layer.

Reference: K. Lee, S. Maji, A. Ravichandran, S. Soatto, "Meta-Learning with
Differentiable Convex Optimization", CVPR 2019.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jmeta import validate
from jmeta._struct import hparam, static_dataclass
from jmeta.algorithms.r2d2 import ClosedFormHead, ridge_regression, solve_dtype
from jmeta.implicit.linear_solve import LINEAR_SOLVERS
from jmeta.implicit.projections import projection_simplex
from jmeta.implicit.root import custom_fixed_point

METAOPTNET_HEADS = ("svm", "ridge")


class SVMInfo(NamedTuple):
    """Diagnostics of the dual solve: ``iterations`` run and the final ``kkt_residual`` (``max_i r_i``)."""

    iterations: jax.Array
    kkt_residual: jax.Array


def _lambda_max(gram, iters: int = 30):
    """Largest eigenvalue of a PSD matrix: power iteration from a fixed generic vector, capped by ``||G||_F``."""
    n = gram.shape[0]
    v = jnp.cos(jnp.arange(n, dtype=gram.dtype) * 1.618 + 0.5) + 1.5
    v = v / jnp.linalg.norm(v)

    def body(_, v):
        w = gram @ v
        return w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(gram.dtype).tiny)

    v = jax.lax.fori_loop(0, iters, body, v)
    est = v @ (gram @ v)
    return jnp.minimum(1.1 * est, jnp.sqrt(jnp.sum(gram * gram)))


def _gamma(beta, gram, y, c, ridge):
    alpha = c * (y - beta)
    return gram @ alpha + ridge * alpha - y


def _step_size(gram, c, ridge):
    gram = jax.lax.stop_gradient(gram)
    return 1.0 / (c * c * (_lambda_max(gram) + ridge) + jnp.finfo(gram.dtype).tiny)


def svm_kkt_residual(alpha, gram, y, *, C: float, ridge: float = 0.0):
    r"""Per-example KKT residual :math:`r_i = \max_k\gamma_{ik} - \langle\beta_i,\gamma_i\rangle` of a dual point.

    Zero for every ``i`` exactly at the optimum (given feasibility,
    :math:`\beta_i = Y_i - \alpha_i / C` on the simplex); :math:`C \sum_i r_i`
    bounds the dual suboptimality.

    Args:
      alpha: dual variables ``[n, K]``.
      gram: ``X X^T``, ``[n, n]``.
      y: one-hot labels ``[n, K]``.
      C: the SVM's ``C``.
      ridge: the dual's ridge ``rho``.
    """
    beta = y - alpha / C
    g = _gamma(beta, gram, y, C, ridge)
    return jnp.max(g, axis=-1) - jnp.sum(beta * g, axis=-1)


def svm_dual_objective(alpha, gram, y, *, ridge: float = 0.0):
    r"""The (minimised) dual objective.

    :math:`\tfrac12\operatorname{tr}(\alpha^\top(G+\rho I)\alpha) - \langle\alpha,Y\rangle`.
    """
    return 0.5 * jnp.sum(alpha * (gram @ alpha + ridge * alpha)) - jnp.sum(alpha * y)


def _fixed_point(beta, gram, y, c, ridge):
    eta = _step_size(gram, c, ridge)
    return projection_simplex(beta + eta * c * _gamma(beta, gram, y, c, ridge))


def _fista(beta0, gram, y, c, ridge, max_iter, tol):
    eta = _step_size(gram, c, ridge)
    gram = jax.lax.stop_gradient(gram)

    def kkt(beta):
        g = _gamma(beta, gram, y, c, ridge)
        return jnp.max(jnp.max(g, axis=-1) - jnp.sum(beta * g, axis=-1))

    def cond(s):
        k, _, _, _, res = s
        return (k < max_iter) & (res > tol)

    def body(s):
        k, beta, z, t, _ = s
        beta_new = projection_simplex(z + eta * c * _gamma(z, gram, y, c, ridge))
        # gradient-based adaptive restart: drop the momentum when it points uphill
        restart = jnp.sum((z - beta_new) * (beta_new - beta)) > 0
        t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
        mom = jnp.where(restart, 0.0, (t - 1.0) / t_new)
        t_new = jnp.where(restart, jnp.ones_like(t), t_new)
        z_new = beta_new + mom * (beta_new - beta)
        return k + 1, beta_new, z_new, t_new, kkt(beta_new)

    dt = beta0.dtype
    init = (jnp.zeros((), jnp.int32), beta0, beta0, jnp.ones((), dt), kkt(beta0))
    k, beta, _, _, res = jax.lax.while_loop(cond, body, init)
    return beta, SVMInfo(k, res)


def crammer_singer_svm(gram, y, *, C: float = 0.1, ridge: float = 1.0, max_iter: int = 1000, tol: float = 1e-4,
                       implicit_solve: str = "dense"):
    r"""Dual solution :math:`\alpha^\star(G)` of the Crammer-Singer SVM, differentiable implicitly in ``gram``.

    Args:
      gram: ``X X^T`` of the support embeddings, ``[n, n]``. float32 and
        float64 are solved in their own precision; bfloat16/float16 are solved
        (forward FISTA and the implicit backward solve) in float32, and
        ``alpha`` is cast back.
      y: one-hot support labels ``[n, K]`` (same float dtype).
      C: the SVM's ``C > 0`` (MetaOptNet: 0.1).
      ridge: :math:`\rho \ge 0` added to the dual's kernel (module docstring).
      max_iter: FISTA iteration cap.
      tol: stop when :math:`\max_i r_i \le` ``tol`` (:func:`svm_kkt_residual`).
      implicit_solve: linear solver of the backward pass for the
        ``nK x nK`` non-symmetric fixed-point system (``"dense"``, ``"gmres"``,
        ``"bicgstab"``).

    Returns:
      ``(alpha [n, K], SVMInfo)`` (``alpha`` in the dtype of ``gram``,
      ``SVMInfo.kkt_residual`` in the dtype of the solve); the primal weights
      are ``X^T alpha``.
    """
    sd = solve_dtype(gram.dtype)
    if sd != gram.dtype:
        alpha, info = crammer_singer_svm(gram.astype(sd), y.astype(sd), C=C, ridge=ridge, max_iter=max_iter,
                                         tol=tol, implicit_solve=implicit_solve)
        return alpha.astype(gram.dtype), info
    c, r = float(C), float(ridge)
    fp = functools.partial(_fixed_point, c=c, ridge=r)
    solver = custom_fixed_point(lambda beta, g, yy: fp(beta, g, yy), solve=implicit_solve, has_aux=True,
                                tol=1e-6 if gram.dtype == jnp.float32 else 1e-10)(
        lambda beta0, g, yy: _fista(beta0, g, yy, c, r, max_iter, tol))
    beta, info = solver(jax.lax.stop_gradient(y), gram, y)
    return c * (y - beta), info


@static_dataclass
class MetaOptNet(ClosedFormHead):
    r"""MetaOptNet-SVM (Crammer-Singer SVM head) and MetaOptNet-RR (ridge head).

    Meta-parameters: ``"params"`` (the embedding) and ``"scale"`` (the logit
    scale, when ``learn_scale``). ``adapt`` returns ``{"w": X^T alpha}``
    (``[d, K]``); the logits are ``scale * emb @ w``. ``task_loss`` logs the
    solver's ``svm_iterations`` and ``svm_kkt_residual``.

    Attributes:
      head: ``"svm"`` or ``"ridge"``.
      C: SVM regularisation ``C > 0`` (0.1 in the reference).
      gram_ridge: :math:`\rho \ge 0` added to the SVM dual's kernel (1.0 in
        the reference; 0 = the plain Crammer-Singer SVM).
      ridge_lambda: :math:`\lambda > 0` of the ridge head (50 in the reference).
      max_iter: FISTA iteration cap of the SVM dual solve.
      tol: KKT tolerance of the SVM dual solve (:func:`svm_kkt_residual`,
        margin units).
      implicit_solve: backward linear solver, ``"dense"`` (default; ``nK``
        unknowns, e.g. 375 for 5-way 15-shot), ``"gmres"`` or ``"bicgstab"``.
      init_scale: initial logit scale (1.0 in the reference).
      learn_scale: learn the logit scale.
    """

    head: str = "svm"
    C: float = hparam(0.1, validate.number, min=0, min_open=True, traced_ok=True)
    gram_ridge: float = hparam(1.0, validate.number, min=0, traced_ok=True)
    ridge_lambda: float = hparam(50.0, validate.number, min=0, min_open=True, traced_ok=True)
    max_iter: int = hparam(1000, validate.integer, min=1)
    tol: float = hparam(1e-4, validate.number, min=0, traced_ok=True)
    implicit_solve: str = "dense"
    init_scale: float = hparam(1.0, validate.number, traced_ok=True)
    learn_scale: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.head not in METAOPTNET_HEADS:
            raise ValueError(f"head must be one of {METAOPTNET_HEADS}, got {self.head!r}")
        if self.implicit_solve not in LINEAR_SOLVERS or self.implicit_solve == "cg":
            raise ValueError("implicit_solve must be one of ('dense', 'gmres', 'bicgstab') (the fixed-point "
                             f"Jacobian is not symmetric), got {self.implicit_solve!r}")

    def _head_init(self, dtype) -> dict:
        return {"scale": jnp.asarray(self.init_scale, dtype)} if self.learn_scale else {}

    def _scale(self, meta_params):
        return meta_params["scale"] if self.learn_scale else self.init_scale

    def _fit(self, meta_params, emb, onehot):
        if self.head == "ridge":
            return {"w": ridge_regression(emb, onehot, self.ridge_lambda, form="dual")}, {}
        # bfloat16/float16 embeddings: Gram matrix and dual solve in float32 (crammer_singer_svm), weights cast back
        sd = solve_dtype(emb.dtype)
        e = emb.astype(sd)
        alpha, info = crammer_singer_svm(e @ e.T, onehot.astype(sd), C=self.C, ridge=self.gram_ridge,
                                         max_iter=self.max_iter, tol=self.tol, implicit_solve=self.implicit_solve)
        diag = {"svm_iterations": info.iterations.astype(sd), "svm_kkt_residual": info.kkt_residual}
        return {"w": (e.T @ alpha).astype(emb.dtype)}, diag

    def _logits(self, meta_params, adapted, emb):
        return self._scale(meta_params) * (emb @ adapted["w"])


__all__ = ["METAOPTNET_HEADS", "MetaOptNet", "SVMInfo", "crammer_singer_svm", "svm_dual_objective",
           "svm_kkt_residual"]
