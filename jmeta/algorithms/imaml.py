r"""iMAML: implicit model-agnostic meta-learning (Rajeswaran, Finn, Kakade & Levine 2019).

Each task adapts by solving a *proximal* inner problem around the
meta-parameters :math:`\theta`,

.. math::
    \phi^\star(\theta) = \arg\min_\phi\ L^{s}(\phi) + \tfrac{\lambda}{2}\lVert\phi - \theta\rVert^2,

approximately, by ``num_steps`` steps of an optax transformation started at
:math:`\theta` and run **without a gradient tape**. Its stationarity
condition :math:`\nabla L^s(\phi) + \lambda(\phi - \theta) = 0` gives, by the
implicit function theorem, the meta-gradient of the query loss

.. math::
    \frac{d L^{q}(\phi^\star)}{d\theta} = \Big(I + \tfrac{1}{\lambda}\nabla^2 L^{s}(\phi^\star)\Big)^{-1}
    \nabla L^{q}(\phi^\star),

computed by ``cg_steps`` steps of conjugate gradient on Hessian-vector
products (forward-over-reverse, ``jax.jvp`` of ``jax.grad``, through the
``jax.vjp`` of the optimality condition), with optional damping
:math:`(1 + \mu) I + H/\lambda`. Memory does not grow with the number of
inner steps: nothing of the inner loop is stored (this is
:func:`jmeta.implicit.custom_root` applied to the condition above, scaled by
:math:`1/\lambda` so that its Jacobian is exactly :math:`I + H/\lambda`).

With ``adapt_params`` only part of the parameters is adapted (and
regularised towards its initial value); the rest, shared, gets the implicit
cross-term :math:`-\tfrac1\lambda u^\top \partial^2 L^s/\partial\phi\,\partial\theta_{\text{shared}}`
plus its direct query-loss gradient.

Reference: A. Rajeswaran, C. Finn, S. Kakade, S. Levine, "Meta-Learning with
Implicit Gradients", NeurIPS 2019.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jmeta import validate
from jmeta._struct import hparam, static_dataclass
from jmeta.algorithms.base import check_one_task, combine, make_param_filter, param_spec, partition
from jmeta.implicit.root import custom_root
from jmeta.inner.loop import check_inner_transform, inner_loop
from jmeta.losses import get_loss, metrics_for

PyTree = Any

IMAML_HVPS = ("auto", "forward", "reverse")
IMAML_BN_MODES = ("batch", "frozen")
IMAML_SOLVES = ("cg", "dense", "gmres", "bicgstab")


def _sqnorm(tree):
    return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))


def _calls_custom_vjp(jaxpr) -> bool:
    """Whether ``jaxpr`` (or a jaxpr nested in it) calls a ``jax.custom_vjp`` function, which has no
    forward mode (JAX raises only when such a ``jvp`` is lowered, not when it is traced)."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name.startswith("custom_vjp"):
            return True
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns") and _calls_custom_vjp(sub):
                    return True
    return False


