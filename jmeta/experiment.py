"""From a :class:`~jmeta.config.Config` to the objects a run needs.

:func:`build` returns an :class:`Experiment`: the model, the algorithm, the
meta-optimizer, the training sampler and the evaluation samplers (one per
shot count), and the device-resident data (``None`` for synthetic families).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import optax

from jmeta.config import Config, ConfigError

PyTree = Any


@dataclasses.dataclass
class Experiment:
    """Everything a run is made of (see :func:`build`).

    Attributes:
      model: the :class:`~jmeta.models.Model`.
      algorithm: the algorithm object.
      meta_optimizer: the optax meta-optimizer.
      train_sample: ``sample(key, num_tasks[, data])`` for meta-training.
      eval_samples: ``{shots: sample}`` for the final evaluation (held-out tasks).
      train_data: device data passed to ``train_sample`` (or ``None``).
      eval_data: device data passed to the evaluation samplers (or ``None``).
      task_kind: ``"regression"`` or ``"classification"``.
    """

    model: Any
    algorithm: Any
    meta_optimizer: optax.GradientTransformation
    train_sample: Callable
    eval_samples: dict
    train_data: Any = None
    eval_data: Any = None
    task_kind: str = "regression"


def build_algorithm(cfg: Config, apply: Callable, *, loss: str):
    """The algorithm object named by ``cfg.algorithm.name``."""
    from jmeta import algorithms as A

    a = cfg.algorithm
    inner = None
    if a.inner_optimizer == "adam":
        inner = optax.scale_by_adam(eps_root=1e-8)
    common = dict(apply=apply, loss=loss, inner_lr=a.inner_lr, num_steps=a.inner_steps, eval_steps=a.eval_steps,
                  inner_transform=inner, remat=None if a.remat == "none" else a.remat, bn_mode=a.bn_mode)
    adapt = tuple(a.adapt_params) if isinstance(a.adapt_params, (list, tuple)) else a.adapt_params
    if a.name in ("maml", "fomaml", "metasgd", "mamlpp", "anil"):
        learn_lr = a.learn_lr
        if a.name == "metasgd" and learn_lr is None:
            learn_lr = "per_param"
        if a.name == "mamlpp" and learn_lr is None:
            learn_lr = "per_layer_per_step"
        if a.name == "anil" and adapt is None:
            raise ConfigError("algorithm.adapt_params must name the head's parameters for anil "
                              "(e.g. 'layers_2' for the MLP, 'head' for conv4)")
        return A.GradientLearner(**common, first_order=a.first_order or a.name == "fomaml", learn_lr=learn_lr,
                                 adapt_params=adapt, multi_step_loss=a.multi_step_loss or a.name == "mamlpp",
                                 msl_anneal_steps=a.msl_anneal_steps)
    if a.name == "reptile":
        return A.Reptile(**common, adapt_params=adapt)
    extra = _extra_algorithm(cfg, apply, loss)
    if extra is not None:
        return extra
    raise ConfigError(f"algorithm.name={a.name!r} is not available in this build of jmeta")


def _extra_algorithm(cfg: Config, apply, loss):
    """Algorithms that live in optional modules (metric/closed-form heads, iMAML, Meta-LSTM)."""
    import importlib

    a = cfg.algorithm
    table = {"protonet": ("jmeta.algorithms.protonet", "ProtoNet")}
    if a.name not in table:
        return None
    mod, cls = table[a.name]
    try:
        klass = getattr(importlib.import_module(mod), cls)
    except (ImportError, AttributeError):
        return None
    return klass(apply=apply, n_way=cfg.task.n_way)


def build_meta_optimizer(cfg: Config) -> optax.GradientTransformation:
    t = cfg.train
    if t.meta_optimizer == "adam":
        return optax.adam(t.meta_lr)
    return optax.sgd(t.meta_lr)


def build(cfg: Config, *, data_dir=None) -> Experiment:
    """Builds the :class:`Experiment` described by ``cfg``."""
    if cfg.task.family == "sinusoid":
        return _build_sinusoid(cfg)
    return _build_images(cfg, data_dir=data_dir)


def _build_sinusoid(cfg: Config) -> Experiment:
    from jmeta.models import mlp
    from jmeta.tasks import Sinusoid

    if cfg.model.name != "mlp":
        raise ConfigError(f"task.family='sinusoid' needs model.name='mlp', got {cfg.model.name!r}")
    model = mlp(1, tuple(cfg.model.hidden), 1, activation=cfg.model.activation)
    algo = build_algorithm(cfg, model.apply, loss="mse")
    train = Sinusoid(cfg.task.k_support, cfg.task.k_query)
    evals = {k: Sinusoid(k, max(cfg.task.k_query, 10)).sample for k in cfg.eval.shots}
    return Experiment(model, algo, build_meta_optimizer(cfg), train.sample, evals, task_kind="regression")


def _build_images(cfg: Config, *, data_dir=None) -> Experiment:
    raise ConfigError(f"task.family={cfg.task.family!r}: image families are not wired into the command line "
                      f"in this build; valid: ['sinusoid']")
