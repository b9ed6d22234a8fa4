r"""R2-D2: ridge-regression heads fitted in closed form on the support set (Bertinetto et al. 2019).

A shared embedding :math:`g_\theta` (Conv4, ResNet-12, any ``apply``) maps the
``n`` support examples to :math:`X \in \mathbb{R}^{n\times d}`; per task, the
head weights are the ridge-regression solution with one-hot targets
:math:`Y \in \{0,1\}^{n\times K}`, in the :math:`n\times n` Woodbury form
(cheap because :math:`n \ll d` in few-shot learning):

.. math::
    W = \arg\min_W \lVert XW - Y\rVert^2 + \lambda\lVert W\rVert^2
      = X^\top (X X^\top + \lambda I_n)^{-1} Y
      = (X^\top X + \lambda I_d)^{-1} X^\top Y,

and the query logits are :math:`\alpha\, g_\theta(x_q) W + \beta` with a
learnable scale :math:`\alpha` and bias :math:`\beta` ("adjust" layer) and a
learnable :math:`\lambda` stored as :math:`\log\lambda`. The meta-objective is
the query cross-entropy; its gradient flows through the linear solve
(JAX differentiates ``solve`` with one more solve against the same matrix,
i.e. exactly the implicit-function derivative of the normal equations), so
nothing is unrolled.

:class:`ClosedFormHead` is the shared base of the "basis functions shared
across tasks, per-task weights solved on the support set" family
(:class:`R2D2`, :class:`~jmeta.algorithms.metaoptnet.MetaOptNet`); it
implements the algorithm contract of :mod:`jmeta.algorithms.base` once.

Reference: L. Bertinetto, J. F. Henriques, P. H. S. Torr, A. Vedaldi,
"Meta-learning with differentiable closed-form solvers", ICLR 2019.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jmeta import validate
from jmeta._struct import hparam, static_dataclass
from jmeta.algorithms.base import check_one_task
from jmeta.losses import metrics_for

PyTree = Any

HEAD_BN_MODES = ("batch", "frozen", "standard")
RIDGE_FORMS = ("dual", "primal", "auto")


def _float_dtype(tree):
    for leaf in jax.tree.leaves(tree):
        if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating):
            return jnp.asarray(leaf).dtype
    return jnp.zeros(()).dtype


def solve_dtype(dtype):
    """The dtype linear solves run in: float32 for lower-precision floats (bfloat16, float16), else ``dtype``.

    ``jax.scipy.linalg.solve`` (LU/Cholesky) has no bfloat16/float16 kernels,
    and an ill-conditioned solve with an 8-bit (bfloat16) or 11-bit (float16)
    mantissa would lose most of its accuracy anyway.
    """
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
        return jnp.dtype(jnp.float32)
    return dtype


def ridge_regression(x, y, lam, *, form: str = "dual"):
    r"""Ridge-regression weights :math:`W = \arg\min \lVert XW - Y\rVert^2 + \lambda \lVert W\rVert^2`.

    Args:
      x: features ``[n, d]``.
      y: targets ``[n, K]``.
      lam: :math:`\lambda > 0` (scalar, may be traced and differentiated).
      form: ``"dual"``: :math:`X^\top (XX^\top + \lambda I_n)^{-1} Y` (Woodbury,
        an ``n x n`` Cholesky solve); ``"primal"``: :math:`(X^\top X + \lambda
        I_d)^{-1} X^\top Y` (``d x d``); ``"auto"``: the smaller of the two.

    Returns:
      ``W`` of shape ``[d, K]``, in the dtype of ``x``. Lower-precision inputs
      (bfloat16, float16) are solved in float32 and the result cast back;
      float32 and float64 are solved in their own precision.
    """
    if form not in RIDGE_FORMS:
        raise ValueError(f"form must be one of {RIDGE_FORMS}, got {form!r}")
    out_dtype = x.dtype
    sd = solve_dtype(out_dtype)
    if sd != out_dtype:
        x, y = x.astype(sd), y.astype(sd)
        lam = jnp.asarray(lam).astype(sd)
        return ridge_regression(x, y, lam, form=form).astype(out_dtype)
    n, d = x.shape
    if form == "auto":
        form = "dual" if n <= d else "primal"
    if form == "dual":
        a = x @ x.T + lam * jnp.eye(n, dtype=x.dtype)
        return x.T @ jax.scipy.linalg.solve(a, y, assume_a="pos")
    a = x.T @ x + lam * jnp.eye(d, dtype=x.dtype)
    return jax.scipy.linalg.solve(a, x.T @ y, assume_a="pos")


@static_dataclass
class ClosedFormHead:
    """Shared base: an embedding model plus a per-task head solved on the support set.

    Subclasses implement ``_head_init(dtype) -> dict`` (extra meta-parameters),
    ``_fit(meta_params, emb_support, onehot) -> (adapted, diagnostics)`` and
    ``_logits(meta_params, adapted, emb) -> logits``.

    Attributes:
      apply: the embedding model, ``apply(params, state, x, *, train) -> (emb,
        state)``; embeddings are flattened to ``[n, d]``.
      n_way: number of classes per task ``K`` (labels are integers ``0..K-1``).
      label_smoothing: label smoothing :math:`\varepsilon` of the query
        cross-entropy objective, with MetaOptNet's targets (:math:`1-\varepsilon`
        on the true class, :math:`\varepsilon/(K-1)` on the others, see
        :meth:`smoothed_targets`; MetaOptNet trains with 0.1); the logged
        ``loss`` is the plain one.
      bn_mode: ``"batch"``: the embedding runs in training mode everywhere
        (batch statistics per set, transductive at test); ``"frozen"``:
        evaluation mode everywhere, ``model_state`` never updated;
        ``"standard"``: training mode with running-statistics updates in
        ``task_loss``, evaluation mode (running statistics) in ``adapt``,
        ``predict`` and ``evaluate`` (ordinary supervised BatchNorm practice,
        as in the MetaOptNet/R2-D2 ResNet-12 recipes).
    """

    apply: Callable[..., Any]
    n_way: int = hparam(check=validate.integer, min=2)
    label_smoothing: float = hparam(0.0, validate.number, min=0, max=1, max_open=True, traced_ok=True)
    bn_mode: str = "batch"

    def __post_init__(self):
        if not callable(self.apply):
            raise TypeError(f"apply must be a callable model, got {type(self.apply).__name__}")
        if self.bn_mode not in HEAD_BN_MODES:
            raise ValueError(f"bn_mode must be one of {HEAD_BN_MODES}, got {self.bn_mode!r}")

    # -- hooks ---------------------------------------------------------------
    def _head_init(self, dtype) -> dict:
        return {}

    def _fit(self, meta_params, emb, onehot):
        raise NotImplementedError

    def _logits(self, meta_params, adapted, emb):
        raise NotImplementedError

    # -- pieces --------------------------------------------------------------
    @property
    def _train_flag(self) -> bool:
        return self.bn_mode != "frozen"

    @property
    def _eval_flag(self) -> bool:
        return self.bn_mode == "batch"

    def embed(self, params, state, x, *, train: bool):
        """Flattened embeddings ``[n, d]`` and the new model state."""
        out, new_state = self.apply(params, state, x, train=train)
        return out.reshape(out.shape[0], -1), new_state

    def _onehot(self, labels, dtype):
        if jnp.issubdtype(jnp.asarray(labels).dtype, jnp.floating):
            raise TypeError(f"support labels must be integers 0..{self.n_way - 1}, got dtype {labels.dtype}")
        if labels.ndim != 1:
            raise ValueError(f"support labels must have shape [n_support], got {labels.shape}")
        return jax.nn.one_hot(labels, self.n_way, dtype=dtype)

    def smoothed_targets(self, labels, dtype=jnp.float32):
        r"""Label-smoothed targets of the query objective, MetaOptNet's formula.

        :math:`1-\varepsilon` on the true class and :math:`\varepsilon/(K-1)` on each
        of the other :math:`K-1` classes (``K = n_way``, :math:`\varepsilon` =
        ``label_smoothing``), as in the MetaOptNet reference code; e.g.
        ``[0.9, 0.025, 0.025, 0.025, 0.025]`` for 5-way with 0.1 (not optax's
        ``(1-eps) y + eps/K``).
        """
        onehot = jax.nn.one_hot(labels, self.n_way, dtype=dtype)
        eps = self.label_smoothing
        return onehot * (1.0 - eps) + (1.0 - onehot) * (eps / (self.n_way - 1))

    def _objective(self, logits, labels, metrics):
        if not self.label_smoothing:
            return metrics["loss"]
        return jnp.mean(optax.softmax_cross_entropy(logits, self.smoothed_targets(labels, logits.dtype)))

    # -- contract ------------------------------------------------------------
    def init(self, params: PyTree, *, key=None) -> dict:
        """``{"params": params}`` plus the head's meta-parameters (in the params' float dtype)."""
        del key
        return {"params": params, **self._head_init(_float_dtype(params))}

    def adapt(self, meta_params, model_state, support_x, support_y, *, key=None, num_steps=None):
        """The fitted head (a dict, e.g. ``{"w": [d, K]}``); ``num_steps`` is ignored (closed form)."""
        del key, num_steps
        emb, _ = self.embed(meta_params["params"], model_state, support_x, train=self._eval_flag)
        return self._fit(meta_params, emb, self._onehot(support_y, emb.dtype))[0]

    def predict(self, meta_params, adapted, model_state, x, *, num_steps=None):
        del num_steps
        emb, _ = self.embed(meta_params["params"], model_state, x, train=self._eval_flag)
        return self._logits(meta_params, adapted, emb)

    def _episode(self, meta_params, model_state, task, train):
        params = meta_params["params"]
        emb_s, state = self.embed(params, model_state, task.support_x, train=train)
        emb_q, state = self.embed(params, state, task.query_x, train=train)
        adapted, diag = self._fit(meta_params, emb_s, self._onehot(task.support_y, emb_s.dtype))
        logits = self._logits(meta_params, adapted, emb_q)
        metrics = metrics_for("cross_entropy", logits, task.query_y)
        metrics.update(diag)
        return logits, metrics, state

    def task_loss(self, meta_params, model_state, task, *, key=None, step=0):
        del key, step
        check_one_task(type(self).__name__, task, self.apply, class_labels=True)
        logits, metrics, new_state = self._episode(meta_params, model_state, task, self._train_flag)
        objective = self._objective(logits, task.query_y, metrics)
        if self.bn_mode == "frozen":
            new_state = model_state
        return objective, {"metrics": metrics, "model_state": new_state}

    def evaluate(self, meta_params, model_state, task, *, key=None, num_steps=None) -> dict:
        """Query ``loss`` and ``accuracy`` as curves of length 1 (no adaptation steps)."""
        del key, num_steps
        _, metrics, _ = self._episode(meta_params, model_state, task, self._eval_flag)
        return jax.lax.stop_gradient({k: metrics[k][None] for k in ("loss", "accuracy")})


@static_dataclass
class R2D2(ClosedFormHead):
    r"""R2-D2 (Bertinetto et al. 2019): a closed-form ridge-regression head.

    Meta-parameters: ``"params"`` (the embedding), ``"log_lambda"``
    (:math:`\log\lambda`, when ``learn_lambda``), ``"scale"`` and ``"bias"``
    (the logits are ``scale * emb @ W + bias``). A scalar bias cancels in the
    softmax cross-entropy, so it receives a zero gradient there; it is kept
    for fidelity to the paper's adjust layer and for other losses.

    Attributes:
      init_lambda: initial (or fixed) ridge regulariser :math:`\lambda > 0`.
      learn_lambda: learn :math:`\log\lambda` as a meta-parameter.
      init_scale: initial logit scale (ridge outputs live in about ``[0, 1]``,
        so trained scales are large; the reference code starts at ``1e-4``
        for its un-normalised ResNet features).
      init_bias: initial logit bias.
      fit_intercept: append a constant feature 1 to the embeddings (a
        regularised per-class intercept of the ridge fit).
      form: ``"dual"`` (Woodbury, ``n x n``), ``"primal"`` (``d x d``) or
        ``"auto"`` (see :func:`ridge_regression`).
    """

    init_lambda: float = hparam(1.0, validate.number, min=0, min_open=True, traced_ok=True)
    learn_lambda: bool = True
    init_scale: float = hparam(1.0, validate.number, traced_ok=True)
    init_bias: float = hparam(0.0, validate.number, traced_ok=True)
    fit_intercept: bool = False
    form: str = "dual"

    def __post_init__(self):
        super().__post_init__()
        if self.form not in RIDGE_FORMS:
            raise ValueError(f"form must be one of {RIDGE_FORMS}, got {self.form!r}")

    def _head_init(self, dtype) -> dict:
        out = {"scale": jnp.asarray(self.init_scale, dtype), "bias": jnp.asarray(self.init_bias, dtype)}
        if self.learn_lambda:
            out["log_lambda"] = jnp.asarray(math.log(self.init_lambda), dtype)
        return out

    def ridge_lambda(self, meta_params):
        r""":math:`\lambda` (``exp(log_lambda)`` when learned)."""
        if self.learn_lambda:
            return jnp.exp(meta_params["log_lambda"])
        return self.init_lambda

    def _features(self, emb):
        if not self.fit_intercept:
            return emb
        return jnp.concatenate([emb, jnp.ones((emb.shape[0], 1), emb.dtype)], axis=1)

    def _fit(self, meta_params, emb, onehot):
        w = ridge_regression(self._features(emb), onehot, self.ridge_lambda(meta_params), form=self.form)
        return {"w": w}, {}

    def _logits(self, meta_params, adapted, emb):
        return meta_params["scale"] * (self._features(emb) @ adapted["w"]) + meta_params["bias"]


__all__ = ["ClosedFormHead", "HEAD_BN_MODES", "R2D2", "RIDGE_FORMS", "ridge_regression"]
