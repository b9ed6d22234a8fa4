"""Models: the pure ``apply(params, state, x, *, train)`` contract and NNX modules.

* :func:`mlp` -- the sinusoid MLP; :func:`conv4` -- MAML's Conv4 (and the ProtoNet
  embedding); :func:`resnet12` -- MetaOptNet's ResNet-12; :func:`with_per_step` --
  MAML++ per-step parameters (per-step BatchNorm).
"""

from jmeta.models.bridge import ApplyFn, Model, from_apply, from_nnx
from jmeta.models.conv import Conv2d, Conv4, conv4, conv4_feature_dim, max_pool_2x2, with_per_step
from jmeta.models.mlp import MLP, mlp
from jmeta.models.resnet import ResNet12, resnet12, resnet12_feature_dim

__all__ = ["ApplyFn", "Conv2d", "Conv4", "MLP", "Model", "ResNet12", "conv4", "conv4_feature_dim", "from_apply",
           "from_nnx", "max_pool_2x2", "mlp", "resnet12", "resnet12_feature_dim", "with_per_step"]
