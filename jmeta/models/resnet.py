r"""ResNet-12: the residual embedding network of TADAM and MetaOptNet (Flax NNX).

Oreshkin et al. (2018, TADAM) and Lee et al. (2019, MetaOptNet): four
residual blocks of widths 64-160-320-640. Each block is

.. code-block:: text

    x -> conv3x3 -> BN -> LeakyReLU(0.1) -> conv3x3 -> BN -> LeakyReLU(0.1) -> conv3x3 -> BN --(+)--> LeakyReLU(0.1) -> maxpool 2x2
    x -> conv1x1 -> BN --------------------------------------------------------------------^

(convolutions without bias, as BatchNorm follows each). For 84x84 images the
map shrinks 84 -> 42 -> 21 -> 10 -> 5; the embedding is the spatial mean
(``output="avg"``, 640 features) or the flattened map (``output="flatten"``,
``5 * 5 * 640 = 16000`` features, MetaOptNet's choice).

Not included: DropBlock (Ghiasi et al. 2018), which MetaOptNet applies in the
last two blocks, and its 1-in-0.9 "keep rate" schedule; add dropout/DropBlock
around the model if a recipe needs it.

Convolutions go through :func:`jmeta.ops.conv2d` (``conv_impl``), so the
network is usable inside differentiated inner loops on the CPU too.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jmeta import validate
from jmeta.models.conv import as_float, check_input, conv_module, max_pool_2x2
from jmeta.ops.conv import CONV_IMPLS

OUTPUTS = ("avg", "flatten")


def resnet12_feature_dim(input_shape: Sequence[int] = (84, 84, 3), *, widths: Sequence[int] = (64, 160, 320, 640),
                         output: str = "avg") -> int:
    """Width of ResNet-12's embedding for images of ``input_shape``."""
    h, w = int(input_shape[0]), int(input_shape[1])
    for _ in widths:
        h, w = h // 2, w // 2
    if h < 1 or w < 1:
        raise ValueError(f"input_shape {tuple(input_shape)} is too small for {len(widths)} blocks of 2x2 pooling")
    return int(widths[-1]) if output == "avg" else int(widths[-1]) * h * w


