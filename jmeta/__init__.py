"""jmeta: meta-learning in JAX.

Importing ``jmeta`` is cheap and side-effect free: subpackages load on first
attribute access, nothing touches a device, and TensorFlow is never imported.

Example:
  >>> import jax, optax, jmeta
  >>> model = jmeta.models.mlp()                     # 1-40-40-1 ReLU
  >>> maml = jmeta.MAML(model.apply, inner_lr=0.01, num_steps=1)
  >>> tasks = jmeta.tasks.Sinusoid(k_support=10, k_query=10)
  >>> opt = optax.adam(1e-3)
  >>> state = jmeta.init_train_state(maml, model.params, model.state, opt)
  >>> step = jmeta.make_meta_step(maml, tasks.sample, opt, meta_batch_size=25)
  >>> state, metrics = step(state, jax.random.key(0))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_SUBMODULES = ("algorithms", "data", "implicit", "inner", "learned_optim", "losses", "models", "ops", "rl",
               "run", "tasks", "train", "validate")

# Public names re-exported at the top level -> the module that defines them.
_EXPORTS = {
    # tasks
    "TaskBatch": "jmeta.tasks",
    "Sinusoid": "jmeta.tasks",
    "EpisodeSampler": "jmeta.tasks",
    "put_on_device": "jmeta.tasks",
    # data
    "ClassStore": "jmeta.data",
    "load_omniglot": "jmeta.data",
    "load_miniimagenet": "jmeta.data",
    # models
    "Model": "jmeta.models",
    "from_nnx": "jmeta.models",
    "from_apply": "jmeta.models",
    "conv4": "jmeta.models",
    "resnet12": "jmeta.models",
    # inner loop
    "inner_loop": "jmeta.inner",
    "scale_by_learned_lr": "jmeta.inner",
    # algorithms
    "MAML": "jmeta.algorithms",
    "FOMAML": "jmeta.algorithms",
    "MetaSGD": "jmeta.algorithms",
    "ANIL": "jmeta.algorithms",
    "MAMLPlusPlus": "jmeta.algorithms",
    "Reptile": "jmeta.algorithms",
    "GradientLearner": "jmeta.algorithms",
    "MetaLearner": "jmeta.algorithms",
    "R2D2": "jmeta.algorithms",
    "MetaOptNet": "jmeta.algorithms",
    "IMAML": "jmeta.algorithms",
    "ProtoNet": "jmeta.algorithms",
    # training
    "TrainState": "jmeta.train",
    "init_train_state": "jmeta.train",
    "make_meta_step": "jmeta.train",
    "meta_grad": "jmeta.train",
    "evaluate": "jmeta.train",
}

# Deprecated attributes -> the shim module that warns and stands for the new home (one release).
_MOVED = {"config": "jmeta.config"}

__all__ = sorted([*_EXPORTS, *_SUBMODULES, "__version__"])


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f"jmeta.{name}")
        globals()[name] = module
        return module
    if name in _MOVED:
        return importlib.import_module(_MOVED[name])
    raise AttributeError(f"module 'jmeta' has no attribute {name!r}")


def __dir__():
    return __all__


if TYPE_CHECKING:  # pragma: no cover  (kept equal to _SUBMODULES and _EXPORTS by tests/test_import.py)
    from jmeta import (algorithms, data, implicit, inner, learned_optim, losses, models, ops, rl,  # noqa: F401
                       run, tasks, train, validate)
    from jmeta.algorithms import (ANIL, FOMAML, IMAML, MAML, R2D2, GradientLearner, MAMLPlusPlus,  # noqa: F401
                                  MetaLearner, MetaOptNet, MetaSGD, ProtoNet, Reptile)
    from jmeta.data import ClassStore, load_miniimagenet, load_omniglot  # noqa: F401
    from jmeta.inner import inner_loop, scale_by_learned_lr  # noqa: F401
    from jmeta.models import Model, conv4, from_apply, from_nnx, resnet12  # noqa: F401
    from jmeta.tasks import EpisodeSampler, Sinusoid, TaskBatch, put_on_device  # noqa: F401
    from jmeta.train import TrainState, evaluate, init_train_state, make_meta_step, meta_grad  # noqa: F401
