r"""MAML and its family: MAML, first-order MAML, Meta-SGD, ANIL, MAML++ options.

All share :class:`GradientLearner`: adapt (a part of) the parameters by
``num_steps`` steps of an optax transformation on the support loss, then
take the query loss of the adapted parameters as the task objective

.. math::
    \mathcal{L}(\theta) = \mathbb{E}_{\tau}\,
      L^{q}_{\tau}\big(\phi_K(\theta)\big),\qquad
    \phi_{k+1} = \phi_k - \alpha_k \odot d_k(\nabla L^{s}_{\tau}(\phi_k)),\ \phi_0 = \theta,

where :math:`d_k` is the inner transformation's direction (the plain
gradient for SGD) and :math:`\alpha` the inner learning rate, fixed or a
meta-parameter. References: Finn et al. 2017 (MAML, FOMAML); Li et al. 2017
(Meta-SGD); Raghu et al. 2020 (ANIL); Antoniou et al. 2019 (MAML++: per-layer
per-step learning rates, multi-step loss).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jmeta import validate
from jmeta._struct import hparam, static_dataclass
from jmeta.algorithms.base import check_one_task, combine, make_param_filter, param_spec, partition
from jmeta.inner.loop import check_inner_transform, inner_loop, remat_policy
from jmeta.inner.lr import LR_KINDS, init_log_lr, scale_by_learned_lr
from jmeta.losses import get_loss, metrics_for
from jmeta.models.bridge import declared

PyTree = Any

BN_MODES = ("batch", "frozen", "per_step")


def msl_weights(num_steps: int, step, anneal_steps: int):
    """Per-step query-loss weights of MAML++'s multi-step loss.

    All steps start equally weighted (``1/K``); over ``anneal_steps`` meta-steps
    the weights of the non-final steps decay linearly towards ``0.03/K`` and
    the final step's weight grows towards ``1 - (K-1) 0.03/K`` (Antoniou et al.
    2019, ``get_per_step_loss_importance_vector``); from ``anneal_steps`` on,
    only the final step's loss counts (weights ``[0, ..., 0, 1]``), as in the
    authors' code, which stops using the multi-step loss after
    ``multi_step_loss_num_epochs``. (Their weights change once per epoch of
    500 iterations; here every meta-step.)
    """
    k = num_steps
    s = jnp.asarray(step, jnp.float32)
    t = jnp.clip(s / max(anneal_steps, 1), 0.0, 1.0)
    lo = 0.03 / k
    nonfinal = jnp.maximum(1.0 / k - t / k, lo)
    final = jnp.minimum(1.0 / k + t * (k - 1) / k, 1.0 - (k - 1) * lo)
    annealing = jnp.concatenate([jnp.full((k - 1,), nonfinal), final[None]])
    last_only = jnp.zeros((k,), jnp.float32).at[k - 1].set(1.0)
    return jnp.where(s >= anneal_steps, last_only, annealing)


@static_dataclass
class GradientLearner:
    """Gradient-based meta-learning with a differentiated inner loop.

    Attributes:
      apply: the model, ``apply(params, state, x, *, train) -> (out, state)``.
      loss: ``"mse"``, ``"cross_entropy"`` or ``f(pred, y) -> scalar``.
      inner_lr: inner learning rate (the initial value when learned), ``> 0``.
      num_steps: inner steps during meta-training, ``>= 1``.
      eval_steps: inner steps at evaluation (default: ``num_steps``).
      first_order: drop the second-order term (first-order MAML).
      inner_transform: the inner update direction before the learning rate
        (default: the plain gradient, i.e. SGD). E.g.
        ``optax.scale_by_adam(eps_root=1e-8)`` for inner Adam; the learning
        rate, fixed or learned, is applied by jmeta after it (``-inner_lr``),
        so a whole optimizer such as ``optax.adam(lr)`` or a learned
        optimizer's ``opt_fn(theta)`` goes in as ``optax.chain(opt,
        optax.scale(-1.0))`` with ``inner_lr=1.0`` (a transform whose first
        update opposes the gradient is warned about at construction).
      learn_lr: ``None`` (fixed ``inner_lr``) or a kind from
        :data:`jmeta.inner.LR_KINDS`; learned rates are stored as ``log(lr)``
        in ``meta_params["log_lr"]``.
      adapt_params: which parameters the inner loop adapts: ``None`` (all), a path
        prefix such as ``"layers_2"`` or a tuple of them, or ``f(path) ->
        bool``. The rest are shared across tasks and learned only in the outer
        loop (ANIL).
      remat: rematerialisation of inner steps (``None``, ``"full"``,
        ``"dots"``, ``"dots_no_batch"`` or a ``jax.checkpoint`` policy).
      multi_step_loss: MAML++'s per-step query loss, annealed over
        ``msl_anneal_steps`` meta-steps (see :func:`msl_weights`).
      msl_anneal_steps: meta-steps over which the multi-step loss anneals.
      bn_mode: ``"batch"``: the model runs in training mode during adaptation
        and on the query set (per-task batch statistics, the MAML default,
        transductive); ``"frozen"``: evaluation mode everywhere (running
        statistics from ``model_state``, which are then never updated);
        ``"per_step"``: MAML++'s per-step BatchNorm (BNRS + BNWB): training
        mode as ``"batch"``, and ``apply`` takes ``step=i`` -- the support
        forward of inner step ``i`` and the query forward after step ``i``
        use row ``i`` of per-step BatchNorm weights and statistics (build the
        model with ``jmeta.models.conv4(..., per_step_bn=K)`` or
        :func:`jmeta.models.with_per_step`).
    """

    apply: Callable[..., Any]
    loss: str | Callable = "mse"
    inner_lr: float = hparam(0.01, validate.number, min=0, min_open=True, traced_ok=True)
    num_steps: int = hparam(1, validate.integer, min=1)
    eval_steps: int | None = hparam(None, validate.integer, min=0, optional=True)
    first_order: bool = hparam(False, validate.flag)
    inner_transform: optax.GradientTransformation | None = None
    learn_lr: str | None = None
    adapt_params: Any = hparam(None, param_spec)
    remat: Any = None
    multi_step_loss: bool = hparam(False, validate.flag)
    msl_anneal_steps: int = hparam(10_000, validate.integer, min=1)
    bn_mode: str = "batch"

    # Whether the meta-gradient differentiates through the inner updates
    # (Reptile's does not); a class constant, not a field.
    _differentiates_inner_updates = True

    def __post_init__(self):
        if not callable(self.apply):
            raise TypeError(f"apply must be a callable model, got {type(self.apply).__name__}")
        # the numeric and flag fields were checked and normalised by their hparam checks (NumPy/JAX scalars
        # are stored as Python numbers, so that sweeps see float fields)
        get_loss(self.loss)
        if self.learn_lr is not None and self.learn_lr not in LR_KINDS:
            raise ValueError(f"learn_lr must be None or one of {LR_KINDS}, got {self.learn_lr!r}")
        if self.inner_transform is not None and not isinstance(self.inner_transform, optax.GradientTransformation):
            raise TypeError("inner_transform must be an optax.GradientTransformation (the update direction), "
                            f"got {type(self.inner_transform).__name__}")
        check_inner_transform(type(self).__name__, self.inner_transform,
                              differentiated=self._differentiates_inner_updates and not self.first_order)
        if self.bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, got {self.bn_mode!r}")
        remat_policy(self.remat)

    # -- pieces ---------------------------------------------------------------
    @property
    def _train_mode(self) -> bool:
        return self.bn_mode in ("batch", "per_step")

    @property
    def _per_step(self) -> bool:
        return self.bn_mode == "per_step"

    def _split(self, params):
        return partition(params, make_param_filter(self.adapt_params))

    def inner_optimizer(self, meta_params: dict) -> optax.GradientTransformation:
        """The inner transformation, built from (possibly learned) meta-parameters."""
        if self.learn_lr is None:
            scale = optax.scale(-self.inner_lr)
        else:
            scale = scale_by_learned_lr(meta_params["log_lr"], self.learn_lr)
        if self.inner_transform is None:
            return scale
        return optax.chain(self.inner_transform, scale)

    def _forward(self, params, state, x, train, step=None):
        if self._per_step:
            return self.apply(params, state, x, train=train, step=0 if step is None else step)
        return self.apply(params, state, x, train=train)

    def _support_loss(self, slow, state, x, y):
        loss_fn = get_loss(self.loss)

        def f(fast, i=None):
            out, _ = self._forward(combine(fast, slow), state, x, self._train_mode, i)
            return loss_fn(out, y)

        return f

    def _last_row(self, k):
        # the query forward after k >= 1 steps uses row k-1 (that of the last step)
        return max(k - 1, 0)

    # -- contract -------------------------------------------------------------
    def init(self, params: PyTree, *, key=None) -> dict:
        """``{"params": params}`` plus ``"log_lr"`` when the learning rate is learned."""
        del key
        meta = {"params": params}
        if self.learn_lr is not None:
            fast, _ = self._split(params)
            # per-step tables hold one row per training step; evaluation with
            # more steps reuses the last row.
            meta["log_lr"] = init_log_lr(fast, float(self.inner_lr), self.learn_lr, self.num_steps)
        return meta

    def adapt(self, meta_params, model_state, support_x, support_y, *, key=None, num_steps=None):
        """Adapted parameters (the full tree) after ``num_steps`` inner steps."""
        del key
        k = self.num_steps if num_steps is None else num_steps
        fast, slow = self._split(meta_params["params"])
        res = inner_loop(self._support_loss(slow, model_state, support_x, support_y), fast,
                         self.inner_optimizer(meta_params), k, first_order=self.first_order,
                         remat=self.remat, step_index=self._per_step)
        return combine(res.params, slow)

    def predict(self, meta_params, adapted, model_state, x, *, num_steps=None):
        """Model outputs of ``x`` with ``adapted`` parameters (``num_steps``: the
        adaptation steps taken, which selects the per-step BatchNorm row)."""
        del meta_params
        k = self.num_steps if num_steps is None else num_steps
        return self._forward(adapted, model_state, x, self._train_mode, self._last_row(k))[0]

    def task_loss(self, meta_params, model_state, task, *, key=None, step=0):
        del key
        check_one_task(type(self).__name__, task, self.apply)
        loss_fn = get_loss(self.loss)
        fast, slow = self._split(meta_params["params"])
        support = self._support_loss(slow, model_state, task.support_x, task.support_y)

        if self.multi_step_loss:
            def query(f, i=None):
                out, _ = self._forward(combine(f, slow), model_state, task.query_x, self._train_mode, i)
                return loss_fn(out, task.query_y)

            res = inner_loop(support, fast, self.inner_optimizer(meta_params), self.num_steps,
                             first_order=self.first_order, remat=self.remat, eval_fn=query,
                             step_index=self._per_step)
            w = msl_weights(self.num_steps, step, self.msl_anneal_steps)
            objective = jnp.sum(w * res.evals[1:])
        else:
            res = inner_loop(support, fast, self.inner_optimizer(meta_params), self.num_steps,
                             first_order=self.first_order, remat=self.remat, step_index=self._per_step)
            objective = None
        out, new_state = self._forward(combine(res.params, slow), model_state, task.query_x, self._train_mode,
                                       self._last_row(self.num_steps))
        metrics = metrics_for(self.loss, out, task.query_y)
        if objective is None:
            objective = metrics["loss"]
        metrics["support_loss"] = res.losses[0]
        if self.bn_mode == "frozen":
            new_state = model_state
        return objective, {"metrics": metrics, "model_state": new_state}

    def evaluate(self, meta_params, model_state, task, *, key=None, num_steps=None) -> dict:
        """Query metrics after ``0..num_steps`` inner steps (default ``eval_steps``)."""
        del key
        k = num_steps if num_steps is not None else (self.eval_steps if self.eval_steps is not None else self.num_steps)
        fast, slow = self._split(meta_params["params"])

        def query(f, i=None):
            out, _ = self._forward(combine(f, slow), model_state, task.query_x, self._train_mode, i)
            return metrics_for(self.loss, out, task.query_y)

        res = inner_loop(self._support_loss(slow, model_state, task.support_x, task.support_y), fast,
                         self.inner_optimizer(meta_params), k, eval_fn=query, step_index=self._per_step)
        return jax.lax.stop_gradient(res.evals)


@static_dataclass
class MAML(GradientLearner):
    """Model-Agnostic Meta-Learning with the exact second-order meta-gradient (Finn et al. 2017)."""


@static_dataclass
class FOMAML(GradientLearner):
    """First-order MAML: the inner gradients are treated as constants (Finn et al. 2017)."""

    first_order: bool = True


@static_dataclass
class MetaSGD(GradientLearner):
    """Meta-SGD: a learned learning rate per parameter coordinate (Li et al. 2017).

    The rates are stored as ``log(alpha)`` and start at ``inner_lr``.
    """

    learn_lr: str | None = "per_param"


@static_dataclass
class ANIL(GradientLearner):
    """Almost No Inner Loop: adapt only the head (Raghu et al. 2020).

    ``adapt_params`` names the head's parameter path prefix; the default
    ``"head"`` means the head the model declares on its ``apply``
    (:func:`jmeta.models.bridge.declare`: ``layers_{n}`` for
    :func:`jmeta.models.mlp`, ``head`` for ``conv4``/``resnet12``), else the
    parameters under ``head``. The body is a set of basis functions shared
    across tasks, the head their per-task weights.
    """

    adapt_params: Any = "head"

    def _split(self, params):
        spec = self.adapt_params
        if spec == "head":
            spec = declared(self.apply, "head") or spec
        return partition(params, make_param_filter(spec))


@static_dataclass
class MAMLPlusPlus(GradientLearner):
    """MAML with the MAML++ options on: per-layer per-step learned learning
    rates (LSLR) and the annealed multi-step loss (Antoniou et al. 2019)."""

    learn_lr: str | None = "per_layer_per_step"
    multi_step_loss: bool = True
