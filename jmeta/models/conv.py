r"""Conv4: the four-block convolutional network of few-shot learning (Flax NNX).

The network of Vinyals et al. (2016), Finn et al. (2017, MAML) and Snell et
al. (2017, ProtoNets): ``num_blocks`` blocks of

    3x3 convolution (``hidden`` filters) -> BatchNorm -> ReLU -> 2x2 max-pool

followed by a linear ``head`` with ``n_way`` outputs. ``hidden=64`` for
Omniglot (28x28x1), ``hidden=32`` for MAML's mini-ImageNet (84x84x3; 64 for
ProtoNets). Omniglot 28 -> 14 -> 7 -> 3 -> 1 gives 64 features;
mini-ImageNet 84 -> 42 -> 21 -> 10 -> 5 gives ``25 * hidden``.

``pool="stride"`` is MAML's Omniglot variant: stride-2 convolutions instead of
max-pooling and a spatial mean before the head (28 -> 14 -> 7 -> 4 -> 2, then
the mean over the 2x2 map: ``hidden`` features). ``pool="max"`` flattens.

Options for meta-learning:

* ``conv_impl``: how the convolutions and their derivatives are computed
  (:func:`jmeta.ops.conv2d`; ``"auto"`` picks the fast form per backend).
* ``n_way=None``: embedding network only (no head), for metric methods
  (ProtoNets) -- the output is the feature vector.
* ``per_step_bn=K``: MAML++'s per-step BatchNorm (Antoniou et al. 2019, "How
  to train your MAML", BNRS + BNWB): every BatchNorm scale, bias, running mean
  and running variance gets a leading axis of size ``K`` and
  ``apply(params, state, x, *, train, step=k)`` uses row ``min(k, K-1)``
  (see :func:`with_per_step`).

BatchNorm in adaptation. The model only knows ``train``: ``train=True``
normalises with the statistics of the batch it is given (the examples of one
task: MAML's transductive default, ``GradientLearner(bn_mode="batch")``) and
returns running statistics updated with momentum; ``train=False`` uses the
running statistics in ``state`` (``bn_mode="frozen"``).

Parameters are float32 (also under ``jax_enable_x64``, as Flax's layers); the
model computes in its first kernel's dtype: integer inputs (``uint8`` images)
are scaled to ``[0, 1]`` in it, float inputs are cast to it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from jmeta import validate
from jmeta.ops.conv import CONV_IMPLS, conv2d

POOLS = ("max", "stride")


def as_float(x, dtype=jnp.float32):
    """Images as the model's float dtype ``dtype`` (the first kernel's: bfloat16 under mixed precision, float32
    by default also under x64): integers (uint8) scaled to [0, 1], floats cast (float64 images of an x64 session
    into a float32 model)."""
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.integer):
        return x.astype(dtype) / 255.0
    return x.astype(dtype) if x.dtype != dtype else x


def check_input(x, in_channels, name, input_shape=None, flatten=""):
    """Static shape checks of a batch of images (nothing is added to the traced computation).

    With ``input_shape``, the images' height and width must equal
    ``input_shape[:2]``: a model that flattens its feature map (``flatten``
    says which option) has a head whose width was fixed by that size.
    """
    if x.ndim != 4:
        raise ValueError(f"{name} expects a batch of images [N, H, W, C], got shape {x.shape}")
    if x.shape[-1] != in_channels:
        raise ValueError(f"{name} was built for {in_channels} input channels, got images of shape {x.shape}")
    if input_shape is not None and tuple(x.shape[1:3]) != tuple(input_shape[:2]):
        raise ValueError(
            f"{name} image height and width must be {tuple(input_shape[:2])} (input_shape={tuple(input_shape)}; "
            f"{flatten} flattens the feature map, so its width depends on the image size), "
            f"got {tuple(x.shape[1:3])} (images of shape {tuple(x.shape)})")


def max_pool_2x2(x):
    """2x2 max-pooling with stride 2, ``VALID`` (odd sizes drop the last row/column, as in MAML).

    The windows do not overlap, so the pool is a tournament over each window's
    four values (row-major order: top-left, top-right, bottom-left,
    bottom-right): two pairs, then their winners, each comparison on
    ``stop_gradient`` values picking the left one on ties (and a NaN, as
    ``argmax`` does). The output is one of its inputs chosen by a fixed mask,
    so the derivative is a one-hot selection -- elementwise and fusible, to
    any order -- and the first maximum of a window gets the gradient.

    Why not the alternatives: ``lax.reduce_window``'s derivatives
    (``select_and_scatter``, and ``select_and_gather_add`` for second order)
    run as slow scatter/gather loops on XLA:CPU; ``jnp.max`` over reshaped
    window axes differentiates through ``operand == max``, an exact equality
    that breaks when XLA recomputes the operand in another fusion with
    different rounding -- it silently produced wrong second-order MAML
    meta-gradients under ``jit`` (``tests/models/test_conv4.py``); and an
    ``argmax`` + one-hot over a gathered window axis (this function's previous
    form, same values and derivatives) needs a transposed copy of the
    activations: 7x slower forward and 4x slower forward + backward on a
    ``[240, 28, 28, 64]`` map on XLA:CPU. Ties pick the first element of the
    window (row-major), as ``reduce_window`` and PyTorch do.
    """
    n, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    if h2 < 1 or w2 < 1:
        raise ValueError(f"max_pool_2x2 needs at least 2x2 spatial size, got {x.shape}")
    x6 = x[:, :2 * h2, :2 * w2, :].reshape(n, h2, 2, w2, 2, c)

    def first_max(p, q):
        sp, sq = jax.lax.stop_gradient(p), jax.lax.stop_gradient(q)
        return jnp.where((sp >= sq) | jnp.isnan(sp), p, q)

    top = first_max(x6[:, :, 0, :, 0], x6[:, :, 0, :, 1])
    bottom = first_max(x6[:, :, 1, :, 0], x6[:, :, 1, :, 1])
    return first_max(top, bottom)


def conv_module():
    from flax import nnx

    class Conv2d(nnx.Module):
        """A 2-D convolution (HWIO kernel, bias) that calls :func:`jmeta.ops.conv2d`."""

        def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, *, stride: int = 1,
                     padding="SAME", use_bias: bool = True, impl: str = "auto", rngs):
            init = nnx.initializers.lecun_normal()
            # float32 as every Flax layer's parameters (param_dtype), also under jax_enable_x64: one dtype per model.
            # Drawn as [k*k*in, out] (the same fan-in) and reshaped: the same numbers (threefry counts the flat
            # index), but XLA:CPU compiles a rank-4 draw for seconds and a rank-2 one for a fraction of that.
            k2 = kernel_size * kernel_size * in_features
            self.kernel = nnx.Param(init(rngs.params(), (k2, out_features), jnp.float32).reshape(
                kernel_size, kernel_size, in_features, out_features))
            self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None
            self.stride = stride
            self.padding = padding
            self.impl = impl

        def __call__(self, x):
            y = conv2d(x, self.kernel[...], stride=self.stride, padding=self.padding, impl=self.impl)
            if self.bias is not None:
                y = y + self.bias[...]
            return y

    return Conv2d


def Conv2d(in_features: int, out_features: int, kernel_size: int = 3, *, stride: int = 1, padding="SAME",
           use_bias: bool = True, impl: str = "auto", rngs=None):
    """An NNX 2-D convolution layer whose convolution is :func:`jmeta.ops.conv2d` (``impl`` chooses the form).

    Parameters: ``kernel`` ``[k, k, in, out]`` (LeCun-normal) and ``bias`` ``[out]`` (zeros), float32 (as
    Flax's layers, also under ``jax_enable_x64``; cast the parameters for another dtype).
    """
    from flax import nnx

    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
    return conv_module()(in_features, out_features, kernel_size, stride=stride, padding=padding,
                          use_bias=use_bias, impl=impl, rngs=nnx.Rngs(0) if rngs is None else rngs)


def conv4_feature_dim(input_shape: Sequence[int], *, hidden: int = 64, num_blocks: int = 4, pool: str = "max") -> int:
    """Width of Conv4's embedding for images of ``input_shape = (H, W, C)``."""
    h, w = int(input_shape[0]), int(input_shape[1])
    for _ in range(num_blocks):
        if pool == "max":
            h, w = h // 2, w // 2
        else:
            h, w = -(-h // 2), -(-w // 2)
    if h < 1 or w < 1:
        raise ValueError(f"input_shape {tuple(input_shape)} is too small for {num_blocks} blocks of 2x pooling")
    return hidden * h * w if pool == "max" else hidden


def Conv4(n_way: int | None = 5, *, input_shape: Sequence[int] = (28, 28, 1), hidden: int = 64,
          num_blocks: int = 4, pool: str = "max", conv_impl: str = "auto", bn_momentum: float = 0.9,
          bn_epsilon: float = 1e-5, rngs=None):
    """The Conv4 network as an NNX module (see the module docstring).

    Submodules: ``block_0 ... block_{num_blocks-1}``, each with ``conv``
    (``kernel``, ``bias``) and ``bn`` (``scale``, ``bias``; statistics
    ``mean``, ``var``), and ``head`` (``nnx.Linear``) unless ``n_way`` is ``None``.

    Args:
      n_way: outputs of the head; ``None`` for the embedding network alone.
      input_shape: ``(H, W, C)`` of one image (sets the head's input width).
        With ``pool="max"`` (flattened features) ``apply`` requires images of
        exactly this height and width; with ``pool="stride"`` any size works.
      hidden: filters per convolution (64 Omniglot, 32 MAML mini-ImageNet).
      num_blocks: number of conv blocks (4).
      pool: ``"max"`` (2x2 max-pool, flatten) or ``"stride"`` (stride-2 convs,
        spatial mean).
      conv_impl: one of :data:`jmeta.ops.CONV_IMPLS`.
      bn_momentum: running-statistics momentum (Flax convention: ``new = m *
        old + (1 - m) * batch``).
      bn_epsilon: BatchNorm epsilon.
      rngs: ``nnx.Rngs`` (default ``nnx.Rngs(0)``).
    """
    from flax import nnx

    n_way = validate.integer("n_way", n_way, min=1, optional=True)
    hidden = validate.integer("hidden", hidden, min=1)
    num_blocks = validate.integer("num_blocks", num_blocks, min=1)
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
    if len(tuple(input_shape)) != 3:
        raise ValueError(f"input_shape must be (H, W, C), got {input_shape!r}")
    in_channels = int(input_shape[2])
    image_hw = (int(input_shape[0]), int(input_shape[1]))
    feat = conv4_feature_dim(input_shape, hidden=hidden, num_blocks=num_blocks, pool=pool)
    rngs = nnx.Rngs(0) if rngs is None else rngs
    ConvLayer = conv_module()

    class Block(nnx.Module):
        def __init__(self, cin):
            self.conv = ConvLayer(cin, hidden, 3, stride=2 if pool == "stride" else 1, padding="SAME",
                                  impl=conv_impl, rngs=rngs)
            self.bn = nnx.BatchNorm(hidden, momentum=bn_momentum, epsilon=bn_epsilon, rngs=rngs)

        def __call__(self, x):
            y = self.conv(x)
            # float32 running statistics (mixed precision keeps the model state in float32) promote the
            # normalised output; the block's activations stay in the compute dtype
            x = jax.nn.relu(self.bn(y).astype(y.dtype))
            return max_pool_2x2(x) if pool == "max" else x

    class _Conv4(nnx.Module):
        def __init__(self):
            for i in range(num_blocks):
                setattr(self, f"block_{i}", Block(in_channels if i == 0 else hidden))
            self.num_blocks = num_blocks
            self.head = nnx.Linear(feat, n_way, rngs=rngs) if n_way is not None else None

        def embed(self, x):
            x = as_float(x, self.block_0.conv.kernel[...].dtype)
            if pool == "max":   # flattened: the feature width depends on H and W
                check_input(x, in_channels, "Conv4", (*image_hw, in_channels), "pool='max'")
            else:               # spatial mean: any image size works
                check_input(x, in_channels, "Conv4")
            for i in range(self.num_blocks):
                x = getattr(self, f"block_{i}")(x)
            if pool == "max":
                return x.reshape(x.shape[0], -1)
            return jnp.mean(x, axis=(1, 2))

        def __call__(self, x):
            z = self.embed(x)
            return self.head(z) if self.head is not None else z

    return _Conv4()


def with_per_step(model, num_steps: int, select: Callable[[str], bool]):
    """Gives the selected parameters and state of a model one copy per inner step.

    Every leaf whose path (``"block_0/bn/scale"``) satisfies ``select`` is
    tiled to ``[num_steps, *shape]`` in both ``params`` and ``state``; the new
    ``apply(params, state, x, *, train, step=0)`` takes row ``min(step,
    num_steps - 1)`` of each (``step`` may be traced), runs the original
    model, and writes the updated state back into that row only. Gradients
    reach only the row that was used. This is MAML++'s per-step BatchNorm
    (Antoniou et al. 2019) when ``select`` picks the BatchNorm variables.

    Args:
      model: a :class:`~jmeta.models.Model`.
      num_steps: number of rows ``K >= 1`` (the inner steps of meta-training).
      select: ``select(path) -> bool`` on ``/``-joined leaf paths.

    Returns:
      A :class:`~jmeta.models.Model` whose ``apply`` accepts ``step``.
    """
    from jmeta.models.bridge import Model

    num_steps = validate.integer("per_step_bn", num_steps, min=1)

    def mask(tree):
        return jax.tree_util.tree_map_with_path(lambda p, _: bool(select(jax.tree_util.keystr(p, simple=True, separator="/"))), tree)

    p_mask, s_mask = mask(model.params), mask(model.state)
    if not any(jax.tree.leaves(p_mask)) and not any(jax.tree.leaves(s_mask)):
        raise ValueError("with_per_step: select() picks no parameter or state leaf")

    def tile(tree, m):
        return jax.tree.map(lambda a, sel: jnp.repeat(jnp.asarray(a)[None], num_steps, axis=0) if sel else a, tree, m)

    base_apply = model.apply
    from jmeta.models.bridge import DECLARED, declare, declared

    def apply(params, state, x, *, train: bool, step=0):
        k = jnp.clip(jnp.asarray(step, jnp.int32), 0, num_steps - 1)
        take = lambda a, sel: jax.lax.dynamic_index_in_dim(a, k, 0, keepdims=False) if sel else a  # noqa: E731
        p_k = jax.tree.map(take, params, p_mask)
        s_k = jax.tree.map(take, state, s_mask)
        out, new_s_k = base_apply(p_k, s_k, x, train=train)
        new_state = jax.tree.map(
            lambda full, new, sel: jax.lax.dynamic_update_index_in_dim(full, new.astype(full.dtype), k, 0)
            if sel else new, state, new_s_k, s_mask)
        return out, new_state

    return declare(Model(apply=apply, params=tile(model.params, p_mask), state=tile(model.state, s_mask)),
                   **{name: declared(base_apply, name) for name in DECLARED})


def conv4(n_way: int | None = 5, *, input_shape: Sequence[int] = (28, 28, 1), hidden: int = 64,
          num_blocks: int = 4, pool: str = "max", conv_impl: str = "auto", per_step_bn: int | None = None,
          bn_momentum: float = 0.9, bn_epsilon: float = 1e-5, key=None):
    """Conv4 bridged to a pure :class:`~jmeta.models.Model`.

    ``conv4(5)`` is MAML's Omniglot network (max-pool variant),
    ``conv4(5, pool="stride")`` its strided variant, ``conv4(5,
    input_shape=(84, 84, 3), hidden=32)`` MAML's mini-ImageNet network,
    ``conv4(None, input_shape=(84, 84, 3))`` the ProtoNet embedding.

    Args:
      per_step_bn: ``None``, or ``K``: MAML++ per-step BatchNorm (the
        BatchNorm scale/bias/mean/var of every block get a leading axis of
        size ``K``; ``apply`` takes ``step``). See :func:`with_per_step`.
      key: a ``jax.random.key`` for the initial weights (default: seed 0).
      Other arguments: see :func:`Conv4`.

    Example:
      >>> model = conv4(5, conv_impl="auto")
      >>> logits, state = model.apply(model.params, model.state, images, train=True)
      >>> learner = jmeta.algorithms.MAML(model.apply, loss="cross_entropy", inner_lr=0.4)
    """
    from flax import nnx

    from jmeta.models.bridge import declare, from_nnx

    rngs = nnx.Rngs(0) if key is None else nnx.Rngs(params=key)
    model = from_nnx(Conv4(n_way, input_shape=input_shape, hidden=hidden, num_blocks=num_blocks, pool=pool,
                           conv_impl=conv_impl, bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, rngs=rngs))
    declare(model, input_ndim=3, head=None if n_way is None else "head")
    if per_step_bn is None:
        return model
    return with_per_step(model, per_step_bn, lambda p: "/bn/" in f"/{p}")


__all__ = ["Conv2d", "Conv4", "POOLS", "conv4", "conv4_feature_dim", "max_pool_2x2", "with_per_step"]