@static_dataclass
class IMAML:
    r"""iMAML with a conjugate-gradient implicit meta-gradient.

    Meta-parameters: ``{"params": theta}``.

    Attributes:
      apply: the model, ``apply(params, state, x, *, train) -> (out, state)``.
      loss: ``"mse"``, ``"cross_entropy"`` or ``f(pred, y) -> scalar``.
      reg_lambda: proximal regularisation :math:`\lambda > 0` (the paper uses
        0.5-2 for Omniglot / mini-ImageNet).
      inner_lr: inner learning rate ``> 0`` (gradient descent on the proximal
        objective needs ``inner_lr < 2 / (L + lambda)``).
      num_steps: inner steps during meta-training ``>= 1``.
      eval_steps: inner steps at evaluation (default ``num_steps``).
      inner_transform: optional optax update direction before the learning
        rate (e.g. ``optax.scale_by_adam()``); default plain gradient descent.
        ``-inner_lr`` is applied after it, so a whole optimizer (``optax.adam(lr)``)
        goes in as ``optax.chain(opt, optax.scale(-1.0))`` with ``inner_lr=1.0``.
      cg_steps: iterations of the meta-gradient's linear solver (CG; the paper uses 5), also for
        ``"gmres"`` (Krylov iterations, not restart cycles) and ``"bicgstab"``.
      cg_damping: :math:`\mu \ge 0`; solves :math:`((1+\mu)I + H/\lambda)g = \nabla L^q`.
      cg_tol: relative residual at which CG stops early.
      linear_solve: ``"cg"`` (default), or ``"dense"`` (exact, small models
        only), ``"gmres"``, ``"bicgstab"``.
      adapt_params: which parameters are adapted (``None``: all; see
        :func:`jmeta.algorithms.base.make_param_filter`).
      bn_mode: ``"batch"`` (training-mode BatchNorm everywhere, as MAML) or
        ``"frozen"`` (evaluation mode, ``model_state`` never updated).
      hvp: how the Hessian-vector products of CG are formed: ``"forward"``
        (forward-over-reverse), ``"reverse"`` (reverse-over-reverse: the same
        numbers, needed when the model calls ``jax.custom_vjp`` functions,
        which have no forward mode -- e.g. ``conv_impl="patches_vjp"``
        convolutions, ``"auto"``'s choice on CPU) or ``"auto"`` (the default:
        ``"forward"`` unless the model calls a ``custom_vjp`` function, then
        ``"reverse"``; decided by tracing the support loss once more when
        ``task_loss`` is traced, at no run-time cost).
    """

    apply: Callable[..., Any]
    loss: str | Callable = "mse"
    reg_lambda: float = hparam(1.0, validate.number, min=0, min_open=True, traced_ok=True)
    inner_lr: float = hparam(0.01, validate.number, min=0, min_open=True, traced_ok=True)
    num_steps: int = hparam(10, validate.integer, min=1)
    eval_steps: int | None = hparam(None, validate.integer, min=0, optional=True)
    inner_transform: optax.GradientTransformation | None = None
    cg_steps: int = hparam(5, validate.integer, min=1)
    cg_damping: float = hparam(0.0, validate.number, min=0, traced_ok=True)
    cg_tol: float = hparam(1e-10, validate.number, min=0, traced_ok=True)
    linear_solve: str = "cg"
    adapt_params: Any = hparam(None, param_spec)
    bn_mode: str = "batch"
    hvp: str = "auto"

    def __post_init__(self):
        if not callable(self.apply):
            raise TypeError(f"apply must be a callable model, got {type(self.apply).__name__}")
        get_loss(self.loss)
        if self.inner_transform is not None and not isinstance(self.inner_transform, optax.GradientTransformation):
            raise TypeError("inner_transform must be an optax.GradientTransformation, "
                            f"got {type(self.inner_transform).__name__}")
        check_inner_transform("IMAML", self.inner_transform, differentiated=False)
        if self.linear_solve not in IMAML_SOLVES:
            raise ValueError(f"linear_solve must be one of {IMAML_SOLVES}, got {self.linear_solve!r}")
        if self.bn_mode not in IMAML_BN_MODES:
            raise ValueError(f"bn_mode must be one of {IMAML_BN_MODES}, got {self.bn_mode!r}")
        if self.hvp not in IMAML_HVPS:
            raise ValueError(f"hvp must be one of {IMAML_HVPS}, got {self.hvp!r}")

    # -- pieces ---------------------------------------------------------------
    @property
    def _train_mode(self) -> bool:
        return self.bn_mode == "batch"

    def _split(self, params):
        return partition(params, make_param_filter(self.adapt_params))

    def inner_optimizer(self) -> optax.GradientTransformation:
        scale = optax.scale(-self.inner_lr)
        return scale if self.inner_transform is None else optax.chain(self.inner_transform, scale)

    def _support_loss(self, fast, slow, state, x, y):
        out, _ = self.apply(combine(fast, slow), state, x, train=self._train_mode)
        return get_loss(self.loss)(out, y)

    def proximal_loss(self, fast, theta_fast, slow, state, x, y):
        r""":math:`L^s(\phi) + \tfrac{\lambda}{2}\lVert\phi - \theta\rVert^2` for the adapted part ``fast``."""
        diff = jax.tree.map(jnp.subtract, fast, theta_fast)
        return self._support_loss(fast, slow, state, x, y) + 0.5 * self.reg_lambda * _sqnorm(diff)

    def optimality(self, fast, theta_fast, slow, state, x, y):
        r"""The scaled stationarity condition :math:`\nabla L^s(\phi)/\lambda + \phi - \theta`.

        Zero at :math:`\phi^\star`; its Jacobian in :math:`\phi` is :math:`I + H/\lambda`.
        """
        g = jax.grad(self._support_loss)(fast, slow, state, x, y)
        return jax.tree.map(lambda gi, p, t: gi / self.reg_lambda + p - t, g, fast, theta_fast)

    def _inner(self, num_steps, eval_fn=None):
        def solver(init, theta_fast, slow, state, x, y):
            res = inner_loop(lambda f: self.proximal_loss(f, theta_fast, slow, state, x, y), init,
                             self.inner_optimizer(), num_steps, eval_fn=eval_fn)
            first = res.losses[0] if num_steps > 0 else self.proximal_loss(init, theta_fast, slow, state, x, y)
            return res.params, (first, res.evals)

        return solver

    def forward_hvp(self, fast, slow, state, x, y) -> bool:
        """Whether CG's Hessian-vector products go forward-over-reverse (``hvp``; ``"auto"``: unless the
        support loss calls a ``jax.custom_vjp`` function, found by tracing it, which runs nothing)."""
        if self.hvp != "auto":
            return self.hvp == "forward"
        return not _calls_custom_vjp(jax.make_jaxpr(self._support_loss)(fast, slow, state, x, y).jaxpr)

    def _solve(self, meta_params, model_state, x, y, num_steps):
        """``(phi, slow, support_loss_before)`` with the implicit derivative attached."""
        fast, slow = self._split(meta_params["params"])
        solver = custom_root(self.optimality, solve=self.linear_solve, has_aux=True, tol=self.cg_tol,
                             maxiter=self.cg_steps, ridge=self.cg_damping,
                             symmetric=self.forward_hvp(fast, slow, model_state, x, y))(self._inner(num_steps))
        phi, (first, _) = solver(jax.lax.stop_gradient(fast), fast, slow, model_state, x, y)
        return phi, slow, first

    # -- contract -------------------------------------------------------------
    def init(self, params: PyTree, *, key=None) -> dict:
        del key
        return {"params": params}

    def adapt(self, meta_params, model_state, support_x, support_y, *, key=None, num_steps=None):
        """Adapted parameters (the full tree) after ``num_steps`` proximal inner steps."""
        del key
        k = validate.integer("num_steps", self.num_steps if num_steps is None else num_steps, min=0)
        phi, slow, _ = self._solve(meta_params, model_state, support_x, support_y, k)
        return combine(phi, slow)

    def predict(self, meta_params, adapted, model_state, x, *, num_steps=None):
        del meta_params, num_steps
        return self.apply(adapted, model_state, x, train=self._train_mode)[0]

    def task_loss(self, meta_params, model_state, task, *, key=None, step=0):
        del key, step
        check_one_task(type(self).__name__, task, self.apply)
        phi, slow, first = self._solve(meta_params, model_state, task.support_x, task.support_y, self.num_steps)
        out, new_state = self.apply(combine(phi, slow), model_state, task.query_x, train=self._train_mode)
        metrics = metrics_for(self.loss, out, task.query_y)
        metrics["support_loss"] = jax.lax.stop_gradient(first)
        if self.bn_mode == "frozen":
            new_state = model_state
        return metrics["loss"], {"metrics": metrics, "model_state": new_state}

    def evaluate(self, meta_params, model_state, task, *, key=None, num_steps=None) -> dict:
        """Query metrics after ``0..num_steps`` proximal inner steps (default ``eval_steps``)."""
        del key
        k = num_steps if num_steps is not None else (self.eval_steps if self.eval_steps is not None else self.num_steps)
        k = validate.integer("num_steps", k, min=0)
        mp = jax.lax.stop_gradient(meta_params)
        fast, slow = self._split(mp["params"])

        def query(f):
            out, _ = self.apply(combine(f, slow), model_state, task.query_x, train=self._train_mode)
            return metrics_for(self.loss, out, task.query_y)

        _, (_, evals) = self._inner(k, eval_fn=query)(fast, fast, slow, model_state, task.support_x, task.support_y)
        return evals


__all__ = ["IMAML", "IMAML_BN_MODES", "IMAML_HVPS", "IMAML_SOLVES"]
