r"""Reptile (Nichol, Achiam & Schulman 2018).

Reptile adapts :math:`\phi = U^k_\tau(\theta)` with plain inner steps and
moves the initialisation towards it: :math:`\theta \leftarrow \theta +
\epsilon\,(\phi - \theta)`. To share the trainer's contract ("gradient of the
mean task objective, then an optax update") the task objective is the
surrogate

.. math:: \tfrac12 \lVert \theta - \mathrm{sg}(\phi) \rVert^2,

whose gradient is exactly :math:`\theta - \phi`. With ``optax.sgd(epsilon)``
as the meta-optimizer this is Reptile's serial/batched update; any other
optax optimizer (Adam, as in the paper's few-shot experiments) also works.
No gradient flows through the inner loop.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

from jmeta._struct import static_dataclass
from jmeta.algorithms.base import check_one_task, combine
from jmeta.algorithms.maml import GradientLearner
from jmeta.inner.loop import inner_loop
from jmeta.losses import metrics_for


@static_dataclass
class Reptile(GradientLearner):
    """Reptile. Shares :class:`GradientLearner`'s options (inner transform,
    learning rate, steps, BatchNorm mode including MAML++'s per-step rows),
    except learned learning rates and ``adapt_params`` (Reptile's update
    carries no gradient for them: parameters the inner loop does not move would
    never be trained) and second-order terms.

    Attributes:
      train_on_query: adapt on support and query together (the task's whole
        training data, as Reptile does); otherwise on the support set only.
    """

    num_steps: int = 5
    train_on_query: bool = True

    _differentiates_inner_updates = False  # the surrogate's gradient is theta - phi, never through the loop

    def __post_init__(self):
        super().__post_init__()
        if self.learn_lr is not None:
            raise ValueError("Reptile cannot learn inner learning rates (its update carries no gradient "
                             "for them); use learn_lr=None")
        if self.multi_step_loss:
            raise ValueError("Reptile has no query loss to weight per step; use multi_step_loss=False")
        if self.adapt_params is not None:
            raise ValueError("Reptile adapts every parameter (adapt_params=None): its update theta - phi is zero "
                             "for parameters the inner loop does not move, so they would never be trained; for "
                             "head-only adaptation use ANIL")

    def task_loss(self, meta_params, model_state, task, *, key=None, step=0):
        del key, step
        check_one_task(type(self).__name__, task, self.apply)
        theta = meta_params["params"]
        fast, slow = self._split(theta)
        if self.train_on_query:
            x = jnp.concatenate([task.support_x, task.query_x], axis=0)
            y = jnp.concatenate([task.support_y, task.query_y], axis=0)
        else:
            x, y = task.support_x, task.support_y
        res = inner_loop(self._support_loss(jax.lax.stop_gradient(slow), model_state, x, y),
                         jax.lax.stop_gradient(fast), self.inner_optimizer(meta_params), self.num_steps,
                         step_index=self._per_step)
        phi = jax.lax.stop_gradient(res.params)
        sq = jax.tree.map(lambda t, p: jnp.sum(jnp.square(t - p)), fast, phi)
        objective = 0.5 * sum(jax.tree.leaves(sq))
        # Logged metrics: the query loss of the adapted parameters. With
        # ``train_on_query`` the query set was part of the inner data, so this
        # is a fit loss; ``evaluate`` adapts on the support set only.
        out, new_state = self._forward(combine(phi, jax.lax.stop_gradient(slow)), model_state,
                                       task.query_x, self._train_mode, self._last_row(self.num_steps))
        metrics = metrics_for(self.loss, out, task.query_y)
        metrics["support_loss"] = res.losses[0]
        if self.bn_mode == "frozen":
            new_state = model_state
        return objective, {"metrics": metrics, "model_state": new_state}
