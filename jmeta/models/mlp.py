"""Multi-layer perceptrons (Flax NNX)."""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from jmeta import validate


#: The activations an MLP takes by name (the config's ``model.activation`` choices).
ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "gelu": jax.nn.gelu}


def _activation(name: str | Callable) -> Callable:
    if callable(name):
        return name
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)} or a callable, got {name!r}")
    return ACTIVATIONS[name]


def MLP(in_features: int, hidden: Sequence[int], out_features: int, *,
        activation: str | Callable = "relu", rngs=None):
    """A fully connected network as an NNX module.

    Layers are named ``layers_0 ... layers_{n}``; the last one is the head
    (:func:`mlp` declares it, so ANIL's default ``adapt_params="head"`` adapts
    ``layers_{n}``; for the bare module pass ``adapt_params="layers_{n}"``).

    Args:
      in_features: input width (a positive int).
      hidden: hidden widths (positive ints), e.g. ``(40, 40)`` for the sinusoid network of
        Finn et al. (2017).
      out_features: output width.
      activation: ``"relu"``, ``"tanh"``, ``"sigmoid"``, ``"gelu"`` or a callable.
      rngs: ``nnx.Rngs`` (default ``nnx.Rngs(0)``).
    """
    from flax import nnx

    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise ValueError(f"hidden must be a sequence of positive integers (hidden widths), got {hidden!r}")
    in_features = validate.integer("in_features", in_features, min=1)
    out_features = validate.integer("out_features", out_features, min=1)
    hidden = tuple(validate.integer(f"hidden[{i}]", h, min=1) for i, h in enumerate(hidden))
    act = _activation(activation)
    rngs = nnx.Rngs(0) if rngs is None else rngs
    widths = [in_features, *hidden, out_features]

    class _MLP(nnx.Module):
        def __init__(self):
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
                setattr(self, f"layers_{i}", nnx.Linear(a, b, rngs=rngs))
            self.num_layers = len(widths) - 1

        def __call__(self, x):
            for i in range(self.num_layers):
                x = getattr(self, f"layers_{i}")(x)
                if i < self.num_layers - 1:
                    x = act(x)
            return x

    return _MLP()


def mlp(in_features: int = 1, hidden: Sequence[int] = (40, 40), out_features: int = 1, *,
        activation: str | Callable = "relu", key=None):
    """An MLP bridged to a pure :class:`~jmeta.models.Model` (default: 1-40-40-1 ReLU).

    Its examples are vectors (``input_ndim=1``) and its head is the last layer ``layers_{len(hidden)}``
    (declared on ``apply``: see :func:`jmeta.models.bridge.declare`).
    """
    from flax import nnx

    from jmeta.models.bridge import declare, from_nnx

    seed = 0
    rngs = nnx.Rngs(seed) if key is None else nnx.Rngs(params=key)
    module = MLP(in_features, hidden, out_features, activation=activation, rngs=rngs)
    return declare(from_nnx(module), input_ndim=1, head=f"layers_{module.num_layers - 1}")
