r"""Prototypical Networks (Snell, Swersky & Zemel, 2017).

An embedding network :math:`f_\theta` maps every example to a vector; the
prototype of class :math:`k` is the mean embedding of its support examples,

.. math:: c_k = \frac{1}{|S_k|} \sum_{(x_i, y_i) \in S_k} f_\theta(x_i),

and a query :math:`x` is classified by a softmax over negative squared
Euclidean distances,

.. math:: p_\theta(y = k \mid x) = \frac{\exp(-\lVert f_\theta(x) - c_k\rVert^2)}
    {\sum_{k'} \exp(-\lVert f_\theta(x) - c_{k'}\rVert^2)}.

The task objective is the query cross-entropy; the meta-gradient flows into
:math:`\theta` through both the query embeddings and the prototypes. There is
no inner loop: ``evaluate`` returns curves of length 1.

Labels: the support labels are integers ``0 .. n_way-1``; ``n_way`` is a field
(it fixes the number of prototypes, a static shape). Classes may have
different numbers of support examples; a class with none (an episode of fewer
ways than ``n_way``, padded to the static shape) gets no prototype: its logit
is ``-inf``, so it takes no probability, exactly as if ``n_way`` were the
episode's own number of ways.

Precision: prototypes and distances are computed in float32 when the
embeddings are bfloat16/float16 (``make_meta_step(compute_dtype=...)``):
:math:`\lVert a\rVert^2 - 2a\cdot b + \lVert b\rVert^2` cancels
catastrophically with an 8-bit mantissa (a meta-gradient 60% off was
measured on Conv4-sized features).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jmeta import validate
from jmeta._struct import hparam, static_dataclass
from jmeta.algorithms.base import check_one_task
from jmeta.losses import accuracy, cross_entropy

PyTree = Any

PROTONET_BN_MODES = ("batch", "frozen", "train_only")


def _accumulation_dtype(dtype):
    """float32 for bfloat16/float16 (and narrower) floats, else ``dtype``."""
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
        return jnp.dtype(jnp.float32)
    return dtype


class Prototypes(NamedTuple):
    """What :meth:`ProtoNet.adapt` returns: class means ``[n_way, d]`` and support counts ``[n_way]``."""

    means: Any
    counts: Any


def class_counts(labels, n_way: int):
    """Support examples per class, ``[n_way]`` (float32)."""
    return jnp.sum(jax.nn.one_hot(labels, n_way, dtype=jnp.float32), axis=0)


def prototypes(embeddings, labels, n_way: int):
    r"""Class means :math:`c_k` of ``embeddings [n, d]`` grouped by integer ``labels [n]`` -> ``[n_way, d]``.

    A class without examples gets a zero row. Accumulated in float32 for
    bfloat16/float16 embeddings (and returned in float32).
    """
    embeddings = embeddings.astype(_accumulation_dtype(embeddings.dtype))
    onehot = jax.nn.one_hot(labels, n_way, dtype=embeddings.dtype)          # [n, N]
    counts = jnp.sum(onehot, axis=0)                                          # [N]
    sums = onehot.T @ embeddings                                              # [N, d]
    return sums / jnp.maximum(counts, 1)[:, None]


def squared_distances(a, b):
    r""":math:`\lVert a_i - b_j\rVert^2` for ``a [n, d]``, ``b [m, d]`` -> ``[n, m]``.

    Computed as :math:`\lVert a\rVert^2 - 2 a\cdot b + \lVert b\rVert^2` (one
    matrix product), clipped at 0 against rounding; in float32 (and returned
    in float32) when an input is bfloat16/float16, where that sum of large
    terms would cancel to a few units.
    """
    acc = _accumulation_dtype(jnp.result_type(a, b))
    a, b = a.astype(acc), b.astype(acc)
    aa = jnp.sum(a * a, axis=-1, keepdims=True)
    bb = jnp.sum(b * b, axis=-1)
    return jnp.maximum(aa - 2.0 * (a @ b.T) + bb[None, :], 0.0)


@static_dataclass
class ProtoNet:
    """Prototypical Networks.

    Attributes:
      apply: the embedding model, ``apply(params, state, x, *, train) ->
        (embeddings, state)``; outputs of more than one axis per example are
        flattened.
      n_way: classes per task (``>= 2``), the static number of prototypes;
        support labels are ``0 .. n_way-1``. An episode of fewer ways (classes
        without support examples) gives the same result as with its own
        ``n_way``: empty classes are masked out of the softmax.
      bn_mode: how the embedding's BatchNorm runs:
        ``"batch"``: training mode everywhere (batch statistics of the
        task's examples, transductive);
        ``"frozen"``: evaluation mode everywhere (running statistics);
        ``"train_only"`` (default): batch statistics in ``task_loss``
        (meta-training, returning updated running statistics), running
        statistics in ``adapt``/``predict``/``evaluate`` -- PyTorch's
        ``model.train()`` / ``model.eval()`` split, as in the original code.
      joint_forward: embed support and query in one forward pass (one
        BatchNorm batch, as Snell et al.'s code does); otherwise separately.
    """

    apply: Callable[..., Any]
    n_way: int = hparam(5, validate.integer, min=2)
    bn_mode: str = "train_only"
    joint_forward: bool = True

    def __post_init__(self):
        if not callable(self.apply):
            raise TypeError(f"apply must be a callable embedding model, got {type(self.apply).__name__}")
        if self.bn_mode not in PROTONET_BN_MODES:
            raise ValueError(f"bn_mode must be one of {PROTONET_BN_MODES}, got {self.bn_mode!r}")

    # -- pieces ---------------------------------------------------------------
    def _check_support(self, support_y):
        shape = tuple(getattr(support_y, "shape", ()))
        if len(shape) != 1:
            raise ValueError(f"ProtoNet expects integer support labels of shape [n_support] for one task, "
                             f"got shape {shape}")
        if not jnp.issubdtype(support_y.dtype, jnp.integer):
            raise TypeError(f"ProtoNet expects integer support labels, got dtype {support_y.dtype}")

    def embed(self, params, model_state, x, *, train: bool):
        """Embeddings ``[n, d]`` and the new model state."""
        z, state = self.apply(params, model_state, x, train=train)
        return z.reshape(z.shape[0], -1), state

    def logits(self, protos, z):
        """``-||z_i - c_k||^2``: ``[n, n_way]``; ``-inf`` for classes without support examples when
        ``protos`` is a :class:`Prototypes` (a bare ``[n_way, d]`` array masks nothing)."""
        if isinstance(protos, Prototypes):
            logits = -squared_distances(z, protos.means)
            return jnp.where(protos.counts[None, :] > 0, logits, -jnp.inf)
        return -squared_distances(z, protos)

    def _prototypes(self, z, labels) -> Prototypes:
        return Prototypes(prototypes(z, labels, self.n_way), class_counts(labels, self.n_way))

    def _eval_train_flag(self) -> bool:
        return self.bn_mode == "batch"

    # -- contract -------------------------------------------------------------
    def init(self, params: PyTree, *, key=None) -> dict:
        """``{"params": params}`` (ProtoNets have no other meta-parameters)."""
        del key
        return {"params": params}

    def adapt(self, meta_params, model_state, support_x, support_y, *, key=None, num_steps=None):
        """The support set's :class:`Prototypes` (means ``[n_way, d]``, counts ``[n_way]``); ``num_steps``
        is ignored."""
        del key, num_steps
        self._check_support(support_y)
        z, _ = self.embed(meta_params["params"], model_state, support_x, train=self._eval_train_flag())
        return self._prototypes(z, support_y)

    def predict(self, meta_params, adapted, model_state, x, *, num_steps=None):
        """Logits ``[n, n_way]`` of ``x`` against the prototypes ``adapted``."""
        del num_steps
        z, _ = self.embed(meta_params["params"], model_state, x, train=self._eval_train_flag())
        return self.logits(adapted, z)

    def _task_logits(self, params, model_state, task, train):
        self._check_support(task.support_y)
        if self.joint_forward:
            ns = task.support_x.shape[0]
            z, new_state = self.embed(params, model_state,
                                      jnp.concatenate([task.support_x, task.query_x], axis=0), train=train)
            zs, zq = z[:ns], z[ns:]
        else:
            zs, new_state = self.embed(params, model_state, task.support_x, train=train)
            zq, new_state = self.embed(params, new_state, task.query_x, train=train)
        return self.logits(self._prototypes(zs, task.support_y), zq), new_state

    def task_loss(self, meta_params, model_state, task, *, key=None, step=0):
        """Query cross-entropy against the support prototypes."""
        del key, step
        check_one_task(type(self).__name__, task, self.apply, class_labels=True)
        train = self.bn_mode != "frozen"
        logits, new_state = self._task_logits(meta_params["params"], model_state, task, train)
        loss = cross_entropy(logits, task.query_y)
        metrics = {"loss": loss, "accuracy": accuracy(logits, task.query_y)}
        if not train:
            new_state = model_state
        return loss, {"metrics": metrics, "model_state": new_state}

    def evaluate(self, meta_params, model_state, task, *, key=None, num_steps=None) -> dict:
        """Query loss and accuracy, as curves of length 1 (no adaptation steps)."""
        del key, num_steps
        logits, _ = self._task_logits(meta_params["params"], model_state, task, self._eval_train_flag())
        out = {"loss": cross_entropy(logits, task.query_y)[None],
               "accuracy": accuracy(logits, task.query_y)[None]}
        return jax.lax.stop_gradient(out)


__all__ = ["PROTONET_BN_MODES", "ProtoNet", "Prototypes", "class_counts", "prototypes", "squared_distances"]
