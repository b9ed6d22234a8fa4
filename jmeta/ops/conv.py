r"""2-D convolution with a choice of implementation, for fast meta-gradients on every backend.

:func:`conv2d` computes the usual cross-correlation (NHWC inputs, HWIO kernels)

.. math::
    y[n, h, w, o] = \sum_{i, j, c} \bar x[n, s h + i, s w + j, c]\; W[i, j, c, o],

with :math:`\bar x` the zero-padded input and :math:`s` the stride, in one of
these forms (``impl``):

* ``"lax"``: ``lax.conv_general_dilated`` differentiated by JAX. The native
  path; best on GPU/TPU, and on the CPU when the tasks of a batch are folded
  into one convolution.
* ``"patches_vjp"``: the same forward convolution, but its derivatives are
  written by hand (``jax.custom_vjp``) so that the **weight gradient** is a
  patches contraction

  .. math:: \frac{\partial L}{\partial W[i,j,c,o]} = \sum_{n,h,w}
      \bar x[n, s h + i, s w + j, c]\; \frac{\partial L}{\partial y[n,h,w,o]},

  i.e. one matrix product of the ``(kh kw C)``-wide patches with the output
  gradient, and the **input gradient** is a transposed convolution. On XLA:CPU
  the autodiff weight-gradient convolution inside a loop body (``lax.map`` /
  ``lax.scan`` over tasks) falls onto a path ~85x slower than at top level
  (``shared/notes/xla-cpu-conv.md``); this form avoids it. The three bilinear
  maps involved -- the convolution :math:`C(x, W)`, its input-transpose
  :math:`C^\top_x(\delta, W)` and its weight-transpose
  :math:`C^\top_W(x, \delta)` -- are each a ``custom_vjp`` whose backward pass
  is written with the other two, using the adjoint identities

  .. math::
      \langle C(x, W), \delta\rangle = \langle x, C^\top_x(\delta, W)\rangle
      = \langle W, C^\top_W(x, \delta)\rangle,

  so the set is closed under reverse-mode differentiation: derivatives up to
  order :data:`MAX_FAST_ORDER` (second-order MAML's reverse-over-reverse
  included) stay on the fast forms, and higher orders are still exact.
  Forward-mode (``jax.jvp``, ``jax.jacfwd``) is not supported, as for every
  ``custom_vjp``.
* ``"patches"``: the forward pass itself as a patches contraction
  (im2col + ``einsum``), differentiated by JAX. Under ``vmap`` over per-task
  kernels this becomes a batched matrix product instead of a grouped
  convolution.
* ``"auto"``: ``"patches_vjp"`` on the CPU backend, ``"lax"`` elsewhere
  (see :func:`resolve_conv_impl`). A model whose kernels are adapted per task
  (MAML's family) runs faster on GPU with ``"patches"``: build it with
  :func:`recommended_conv_impl`, as ``jmeta train`` does.

All forms compute the same function and the same derivatives (up to
floating-point rounding); ``tests/ops/test_conv.py`` checks first, second and
third derivatives against ``lax.conv_general_dilated`` autodiff in float64.

Measured (``benchmarks/omniglot_step.py``, 2-core CPU): a second-order MAML
Omniglot meta-step with ``task_parallel="map"`` runs ~10x faster with
``"patches_vjp"`` than with ``"lax"``, and beside learn2learn's step time.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jmeta import validate

CONV_IMPLS = ("auto", "lax", "patches_vjp", "patches")

_DN = ("NHWC", "HWIO", "NHWC")


class _Cfg(NamedTuple):
    """Static configuration of one convolution (hashable)."""

    stride: tuple[int, int]
    pads: tuple[tuple[int, int], tuple[int, int]]
    in_hw: tuple[int, int]
    kernel_hw: tuple[int, int]


def resolve_conv_impl(impl: str = "auto", backend: str | None = None) -> str:
    """The concrete implementation ``"auto"`` stands for on ``backend``.

    Args:
      impl: one of :data:`CONV_IMPLS`.
      backend: ``"cpu"``, ``"gpu"``, ``"tpu"``, ... (default: ``jax.default_backend()``).

    Returns:
      ``impl`` itself unless it is ``"auto"``; then ``"patches_vjp"`` on the
      CPU and ``"lax"`` on accelerators.
    """
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv impl must be one of {CONV_IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    backend = jax.default_backend() if backend is None else backend
    return "patches_vjp" if backend == "cpu" else "lax"


def recommended_conv_impl(per_task_kernels: bool, backend: str | None = None) -> str:
    """The convolution form to build a model with, given whether its kernels differ between tasks.

    ``conv_impl="auto"`` decides per backend only, inside :func:`conv2d`, where it
    cannot know whether the kernel it is given is shared by the tasks of a batch
    (ProtoNets, R2-D2, MetaOptNet, ANIL's body) or adapted per task (MAML and the
    rest of its family, Reptile, iMAML, Meta-LSTM). Under ``vmap`` over tasks the
    two are different programs: a shared kernel folds the tasks into the batch of
    one convolution; per-task kernels become a grouped convolution. Whoever builds
    the model knows which one it is, and picks with this function:

    * CPU: ``"patches_vjp"`` (what ``"auto"`` gives; see
      :func:`recommended_task_parallel`).
    * GPU: ``"patches"`` for per-task kernels (im2col + a batched matrix product
      instead of cuDNN's grouped convolution), ``"lax"`` for shared ones.
      Measured on an NVIDIA H200 (jax 0.11.2, deterministic GPU ops,
      ``benchmarks/suite.py --conv-impl lax|patches``, README): second-order MAML
      steps 1.5x (Conv4-64, 28x28, 32 tasks), 3.7x (Conv4-32, 84x84, 5 steps) and
      7.2x (ResNet-12) faster with ``"patches"``, at 1.7-2.6x the memory; ANIL
      (shared body) 1.3-1.5x slower with it.
    * anything else (TPU): ``"lax"`` (not measured).

    Args:
      per_task_kernels: whether the convolution kernels are adapted per task.
      backend: ``"cpu"``, ``"gpu"``, ... (default: ``jax.default_backend()``).
    """
    backend = jax.default_backend() if backend is None else backend
    if backend == "cpu":
        return "patches_vjp"
    if backend in ("gpu", "cuda", "rocm"):
        return "patches" if per_task_kernels else "lax"
    return "lax"


def recommended_task_parallel(backend: str | None = None) -> str:
    """The task-parallel strategy that pairs with ``conv_impl="auto"``.

    ``"map"`` (a loop over tasks) on the CPU, where per-task kernels under
    ``vmap`` become slow grouped convolutions; ``"vmap"`` on accelerators.
    Pass it as ``make_meta_step(..., task_parallel=...)``.
    """
    backend = jax.default_backend() if backend is None else backend
    return "map" if backend == "cpu" else "vmap"


def _pair(v, name) -> tuple[int, int]:
    try:
        pair = (v, v) if getattr(v, "ndim", None) == 0 or not hasattr(v, "__len__") else tuple(v)
        if len(pair) != 2:
            raise ValueError
        return tuple(validate.integer(name, a, min=1) for a in pair)  # type: ignore[return-value]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {validate.describe(v)}") from None


def _resolve_pads(padding, in_hw, kernel_hw, stride):
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"padding must be 'SAME', 'VALID' or ((top, bottom), (left, right)), got {padding!r}")
        pads = lax.padtype_to_pads(in_hw, kernel_hw, stride, padding.upper())
        return tuple((int(a), int(b)) for a, b in pads)
    try:
        pads = tuple((int(a), int(b)) for a, b in padding)
    except (TypeError, ValueError):
        raise ValueError(f"padding must be 'SAME', 'VALID' or ((top, bottom), (left, right)), got {padding!r}")
    if len(pads) != 2 or any(p < 0 for pr in pads for p in pr):
        raise ValueError(f"explicit padding must be two non-negative (low, high) pairs, got {padding!r}")
    return pads


def _out_hw(cfg: _Cfg) -> tuple[int, int]:
    return tuple((n + lo + hi - k) // s + 1
                 for n, (lo, hi), k, s in zip(cfg.in_hw, cfg.pads, cfg.kernel_hw, cfg.stride))  # type: ignore


# -- the three bilinear maps, plain forms ------------------------------------------------------
def _lax_conv(x, w, cfg: _Cfg):
    return lax.conv_general_dilated(x, w, cfg.stride, cfg.pads, dimension_numbers=_DN)


def _lax_conv_input_t(dy, w, cfg: _Cfg):
    """Adjoint in x: ``dx`` with ``<conv(x, w), dy> = <x, dx>`` (a transposed convolution)."""
    kh, kw = cfg.kernel_hw
    ho, wo = dy.shape[1], dy.shape[2]
    pads = []
    for n, (lo, _), k, s, o in zip(cfg.in_hw, cfg.pads, cfg.kernel_hw, cfg.stride, (ho, wo)):
        p_lo = k - 1 - lo
        p_hi = n - (o - 1) * s + lo - 1
        pads.append((p_lo, p_hi))
    # Negative padding crops (when the forward pass dropped trailing rows): lax supports it.
    w_t = jnp.swapaxes(w[::-1, ::-1], 2, 3)
    return lax.conv_general_dilated(dy, w_t, (1, 1), pads, lhs_dilation=cfg.stride, dimension_numbers=_DN)


def _patch_slices(x, cfg: _Cfg):
    """The ``kh * kw`` shifted, strided views of the padded input, each ``[N, Ho, Wo, C]``."""
    (pt, pb), (pl, pr) = cfg.pads
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    ho, wo = _out_hw(cfg)
    sh, sw = cfg.stride
    kh, kw = cfg.kernel_hw
    return [xp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
            for i in range(kh) for j in range(kw)]


def patches(x, kernel_hw: Sequence[int] = (3, 3), *, stride=1, padding="SAME"):
    """im2col: ``[N, H, W, C] -> [N, Ho, Wo, kh * kw * C]`` (tap-major, channel-minor).

    The last axis is ordered like ``w.reshape(kh * kw * C, O)`` of an HWIO
    kernel, so ``patches(x) @ w.reshape(-1, O) == conv2d(x, w)``.
    """
    kernel_hw = _pair(tuple(kernel_hw), "kernel_hw")
    stride = _pair(stride, "stride")
    in_hw = (int(x.shape[1]), int(x.shape[2]))
    cfg = _Cfg(stride, _resolve_pads(padding, in_hw, kernel_hw, stride), in_hw, kernel_hw)
    return jnp.concatenate(_patch_slices(x, cfg), axis=-1)


def _patches_conv(x, w, cfg: _Cfg):
    p = jnp.concatenate(_patch_slices(x, cfg), axis=-1)
    kh, kw, c, o = w.shape
    return jnp.einsum("nhwk,ko->nhwo", p, w.reshape(kh * kw * c, o))


def _patches_weight_t(x, dy, cfg: _Cfg):
    """Adjoint in w: ``dw[i, j, c, o] = sum_{n,h,w} xpad[n, s h + i, s w + j, c] dy[n, h, w, o]``."""
    p = jnp.concatenate(_patch_slices(x, cfg), axis=-1)
    kh, kw = cfg.kernel_hw
    c, o = x.shape[-1], dy.shape[-1]
    dw_t = jnp.einsum("nhwo,nhwk->ok", dy, p)
    return dw_t.T.reshape(kh, kw, c, o)


# -- custom_vjp forms: a set closed under reverse-mode differentiation -------------------------
# Nesting. Under reverse-over-reverse, the *inner* level of differentiation evaluates a custom_vjp
# function's ``fwd`` rule on values that are still tracers of the *outer* level, which then
# differentiates the ops inside ``fwd`` with JAX's own rules -- for a convolution, the slow
# weight-gradient convolution again. So the functions come in levels: the level-``d`` function's
# ``fwd`` and ``bwd`` call level-``d-1`` functions, and level 0 calls the plain forms. Derivatives
# up to order ``MAX_FAST_ORDER`` then never meet a plain convolution derivative; beyond that they
# are still exact, only on JAX's own (on XLA:CPU, slow) rules.
MAX_FAST_ORDER = 4

_PLAIN = {"conv": _lax_conv, "input_t": _lax_conv_input_t, "weight_t": _patches_weight_t}


@functools.lru_cache(maxsize=None)
def _bilinear(kind: str, level: int):
    """The custom_vjp form of one of the three bilinear maps, at nesting ``level`` (>= 0)."""
    inner = (lambda k: _PLAIN[k]) if level == 0 else (lambda k: _bilinear(k, level - 1))

    @functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
    def f(a, b, cfg):
        return _PLAIN[kind](a, b, cfg)

    def fwd(a, b, cfg):
        return inner(kind)(a, b, cfg), (a, b)

    def bwd(cfg, res, g):
        a, b = res
        if kind == "conv":        # y = C(x, W): dx = C_x^T(g, W), dW = C_W^T(x, g)
            return inner("input_t")(g, b, cfg), inner("weight_t")(a, g, cfg)
        if kind == "input_t":     # dx = C_x^T(dy, W): <dx, g> = <dy, C(g, W)> = <W, C_W^T(g, dy)>
            return inner("conv")(g, b, cfg), inner("weight_t")(g, a, cfg)
        # dW = C_W^T(x, dy): <dW, g> = <dy, C(x, g)> = <x, C_x^T(dy, g)>
        return inner("input_t")(b, g, cfg), inner("conv")(a, g, cfg)

    f.defvjp(fwd, bwd)
    return f


def _conv(x, w, cfg):
    return _bilinear("conv", MAX_FAST_ORDER - 1)(x, w, cfg)


# -- public entry point ------------------------------------------------------------------------
def conv2d(x, w, *, stride=1, padding="SAME", impl: str = "auto"):
    """2-D convolution (cross-correlation), NHWC input and HWIO kernel.

    Args:
      x: input ``[N, H, W, C_in]``.
      w: kernel ``[kh, kw, C_in, C_out]``, of the same dtype as ``x``.
      stride: an int or a pair ``(sh, sw)``.
      padding: ``"SAME"``, ``"VALID"`` or ``((top, bottom), (left, right))``.
      impl: ``"auto"``, ``"lax"``, ``"patches_vjp"`` or ``"patches"`` (see the
        module docstring). All give the same values and derivatives.

    Returns:
      ``[N, Ho, Wo, C_out]``.

    Raises:
      ValueError: on bad shapes, stride, padding or ``impl``, or when ``x`` and
        ``w`` have different dtypes (every ``impl`` refuses them alike).

    Example:
      >>> y = conv2d(x, w, impl="patches_vjp")       # fast meta-gradients on CPU
      >>> jax.grad(lambda w: jax.grad(lambda w: conv2d(x, w).sum() ** 2)(w).sum())(w)
    """
    impl = resolve_conv_impl(impl)
    if isinstance(x, np.ndarray):  # canonical dtypes, as under jit (NumPy float64 is float32 without x64)
        x = jnp.asarray(x)
    if isinstance(w, np.ndarray):
        w = jnp.asarray(w)
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"conv2d expects x of shape [N, H, W, C_in], got shape {getattr(x, 'shape', None)}")
    if getattr(w, "ndim", None) != 4:
        raise ValueError(f"conv2d expects w of shape [kh, kw, C_in, C_out], got shape {getattr(w, 'shape', None)}")
    if x.shape[-1] != w.shape[2]:
        raise ValueError(f"conv2d: x has {x.shape[-1]} input channels but w expects {w.shape[2]} "
                         f"(x {x.shape}, w {w.shape})")
    if x.dtype != w.dtype:
        # lax.conv_general_dilated refuses mixed dtypes while the patches einsum would promote; refuse
        # them in every form so that all impls agree (and nothing is silently up- or down-cast).
        raise ValueError(f"conv2d: x and w must have the same dtype (cast one of them), "
                         f"got x {x.dtype} and w {w.dtype}")
    stride = _pair(stride, "stride")
    in_hw = (int(x.shape[1]), int(x.shape[2]))
    kernel_hw = (int(w.shape[0]), int(w.shape[1]))
    cfg = _Cfg(stride, _resolve_pads(padding, in_hw, kernel_hw, stride), in_hw, kernel_hw)
    if any(o < 1 for o in _out_hw(cfg)):
        raise ValueError(f"conv2d: kernel {kernel_hw} with padding {cfg.pads} does not fit the input {in_hw}")
    if impl == "lax":
        return _lax_conv(x, w, cfg)
    if impl == "patches":
        return _patches_conv(x, w, cfg)
    return _conv(x, w, cfg)


__all__ = ["CONV_IMPLS", "conv2d", "patches", "recommended_task_parallel", "resolve_conv_impl"]
