r"""The Meta-LSTM learner of Ravi & Larochelle (2017), "Optimization as a Model for Few-Shot Learning".

The learner's parameters :math:`\theta_t` (a flat vector of all the learner
network's parameters, ``jax.flatten_util.ravel_pytree``) *are* the cell state
of an LSTM whose input gate plays the learning rate and whose forget gate
plays weight decay. For every coordinate (all coordinates share the
meta-parameters), at inner step :math:`t = 1..T` on the support set:

.. math::
    \mathcal L_t, \nabla_t &= L^{s}(\theta_{t-1}),\ \nabla_\theta L^{s}(\theta_{t-1}) \\
    (h_t, \tilde c_t) &= \operatorname{LSTM}_\phi\big([\rho_p(\nabla_t), \rho_p(\mathcal L_t)],
        h_{t-1}, \tilde c_{t-1}\big) \\
    f_t &= \sigma\big(W_F \cdot [h_t, \theta_{t-1}, f_{t-1}] + b_F\big) \\
    i_t &= \sigma\big(W_I \cdot [h_t, \theta_{t-1}, i_{t-1}] + b_I\big) \\
    \theta_t = c_t &= f_t \odot c_{t-1} + i_t \odot (-\nabla_t),

with :math:`c_0 = \theta_0` the learned initial parameters and
:math:`f_0 = i_0 = 0`, :math:`h_0 = \tilde c_0 = 0`. :math:`\rho_p(x) =
(\log|x|/p, \operatorname{sign} x)` (or :math:`(-1, e^p x)` for
:math:`|x| < e^{-p}`, :math:`p = 10`) is the preprocessing of Andrychowicz et
al. (:func:`~jmeta.learned_optim.preprocess_gradients`). The first layer is a
coordinate-wise LSTM with 20 hidden units over the preprocessed (gradient,
loss) pair, as in the paper's Section 3.2 and the official code
(twitter/meta-learning-lstm; its PyTorch port markdtw/meta-learning-lstm-pytorch:
``nn.LSTMCell(4, 20)`` feeding ``MetaLSTMCell`` with ``WF, WI, bF, bI, cI``).

The task objective is the query loss of :math:`\theta_T`; its gradient with
respect to :math:`\phi, W_F, W_I, b_F, b_I` and :math:`c_0` is taken by
backpropagation through the :math:`T` steps. As in the paper, the gradient
and loss inputs of the learner are treated as constants by default
(``stop_gradient``: no second derivatives of the learner's loss);
``second_order=True`` keeps them.

Initialisation as in the paper's code: :math:`W_F, W_I \sim U(-0.01, 0.01)`,
:math:`b_F \sim U(4, 6)` (forget gate near 1: no decay), :math:`b_I \sim U(-5,
-4)` (input gate, i.e. the learning rate, about 0.01); the first LSTM layer as
PyTorch's ``LSTMCell`` (:math:`U(\pm 1/\sqrt{20})`).

BatchNorm: the learner network runs in training mode (``train=True``: batch
statistics of the support set during adaptation and of the query set on the
query, transductive, as the paper's code does) with ``bn_mode="batch"``; the
BatchNorm *statistics* are not part of :math:`\theta` (only its scale and bias
are). The meta-optimizer of the paper's code is Adam (``lr=1e-3``) with the
meta-gradient clipped to a global norm of 0.25.

It follows the contract of :mod:`jmeta.algorithms.base`, so
:func:`jmeta.train.step.make_meta_step` and :func:`jmeta.train.evaluation.evaluate`
run it like any other algorithm::

    model = conv4(5, hidden=32)
    algo = MetaLSTM(model.apply, num_steps=5)
    opt = optax.chain(optax.clip_by_global_norm(0.25), optax.adam(1e-3))
    state = init_train_state(algo, model.params, model.state, opt, key=jax.random.key(0))
    step = make_meta_step(algo, sample_fn, opt, meta_batch_size=4, task_parallel="map")

Reference:
  Ravi, Larochelle. "Optimization as a Model for Few-Shot Learning." ICLR 2017.
  https://openreview.net/forum?id=rJY0-Kcll
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jmeta import validate
from jmeta._struct import hparam, static_dataclass
from jmeta.algorithms.base import check_one_task
from jmeta.learned_optim.lstm import preprocess_gradients
from jmeta.losses import get_loss, metrics_for
from jmeta.ops import draws

Array = Any
PyTree = Any

__all__ = ["MetaLSTM", "MetaLSTMCarry", "META_LSTM_BN_MODES"]

META_LSTM_BN_MODES = ("batch", "frozen")
_META_KEYS = ("params", "lstm", "gates")


class MetaLSTMCarry(NamedTuple):
    """The recurrent state of the learner update (one row per coordinate).

    Attributes:
      c: ``[n]`` the cell state = the learner's flat parameters ``theta_t``.
      f: ``[n]`` the previous forget gate.
      i: ``[n]`` the previous input gate.
      h: ``[n, hidden]`` the first LSTM layer's hidden state.
      cell: ``[n, hidden]`` the first LSTM layer's cell state.
    """

    c: Array
    f: Array
    i: Array
    h: Array
    cell: Array


def _check_range(name: str, v: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(a) for a in v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high) of numbers with low <= high, got {v!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"{name} must be a pair (low, high) of finite numbers with low <= high, got {v!r}")
    return lo, hi


@static_dataclass
class MetaLSTM:
    """The Meta-LSTM meta-learner (Ravi & Larochelle, 2017). See the module docstring.

    Attributes:
      apply: the learner network, ``apply(params, state, x, *, train) ->
        (out, state)`` (e.g. ``conv4(5, hidden=32).apply``).
      loss: ``"cross_entropy"`` (default), ``"mse"`` or ``f(pred, y) -> scalar``.
      num_steps: inner updates ``T`` during meta-training (``>= 1``).
      eval_steps: inner updates at evaluation (default: ``num_steps``).
      hidden_size: units of the first, coordinate-wise LSTM layer (20).
      preprocess_p: ``p`` of the gradient/loss preprocessing (10).
      second_order: keep the derivatives through the learner's gradient and
        loss inputs (default ``False``: ``stop_gradient``, as in the paper).
      bn_mode: ``"batch"`` (training-mode BatchNorm on support and query:
        batch statistics, the paper's choice) or ``"frozen"`` (running
        statistics from ``model_state``, never updated).
      forget_bias_init: ``b_F ~ U(low, high)`` at ``init`` ((4, 6)).
      input_bias_init: ``b_I ~ U(low, high)`` at ``init`` ((-5, -4)).
      gate_weight_init: ``W_F, W_I ~ U(-s, s)`` at ``init`` (0.01).
    """

    apply: Callable[..., Any]
    loss: str | Callable = "cross_entropy"
    num_steps: int = hparam(5, validate.integer, min=1)
    eval_steps: int | None = hparam(None, validate.integer, min=0, optional=True)
    hidden_size: int = hparam(20, validate.integer, min=1)
    preprocess_p: float = hparam(10.0, validate.number, min=0, min_open=True, traced_ok=True)
    second_order: bool = hparam(False, validate.flag)
    bn_mode: str = "batch"
    forget_bias_init: tuple[float, float] = hparam((4.0, 6.0), _check_range)
    input_bias_init: tuple[float, float] = hparam((-5.0, -4.0), _check_range)
    gate_weight_init: float = hparam(0.01, validate.number, min=0, traced_ok=True)

    def __post_init__(self):
        if not callable(self.apply):
            raise ValueError(f"apply must be a callable model apply(params, state, x, *, train), "
                             f"got {type(self.apply).__name__}")
        get_loss(self.loss)  # ValueError naming the valid losses
        if self.bn_mode not in META_LSTM_BN_MODES:
            raise ValueError(f"bn_mode must be one of {META_LSTM_BN_MODES}, got {self.bn_mode!r}")

    @classmethod
    def from_config(cls, cfg, *, apply: Callable[..., Any], loss: str | Callable = "cross_entropy") -> "MetaLSTM":
        """Deprecated (the library does not read run configs; :func:`jmeta.run.experiment.build_algorithm`
        builds the Meta-LSTM of a config): goes in the next release.

        The ``algorithm`` section holds this class's options; ``eval.steps`` (0: ``num_steps``) ->
        :attr:`eval_steps`.
        """
        warnings.warn("MetaLSTM.from_config is deprecated: build MetaLSTM(...) from its fields, or a run's algorithm "
                      "with jmeta.run.experiment.build_algorithm(cfg, ...)", DeprecationWarning, stacklevel=2)
        return cls(apply=apply, loss=loss, **dict(cfg.algorithm.options),
                   eval_steps=cfg.eval.steps or cfg.algorithm.num_steps)

    # -- meta-parameters --------------------------------------------------------
    def init(self, params: PyTree, *, key=None) -> dict:
        """Meta-parameters: the learner's initial parameters and the Meta-LSTM's weights.

        Args:
          params: the learner network's initial parameters (a pytree of float
            arrays, e.g. ``conv4(...).params``), or a
            :class:`~jmeta.models.Model` (its ``params`` are used). They become
            the initial cell state :math:`c_0` (flattened on use).
          key: a ``jax.random.key`` for the Meta-LSTM weights (default: key 0).

        Returns:
          ``{"params": c0 as a pytree like params, "lstm": {"w_x": [4, 4H],
          "w_h": [H, 4H], "b": [4H]}, "gates": {"w_f": [H+2], "w_i": [H+2],
          "b_f": [], "b_i": []}}``; the gate weights act on ``[h_t,
          theta_{t-1}, gate_{t-1}]``, the LSTM gates are laid out
          ``[input, forget, cell, output]``.
        """
        params = getattr(params, "params", params)
        leaves = jax.tree.leaves(params)
        if not leaves or not all(hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) for x in leaves):
            raise ValueError("params must be a non-empty pytree of floating-point arrays (the learner's "
                             f"initial parameters), got {jax.tree.map(lambda x: getattr(x, 'dtype', type(x)), params)}")
        key = jax.random.key(0) if key is None else key
        dtype = jnp.result_type(*leaves)
        hs = self.hidden_size
        kx, kh, kb, kf, ki, kbf, kbi = jax.random.split(key, 7)
        bound = 1.0 / math.sqrt(hs)
        u = lambda k, shape, lo, hi: draws.uniform(k, shape, dtype, lo, hi)  # noqa: E731  (cheaper compile)
        lstm = {
            "w_x": u(kx, (4, 4 * hs), -bound, bound),
            "w_h": u(kh, (hs, 4 * hs), -bound, bound),
            "b": u(kb, (4 * hs,), -bound, bound),
        }
        s = float(self.gate_weight_init)
        gates = {
            "w_f": u(kf, (hs + 2,), -s, s),
            "w_i": u(ki, (hs + 2,), -s, s),
            "b_f": u(kbf, (), *self.forget_bias_init),
            "b_i": u(kbi, (), *self.input_bias_init),
        }
        return {"params": params, "lstm": lstm, "gates": gates}

    # -- pieces -------------------------------------------------------------------
    @property
    def _train_mode(self) -> bool:
        return self.bn_mode == "batch"

    def _check_meta(self, meta_params) -> None:
        if not isinstance(meta_params, dict) or any(k not in meta_params for k in _META_KEYS):
            got = sorted(meta_params) if isinstance(meta_params, dict) else type(meta_params).__name__
            raise ValueError(f"meta_params must be a dict with keys {_META_KEYS} (from MetaLSTM.init), got {got}")
        w = meta_params["lstm"]["w_h"]
        if w.shape != (self.hidden_size, 4 * self.hidden_size):
            raise ValueError(f"meta_params['lstm'] was made for hidden_size={w.shape[0]}, but this MetaLSTM has "
                             f"hidden_size={self.hidden_size}")

    def _resolve_steps(self, num_steps, default) -> int:
        return validate.integer("num_steps", default if num_steps is None else num_steps, min=0)

    def unravel(self, meta_params: dict, flat: Array) -> PyTree:
        """The learner's parameter pytree of a flat vector (e.g. the output of :meth:`adapt`)."""
        _, unravel = ravel_pytree(meta_params["params"])
        return unravel(flat)

    def _forward(self, params, model_state, x):
        return self.apply(params, model_state, x, train=self._train_mode)

    def initial_carry(self, meta_params: dict) -> MetaLSTMCarry:
        """:math:`(c_0, f_0 = 0, i_0 = 0, h_0 = 0, \\tilde c_0 = 0)`."""
        c0, _ = ravel_pytree(meta_params["params"])
        n, hs = c0.shape[0], self.hidden_size
        z = jnp.zeros((n, hs), c0.dtype)
        return MetaLSTMCarry(c0, jnp.zeros_like(c0), jnp.zeros_like(c0), z, z)

    def update(self, meta_params: dict, carry: MetaLSTMCarry, grad: Array, loss: Array) -> MetaLSTMCarry:
        """One Meta-LSTM step: the new carry (``carry.c`` the new flat learner parameters).

        Args:
          meta_params: from :meth:`init`.
          carry: the current :class:`MetaLSTMCarry`.
          grad: ``[n]`` the learner's loss gradient at ``carry.c``.
          loss: scalar, the learner's loss at ``carry.c``.
        """
        lstm, gates = meta_params["lstm"], meta_params["gates"]
        hs = self.hidden_size
        dtype = carry.c.dtype
        n = grad.shape[0]
        xg = preprocess_gradients(grad, self.preprocess_p)                                    # [n, 2]
        xl = jnp.broadcast_to(preprocess_gradients(loss.astype(dtype), self.preprocess_p), (n, 2))
        x = jnp.concatenate([xg, xl], axis=-1)                                                # [n, 4]
        z = x @ lstm["w_x"] + carry.h @ lstm["w_h"] + lstm["b"]
        zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
        cell = jax.nn.sigmoid(zf) * carry.cell + jax.nn.sigmoid(zi) * jnp.tanh(zg)
        h = jax.nn.sigmoid(zo) * jnp.tanh(cell)
        wf, wi = gates["w_f"], gates["w_i"]
        f = jax.nn.sigmoid(h @ wf[:hs] + carry.c * wf[hs] + carry.f * wf[hs + 1] + gates["b_f"])
        i = jax.nn.sigmoid(h @ wi[:hs] + carry.c * wi[hs] + carry.i * wi[hs + 1] + gates["b_i"])
        c = f * carry.c - i * grad
        return MetaLSTMCarry(c, f, i, h, cell)

    def _unroll(self, meta_params, model_state, support_x, support_y, num_steps, eval_fn=None):
        """``(c_T, support_losses [T], evals [T+1] or None)``."""
        self._check_meta(meta_params)
        _, unravel = ravel_pytree(meta_params["params"])
        loss_fn = get_loss(self.loss)

        def support_loss(flat):
            out, _ = self._forward(unravel(flat), model_state, support_x)
            return loss_fn(out, support_y)

        carry = self.initial_carry(meta_params)
        if num_steps == 0:
            evals = None if eval_fn is None else jax.tree.map(lambda a: a[None], eval_fn(carry.c))
            return carry.c, jnp.zeros((0,), carry.c.dtype), evals

        def body(carry, _):
            loss, g = jax.value_and_grad(support_loss)(carry.c)
            if not self.second_order:
                loss, g = jax.lax.stop_gradient((loss, g))
            new = self.update(meta_params, carry, g, loss)
            ev = None if eval_fn is None else eval_fn(new.c)
            return new, (loss, ev)

        last, (losses, evals) = jax.lax.scan(body, carry, None, length=num_steps)
        if eval_fn is not None:
            first = eval_fn(carry.c)
            evals = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, evals)
        return last.c, losses, evals

    # -- contract -------------------------------------------------------------------
    def adapt(self, meta_params, model_state, support_x, support_y, *, key=None, num_steps=None):
        """The learner's flat parameters :math:`\\theta_T = c_T` after ``num_steps`` updates.

        ``num_steps`` defaults to :attr:`num_steps`; :meth:`unravel` turns the
        result back into the network's parameter pytree.
        """
        del key
        k = self._resolve_steps(num_steps, self.num_steps)
        c, _, _ = self._unroll(meta_params, model_state, support_x, support_y, k)
        return c

    def predict(self, meta_params, adapted, model_state, x, *, num_steps=None):
        """The learner's outputs on ``x`` with ``adapted`` (a flat vector from :meth:`adapt`, or a pytree)."""
        del num_steps
        if hasattr(adapted, "ndim") and adapted.ndim == 1:
            adapted = self.unravel(meta_params, adapted)
        return self._forward(adapted, model_state, x)[0]

    def task_loss(self, meta_params, model_state, task, *, key=None, step=0):
        """Query loss of the adapted learner; ``aux["metrics"]``: ``loss``, ``accuracy``
        (classification), ``support_loss`` (before the first update)."""
        del key, step
        check_one_task(type(self).__name__, task, self.apply)
        c, losses, _ = self._unroll(meta_params, model_state, task.support_x, task.support_y, self.num_steps)
        out, new_state = self._forward(self.unravel(meta_params, c), model_state, task.query_x)
        metrics = metrics_for(self.loss, out, task.query_y)
        metrics["support_loss"] = losses[0]
        if self.bn_mode == "frozen":
            new_state = model_state
        return metrics["loss"], {"metrics": metrics, "model_state": new_state}

    def evaluate(self, meta_params, model_state, task, *, key=None, num_steps=None) -> dict:
        """Query metrics after ``0..num_steps`` updates (default ``eval_steps``), each ``[N+1]``."""
        del key
        default = self.eval_steps if self.eval_steps is not None else self.num_steps
        k = self._resolve_steps(num_steps, default)
        unravel = ravel_pytree(meta_params["params"])[1]

        def query(flat):
            out, _ = self._forward(unravel(flat), model_state, task.query_x)
            return metrics_for(self.loss, out, task.query_y)

        _, _, evals = self._unroll(meta_params, model_state, task.support_x, task.support_y, k, eval_fn=query)
        return jax.lax.stop_gradient(evals)