def ResNet12(n_way: int | None = None, *, input_shape: Sequence[int] = (84, 84, 3),
             widths: Sequence[int] = (64, 160, 320, 640), output: str = "avg", negative_slope: float = 0.1,
             conv_impl: str = "auto", bn_momentum: float = 0.9, bn_epsilon: float = 1e-5, rngs=None):
    """ResNet-12 as an NNX module (see the module docstring).

    Submodules ``block_0 ... block_3`` (``conv1..3``, ``bn1..3``,
    ``shortcut_conv``, ``shortcut_bn``) and, with ``n_way``, a linear ``head``.

    Args:
      n_way: head outputs; ``None`` (default) for the embedding network alone.
      input_shape: ``(H, W, C)`` of one image. With ``output="flatten"``
        ``apply`` requires images of exactly this height and width; with
        ``"avg"`` any size works.
      widths: filters of the blocks.
      output: ``"avg"`` (global average pooling) or ``"flatten"``.
      negative_slope: LeakyReLU slope (0.1).
      conv_impl: one of :data:`jmeta.ops.CONV_IMPLS`.
      bn_momentum, bn_epsilon: BatchNorm settings (Flax momentum convention).
      rngs: ``nnx.Rngs`` (default ``nnx.Rngs(0)``).
    """
    from flax import nnx

    n_way = validate.integer("n_way", n_way, min=1, optional=True)
    widths = tuple(widths)
    if not widths:
        raise ValueError("widths must hold at least one block width")
    widths = tuple(validate.integer(f"widths[{i}]", wd, min=1) for i, wd in enumerate(widths))
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
    if len(tuple(input_shape)) != 3:
        raise ValueError(f"input_shape must be (H, W, C), got {input_shape!r}")
    in_channels = int(input_shape[2])
    image_hw = (int(input_shape[0]), int(input_shape[1]))
    feat = resnet12_feature_dim(input_shape, widths=widths, output=output)
    rngs = nnx.Rngs(0) if rngs is None else rngs
    ConvLayer = conv_module()

    def act(x):
        return jax.nn.leaky_relu(x, negative_slope)

    def bn(c):
        return nnx.BatchNorm(c, momentum=bn_momentum, epsilon=bn_epsilon, rngs=rngs)

    class Block(nnx.Module):
        def __init__(self, cin, cout):
            self.conv1 = ConvLayer(cin, cout, 3, use_bias=False, impl=conv_impl, rngs=rngs)
            self.bn1 = bn(cout)
            self.conv2 = ConvLayer(cout, cout, 3, use_bias=False, impl=conv_impl, rngs=rngs)
            self.bn2 = bn(cout)
            self.conv3 = ConvLayer(cout, cout, 3, use_bias=False, impl=conv_impl, rngs=rngs)
            self.bn3 = bn(cout)
            self.shortcut_conv = ConvLayer(cin, cout, 1, use_bias=False, impl=conv_impl, rngs=rngs)
            self.shortcut_bn = bn(cout)

        def __call__(self, x):
            # BatchNorm outputs in the input's dtype: float32 running statistics (mixed precision keeps the
            # model state in float32) would promote them
            def norm(layer, y):
                return layer(y).astype(y.dtype)

            h = act(norm(self.bn1, self.conv1(x)))
            h = act(norm(self.bn2, self.conv2(h)))
            h = norm(self.bn3, self.conv3(h))
            h = act(h + norm(self.shortcut_bn, self.shortcut_conv(x)))
            return max_pool_2x2(h)

    class _ResNet12(nnx.Module):
        def __init__(self):
            cin = in_channels
            for i, cout in enumerate(widths):
                setattr(self, f"block_{i}", Block(cin, cout))
                cin = cout
            self.num_blocks = len(widths)
            self.head = nnx.Linear(feat, n_way, rngs=rngs) if n_way is not None else None

        def embed(self, x):
            x = as_float(x, self.block_0.conv1.kernel[...].dtype)
            if output == "flatten":   # the feature width depends on H and W
                check_input(x, in_channels, "ResNet12", (*image_hw, in_channels), "output='flatten'")
            else:                     # spatial mean: any image size works
                check_input(x, in_channels, "ResNet12")
            for i in range(self.num_blocks):
                x = getattr(self, f"block_{i}")(x)
            if output == "avg":
                return jnp.mean(x, axis=(1, 2))
            return x.reshape(x.shape[0], -1)

        def __call__(self, x):
            z = self.embed(x)
            return self.head(z) if self.head is not None else z

    return _ResNet12()


def resnet12(n_way: int | None = None, *, input_shape: Sequence[int] = (84, 84, 3),
             widths: Sequence[int] = (64, 160, 320, 640), output: str = "avg", negative_slope: float = 0.1,
             conv_impl: str = "auto", bn_momentum: float = 0.9, bn_epsilon: float = 1e-5, key=None):
    """ResNet-12 bridged to a pure :class:`~jmeta.models.Model` (default: the 640-d embedding).

    Example:
      >>> model = resnet12()                               # mini-ImageNet embedding for ProtoNets
      >>> learner = jmeta.algorithms.ProtoNet(model.apply, n_way=5)
    """
    from flax import nnx

    from jmeta.models.bridge import declare, from_nnx

    rngs = nnx.Rngs(0) if key is None else nnx.Rngs(params=key)
    model = from_nnx(ResNet12(n_way, input_shape=input_shape, widths=widths, output=output,
                              negative_slope=negative_slope, conv_impl=conv_impl, bn_momentum=bn_momentum,
                              bn_epsilon=bn_epsilon, rngs=rngs))
    return declare(model, input_ndim=3, head=None if n_way is None else "head")


__all__ = ["OUTPUTS", "ResNet12", "resnet12", "resnet12_feature_dim"]
