r"""Inner-loop adaptation: ``lax.scan`` over steps of an optax transformation.

:func:`inner_loop` runs ``num_steps`` steps of any ``optax.GradientTransformation``
on a loss and is differentiable end to end, so that

.. math::
    \theta \mapsto \phi_K(\theta),\qquad \phi_{k+1} = \phi_k + u_k(\nabla L(\phi_k), s_k)

can be differentiated with respect to the initial parameters (MAML), to
meta-parameters the loss or the transformation close over (learned learning
rates, ANIL's shared body), or with the second-order term removed
(``first_order=True``: the gradients fed to the transformation are
``stop_gradient``-ed, giving first-order MAML).

The loop is a ``lax.scan``, so the compiled program does not grow with the
number of steps; ``remat`` rematerialises each step on the backward pass,
trading compute for memory.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jmeta import validate

PyTree = Any

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


def remat_policy(remat: str | Callable | None):
    """Resolves a remat option to ``(use_checkpoint, policy)``.

    Options:
      * ``None`` or ``"none"``: keep every residual of every step (fastest, most memory).
      * ``"full"``: save nothing inside a step; recompute it on the backward
        pass (per-step checkpoints: memory holds one carry per step).
      * ``"dots"``: save only matrix-multiply outputs (``jax.checkpoint_policies.dots_saveable``).
      * ``"dots_no_batch"``: save only matmuls without batch dimensions.
      * a callable: any ``jax.checkpoint`` policy.
    """
    if remat is None or remat == "none":
        return False, None
    if callable(remat):
        return True, remat
    if remat == "full":
        return True, jax.checkpoint_policies.nothing_saveable
    if remat == "dots":
        return True, jax.checkpoint_policies.dots_saveable
    if remat == "dots_no_batch":
        return True, jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    raise ValueError(f"remat must be one of {REMAT_POLICIES} or a jax.checkpoint policy, got {remat!r}")


class InnerResult(NamedTuple):
    """What :func:`inner_loop` returns.

    Attributes:
      params: the adapted parameters after ``num_steps`` steps.
      opt_state: the transformation's final state.
      losses: the inner (support) loss before each step, ``[num_steps]``.
      evals: ``eval_fn`` applied before the first step and after every step,
        stacked on a leading axis of size ``num_steps + 1`` (``None`` without
        ``eval_fn``).
    """

    params: PyTree
    opt_state: Any
    losses: jax.Array
    evals: Any


def nan_derivative_at_zero_gradient(transform: optax.GradientTransformation) -> bool:
    """Whether ``transform``'s update has a NaN derivative at a zero gradient.

    Such a transform turns a second-order meta-gradient NaN as soon as one
    coordinate's inner gradient is exactly zero (a dead ReLU unit's bias, a
    padded class), which happens in most networks: ``optax.scale_by_adam()``
    with its default ``eps_root=0`` is the usual case (the derivative of
    ``sqrt(v)`` at ``v = 0``). The check runs the transform once on the
    gradient ``[0, 1]`` (float32), outside any trace; a transform that cannot run
    on such a vector (it expects a particular parameter structure) is reported
    as fine.
    """
    with jax.ensure_compile_time_eval():
        try:
            params = jnp.zeros((2,), jnp.float32)
            state = transform.init(params)

            def update(g):
                return transform.update(g, state, params)[0]

            # One coordinate zero, one not: a global-norm clip (whose derivative
            # is undefined only when the whole gradient is zero) passes.
            _, vjp = jax.vjp(update, jnp.array([0.0, 1.0], jnp.float32))
            (cot,) = vjp(jnp.ones((2,), jnp.float32))
            return bool(jnp.any(jnp.isnan(cot)))
        except Exception:  # noqa: BLE001 -- a probe: anything it cannot run is not judged
            return False


def update_opposes_gradient(transform: optax.GradientTransformation) -> bool:
    """Whether ``transform``'s first update points against the gradient.

    jmeta's algorithms take ``inner_transform`` as a *direction* (what
    ``optax.scale_by_adam`` returns) and apply ``-inner_lr`` after it. A whole
    optimizer (``optax.adam(1e-3)``, ``optax.sgd(0.1)``, a learned
    optimizer's ``opt_fn(theta)``) already carries its negative learning rate,
    so chained that way the inner loop would *ascend*. The probe runs the
    transform once on the gradient ``[1, 2]`` (float32), outside any trace,
    and reports a negative inner product; a transform that cannot run on such
    a vector is reported as fine, and so is one holding a jmeta
    ``LSTMOptimizer``'s state (a learned optimizer points wherever its
    meta-parameters make it, descending or not, however it is wrapped).
    """
    def learned(x):  # a jmeta.learned_optim.LSTMOptimizerState, found without importing that package
        return getattr(type(x), "learned_optimizer_state", False) is True

    with jax.ensure_compile_time_eval():
        try:
            params = jnp.zeros((2,), jnp.float32)
            g = jnp.array([1.0, 2.0], jnp.float32)
            state = transform.init(params)
            if any(learned(x) for x in jax.tree.leaves(state, is_leaf=learned)):
                return False
            u, _ = transform.update(g, state, params)
            return bool(jnp.vdot(jnp.asarray(u, jnp.float32), g) < 0)
        except Exception:  # noqa: BLE001 -- a probe: anything it cannot run is not judged
            return False


def check_inner_transform(owner: str, transform, *, differentiated: bool, stacklevel: int = 4) -> None:
    """Warns about an ``inner_transform`` that ascends or whose derivative is NaN at zero."""
    if transform is None:
        return
    if update_opposes_gradient(transform):
        warnings.warn(
            f"{owner}: inner_transform's update points against the gradient: it looks like a whole optimizer "
            "(e.g. optax.adam(lr), optax.sgd(lr), a learned optimizer's opt_fn) that already applies a negative "
            "learning rate, and jmeta applies -inner_lr after it, so the inner loop would ascend; pass the "
            "direction (e.g. optax.scale_by_adam(eps_root=1e-8)), or optax.chain(optimizer, optax.scale(-1.0)) "
            "with inner_lr=1.0", UserWarning, stacklevel=stacklevel)
    if differentiated and nan_derivative_at_zero_gradient(transform):
        warnings.warn(
            f"{owner}: inner_transform has a NaN derivative at a zero gradient (e.g. optax.scale_by_adam() with "
            "its default eps_root=0), so the second-order meta-gradient turns NaN whenever an inner-gradient "
            "coordinate is exactly zero (a dead ReLU unit's bias is enough); use "
            "optax.scale_by_adam(eps_root=1e-8) or first_order=True", UserWarning, stacklevel=stacklevel)


def _value_and_grad(loss_fn, has_aux):
    if has_aux:
        return jax.value_and_grad(loss_fn, has_aux=True)

    g = jax.value_and_grad(loss_fn)

    def f(p):
        v, gr = g(p)
        return (v, None), gr

    return f


def inner_loop(
    loss_fn: Callable[[PyTree], Any],
    params: PyTree,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    *,
    first_order: bool = False,
    remat: str | Callable | None = None,
    eval_fn: Callable[[PyTree], Any] | None = None,
    has_aux: bool = False,
    unroll: int = 1,
    step_index: bool = False,
) -> InnerResult:
    """Adapts ``params`` by ``num_steps`` steps of ``optimizer`` on ``loss_fn``.

    Args:
      loss_fn: ``loss_fn(params) -> loss`` (or ``(loss, aux)`` with
        ``has_aux``); it may close over anything, including meta-parameters,
        which then receive gradients through the whole loop.
      params: initial parameters (the pytree that is adapted).
      optimizer: any optax ``GradientTransformation`` (SGD, Adam with
        ``eps_root > 0``, learned learning rates, an LSTM optimizer, ...).
      num_steps: number of steps ``K >= 0`` (a Python int: the scan length).
      first_order: stop the gradient through the inner gradients (FOMAML).
      remat: rematerialisation of each step; see :func:`remat_policy`.
      eval_fn: optional ``eval_fn(params) -> pytree`` evaluated before the
        first step and after each step (e.g. the query loss, for MAML++'s
        multi-step loss or an adaptation curve).
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``; ``aux`` is dropped.
      unroll: ``lax.scan`` unroll factor (a single step is always inlined:
        on XLA:CPU a one-trip loop blocks fusion and costs ~5% of a small step).
      step_index: call ``loss_fn(params, i)`` and ``eval_fn(params, i)`` with
        the (traced) step index ``i``: ``loss_fn`` at step ``i`` gets ``i``,
        ``eval_fn`` after step ``i`` gets ``i`` and before the first step
        ``0`` -- for per-step parameters such as MAML++'s per-step BatchNorm.

    Returns:
      An :class:`InnerResult`.

    Raises:
      ValueError: if ``num_steps`` is negative or not an integer.

    Note:
      Adam inside a differentiated loop needs ``eps_root > 0``
      (``optax.scale_by_adam(eps_root=1e-8)``): the derivative of
      ``sqrt(v)`` at ``v = 0`` is infinite and the meta-gradient turns NaN.
    """
    num_steps = validate.integer("num_steps", num_steps, min=0)  # static: Python or NumPy integers
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}")
    opt_state = optimizer.init(params)
    if step_index:
        def vg(p, i):
            return _value_and_grad(lambda q: loss_fn(q, i), has_aux)(p)

        ev = eval_fn
    else:
        vg_ = _value_and_grad(loss_fn, has_aux)
        vg = lambda p, i: vg_(p)  # noqa: E731
        ev = None if eval_fn is None else (lambda p, i: eval_fn(p))

    def step(carry, i):
        p, s = carry
        (loss, _aux), grads = vg(p, i)
        if first_order:
            grads = jax.lax.stop_gradient(grads)
        updates, s = optimizer.update(grads, s, p)
        p = optax.apply_updates(p, updates)
        out = (loss, ev(p, i) if ev is not None else None)
        return (p, s), out

    use_ckpt, policy = remat_policy(remat)
    if use_ckpt:
        step = jax.checkpoint(step, policy=policy, prevent_cse=False)

    xs = jnp.arange(num_steps, dtype=jnp.int32) if step_index else None
    (params_k, opt_state), (losses, evals) = jax.lax.scan(
        step, (params, opt_state), xs, length=num_steps, unroll=True if num_steps == 1 else unroll)
    if eval_fn is not None:
        first = ev(params, jnp.zeros((), jnp.int32))
        evals = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b], axis=0), first, evals)
    return InnerResult(params_k, opt_state, losses, evals)
