"""Models: the pure ``apply(params, state, x, *, train)`` contract and NNX modules."""

from jmeta.models.bridge import ApplyFn, Model, from_apply, from_nnx
from jmeta.models.mlp import MLP, mlp

__all__ = ["ApplyFn", "MLP", "Model", "from_apply", "from_nnx", "mlp"]
