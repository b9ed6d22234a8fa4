"""From a :class:`~jmeta.run.config.Config` to the objects a run needs.

:func:`build` returns an :class:`Experiment`: the model, the algorithm, the
meta-optimizer, the training sampler and the evaluation samplers (one per
shot count), and the device-resident data (``None`` for synthetic families).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable

import optax

from jmeta.run.config import Config, ConfigError

PyTree = Any


@dataclasses.dataclass
class Experiment:
    """Everything a run is made of (see :func:`build`).

    Attributes:
      model: the :class:`~jmeta.models.Model`.
      algorithm: the algorithm object.
      meta_optimizer: the optax meta-optimizer.
      train_sample: ``sample(key, num_tasks, data)`` for meta-training.
      eval_samples: ``{shots: sample}`` for the final evaluation (held-out tasks).
      train_data: device data passed to ``train_sample`` (or ``None``).
      eval_data: device data passed to the evaluation samplers (or ``None``).
      task_kind: ``"regression"`` or ``"classification"``.
      eval_algorithm: the algorithm used for evaluation (differs from
        ``algorithm`` when a metric head tests with fewer ways than it trains).
      task_parallel: the resolved ``task_parallel`` for this backend and model.
      conv_impl: the convolution form the image model was built with (``None``
        for models without convolutions).
    """

    model: Any
    algorithm: Any
    meta_optimizer: optax.GradientTransformation
    train_sample: Callable
    eval_samples: dict
    train_data: Any = None
    eval_data: Any = None
    task_kind: str = "regression"
    eval_algorithm: Any = None
    task_parallel: Any = "vmap"
    conv_impl: str | None = None

    def __post_init__(self):
        if self.eval_algorithm is None:
            self.eval_algorithm = self.algorithm


def build_algorithm(cfg: Config, apply: Callable, *, loss: str, n_way: int | None = None,
                    conv_impl: str | None = None):
    """The algorithm object named by ``cfg.algorithm.name`` (a value it refuses: :class:`ConfigError`).

    ``conv_impl`` is the resolved convolution form of ``apply`` (``None``: no
    convolutions); iMAML needs it because ``custom_vjp`` forms have no forward mode.

    It is the registry entry's constructor with the config's options and the wiring (the model's ``apply``, the
    loss, the ways, ``eval.steps``, the inner transform); :meth:`jmeta.run.registry.Entry.build` turns the
    constructor's ``ValueError``/``TypeError`` into the :class:`ConfigError`.
    """
    from jmeta.run.registry import algorithm_wiring

    a = cfg.algorithm
    if a.name in HEAD_ALGORITHMS and loss != "cross_entropy":
        raise ConfigError(f"algorithm.name={a.name!r} is a classification head; task.family must be "
                          f"'omniglot' or 'miniimagenet'")
    wiring = algorithm_wiring(a.entry, apply=apply, loss=loss,
                              n_way=cfg.task.get("n_way") if n_way is None else n_way,
                              eval_steps=cfg.eval.steps or a.num_steps if a.name == "meta-lstm" else cfg.eval.steps,
                              inner_optimizer=a.get("inner_optimizer", "sgd"), conv_impl=conv_impl)
    return a.entry.build(a.options, **wiring)


# Algorithms whose model is an embedding (no classification layer): the head is fitted per task.
HEAD_ALGORITHMS = ("protonet", "r2d2", "metaoptnet-svm", "metaoptnet-rr")


def build_algorithms(cfg: Config, apply: Callable, *, loss: str, conv_impl: str | None = None):
    """``(algorithm, eval_algorithm)`` of ``cfg``: the same object unless ``eval.n_way`` differs from
    ``task.n_way`` (a metric head testing with other ways than it trains), then one built for ``eval.n_way``."""
    algo = build_algorithm(cfg, apply, loss=loss, conv_impl=conv_impl)
    train_way = cfg.task.get("n_way")
    eval_way = cfg.eval.n_way or train_way
    if eval_way == train_way:
        return algo, algo
    return algo, build_algorithm(cfg, apply, loss=loss, n_way=eval_way, conv_impl=conv_impl)


def adapts_conv_kernels(cfg: Config, params) -> bool:
    """Whether ``cfg``'s algorithm adapts convolution kernels per task (so tasks hold different kernels).

    False for the metric and closed-form heads (the embedding is shared) and for an ``adapt_params``
    selection without a convolution kernel (ANIL's head); a kernel is a 4-d parameter (HWIO).
    """
    import jax

    from jmeta.algorithms.base import make_param_filter

    if cfg.algorithm.name in HEAD_ALGORITHMS:
        return False
    spec = cfg.algorithm.get("adapt_params")
    pred = make_param_filter(tuple(spec) if isinstance(spec, list) else spec)
    return any(getattr(leaf, "ndim", 0) == 4 and (pred is None or pred(jax.tree_util.keystr(path, simple=True, separator="/")))
               for path, leaf in jax.tree_util.tree_leaves_with_path(params))


def build_meta_optimizer(cfg: Config) -> optax.GradientTransformation:
    """The meta-optimizer of ``cfg.train``, with its learning-rate schedule and weight decay."""
    t = cfg.train
    lr = t.meta_lr
    if t.lr_boundaries:
        lr = optax.piecewise_constant_schedule(t.meta_lr, {int(b): float(v) for b, v in
                                                           zip(t.lr_boundaries, t.lr_scales)})
    elif t.lr_decay_every:
        lr = optax.exponential_decay(t.meta_lr, t.lr_decay_every, t.lr_decay, staircase=True)
    elif t.lr_cosine:
        lr = optax.cosine_decay_schedule(t.meta_lr, max(t.steps, 1), alpha=t.lr_min / t.meta_lr)
    if t.meta_optimizer == "adam":
        opt = optax.adam(lr)
    elif t.meta_optimizer == "sgd":
        opt = optax.sgd(lr)
    else:
        opt = optax.sgd(lr, momentum=0.9, nesterov=t.meta_optimizer == "nesterov")
    if t.weight_decay:
        opt = optax.chain(optax.add_decayed_weights(t.weight_decay), opt)
    if t.grad_clip:
        opt = optax.chain(optax.clip_by_global_norm(t.grad_clip), opt)
    return opt


@contextlib.contextmanager
def _as_config_error(section: str):
    """Turns the ValueError/TypeError a model or algorithm constructor raises for a bad value into a
    :class:`ConfigError` naming the config section (the constructors' messages name the argument)."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{section}: {e}") from e


def build(cfg: Config, *, data_dir=None) -> Experiment:
    """Builds the :class:`Experiment` described by ``cfg``.

    Raises:
      ConfigError: a value the model or the algorithm refuses, or an
        ``algorithm.adapt_params`` that selects none of the model's parameters.
    """
    from jmeta.run import rl

    if rl.is_rl(cfg):  # an environment, a policy and a meta-RL algorithm
        return rl.build(cfg)
    exp = _build_sinusoid(cfg) if cfg.task.family == "sinusoid" else _build_images(cfg, data_dir=data_dir)
    adapt = cfg.algorithm.get("adapt_params")
    if adapt is not None:
        from jmeta.algorithms.base import make_param_filter, partition

        with _as_config_error(f"algorithm.adapt_params={adapt!r}"):
            partition(exp.model.params, make_param_filter(tuple(adapt) if isinstance(adapt, list) else adapt))
    return exp


def load_run(run_dir, *, cfg: Config | None = None, step: int | None = None, data_dir=None):
    """Restores a run folder written by ``jmeta train``: ``(cfg, experiment, train_state)`` (a meta-RL run: a
    :class:`jmeta.run.rl.RLExperiment` and the algorithm's training state).

    Args:
      run_dir: the run folder (``config.json`` and ``checkpoints/``).
      cfg: the config to build with (default: the folder's ``config.json``); pass a
        modified copy to evaluate differently (more tasks, more steps).
      step: the checkpoint's meta-step (default: the newest intact one: a newer checkpoint that fails its
        checksum or does not match ``cfg``'s shapes is named in a
        :class:`~jmeta.train.checkpoint.CheckpointWarning` and skipped).
      data_dir: where the image datasets are (default: ``$JMETA_DATA_DIR``/the cache).

    Raises:
      FileNotFoundError: the folder has no ``config.json``.
      jmeta.train.checkpoint.CheckpointError: no intact checkpoint; or ``step`` does not exist (the message
        names the available steps) or fails its check.
    """
    import pathlib

    from jmeta.run import config as C
    from jmeta.run.checkpoint import CheckpointError, Checkpointer
    from jmeta.train.keys import run_keys
    from jmeta.train.step import init_train_state

    run = pathlib.Path(run_dir)
    if not (run / "config.json").is_file():
        raise FileNotFoundError(f"{run}: no config.json there (not a jmeta run folder)")
    if cfg is None:
        cfg = C.load(str(run))
    if not (run / "checkpoints").is_dir():  # before building (datasets) and without creating the folder
        raise CheckpointError(f"no checkpoint found in {run / 'checkpoints'}")
    from jmeta.run.registry import is_rl

    _, _, k_init = run_keys(cfg.train.seed)
    exp = build(cfg, data_dir=data_dir)
    restore = None
    if is_rl(cfg):  # meta-RL: the algorithm's own training state (jmeta.run.rl)
        from jmeta.run.checkpoint import uncommitted

        template = exp.init_state(k_init)
        restore = uncommitted  # as a fresh state: compiled programs are reused
    else:
        template = init_train_state(exp.algorithm, exp.model.params, exp.model.state, exp.meta_optimizer, key=k_init)
    ck = Checkpointer(run / "checkpoints", keep=cfg.train.keep_checkpoints)
    try:
        state = ck.restore(step, template)
        if restore is not None:
            state = restore(state)
    finally:
        ck.close()
    return cfg, exp, state


def _build_sinusoid(cfg: Config) -> Experiment:
    if cfg.model.name != "mlp":
        raise ConfigError(f"task.family='sinusoid' needs model.name='mlp', got {cfg.model.name!r}")
    model = cfg.model.entry.build(cfg.model.options, in_features=1, out_features=1)
    algo = build_algorithm(cfg, model.apply, loss="mse")
    t = cfg.task
    train = t.entry.build(t.options)
    eval_query = cfg.eval.k_query or max(t.k_query, 10)  # 0: at least 10 query points
    evals = {k: t.entry.build({**t.options, "k_support": k, "k_query": eval_query}).sample for k in cfg.eval.shots}
    tp = cfg.train.task_parallel
    return Experiment(model, algo, build_meta_optimizer(cfg), train.sample, evals, task_kind="regression",
                      task_parallel="vmap" if tp == "auto" else tp)


# Per-channel normalisation of mini-ImageNet (MetaOptNet's constants); Omniglot is only scaled to [0, 1].
MINIIMAGENET_MEAN = (120.39586422 / 255.0, 115.59361427 / 255.0, 104.54012653 / 255.0)
MINIIMAGENET_STD = (70.68188272 / 255.0, 68.27635443 / 255.0, 72.54505529 / 255.0)


def load_image_data(cfg: Config, *, data_dir=None):
    """``(train_store, eval_store)`` of an image family as :class:`~jmeta.data.ClassStore` (host arrays).

    The two never share a class: Omniglot's ``"val"`` characters are the last
    100 of its 1,200 training characters, so evaluating on ``"val"`` meta-trains
    on the other 1,100 (``"train_minus_val"``).
    """
    t = cfg.task
    if t.family == "omniglot":
        from jmeta.data import load_omniglot

        split = "train_minus_val" if cfg.eval.split == "val" else "train"
        train = load_omniglot(split, data_dir=data_dir, image_size=t.image_size, rotations=t.rotations)
        held = load_omniglot(cfg.eval.split, data_dir=data_dir, image_size=t.image_size)
    elif t.family == "miniimagenet":
        from jmeta.data import load_miniimagenet

        from jmeta.data.errors import PickleNotAllowedError

        try:
            train = load_miniimagenet("train", data_dir=data_dir, image_size=t.image_size,
                                      allow_pickle=t.allow_pickle)
            held = load_miniimagenet(cfg.eval.split, data_dir=data_dir, image_size=t.image_size,
                                     allow_pickle=t.allow_pickle)
        except PickleNotAllowedError as e:  # name the config key and the flag, not the loader's argument
            raise PickleNotAllowedError(
                f"the mini-ImageNet data {e.path} is a pickle; unpickling can execute arbitrary code, so it needs "
                f"the explicit opt-in `jmeta train --allow-pickle` (config key task.allow_pickle=true), only for "
                f"a file you trust; or convert it once to an .npz (jmeta.data.load_miniimagenet's docs)",
                path=e.path) from None
    else:
        raise ConfigError(f"task.family={t.family!r} is not an image family; valid: ['omniglot', 'miniimagenet']")
    return train, held


def _build_images(cfg: Config, *, data_dir=None) -> Experiment:
    import jax

    from jmeta.ops import recommended_conv_impl, recommended_task_parallel, resolve_conv_impl
    from jmeta.tasks.episodes import EpisodeSampler, put_on_device

    t, a = cfg.task, cfg.algorithm
    train_store, eval_store = load_image_data(cfg, data_dir=data_dir)
    eval_way = cfg.eval.n_way or t.n_way
    eval_query = cfg.eval.k_query or t.k_query
    head = a.name in HEAD_ALGORITHMS
    if not head and eval_way != t.n_way:
        raise ConfigError(f"eval.n_way={eval_way} must equal task.n_way={t.n_way} for {a.name!r} (its model has "
                          f"an {t.n_way}-way output layer)")
    for name, way, store in (("task.n_way", t.n_way, train_store), ("eval.n_way", eval_way, eval_store)):
        if way > store.num_classes:
            raise ConfigError(f"{name}={way} exceeds the {store.num_classes} classes of {store.name}")
    for name, need, store in (("task.k_support + task.k_query", t.k_support + t.k_query, train_store),
                              ("eval shots + eval query", max(cfg.eval.shots) + eval_query, eval_store)):
        if need > store.num_per_class:
            raise ConfigError(f"{name}={need} exceeds the {store.num_per_class} examples per class of {store.name}")
    shape = tuple(train_store.image_shape)
    norm = {}
    if t.family == "miniimagenet":
        norm = dict(mean=MINIIMAGENET_MEAN, std=MINIIMAGENET_STD)
    out_way = None if head else t.n_way
    key = jax.random.key(cfg.train.seed)
    if cfg.model.name == "resnet12" and a.get("bn_mode") == "per_step":
        raise ConfigError("algorithm.bn_mode='per_step' is implemented for model.name='conv4' only")

    def make_model(conv_impl):
        if cfg.model.name not in ("conv4", "resnet12"):
            raise ConfigError(f"model.name={cfg.model.name!r} cannot classify images; valid: ['conv4', 'resnet12']")
        wiring = dict(n_way=out_way, input_shape=shape, key=key)
        if cfg.model.name == "conv4":
            wiring["per_step_bn"] = a.num_steps if a.get("bn_mode") == "per_step" else None
        return cfg.model.entry.build({**cfg.model.options, "conv_impl": conv_impl}, **wiring)

    conv_impl = cfg.model.conv_impl
    model = make_model(conv_impl)
    if conv_impl == "auto":
        # The form depends on whether the kernels are adapted per task; the parameters are the same for every
        # form (same key), so a model built with another form replaces this one.
        conv_impl = recommended_conv_impl(adapts_conv_kernels(cfg, model.params))
        if conv_impl != resolve_conv_impl("auto"):
            model = make_model(conv_impl)
    conv_impl = resolve_conv_impl(conv_impl)
    algo, eval_algo = build_algorithms(cfg, model.apply, loss="cross_entropy", conv_impl=conv_impl)
    train_sampler = EpisodeSampler(t.n_way, t.k_support, t.k_query, **norm)

    train_sample = train_sampler.sample  # sample(key, num_tasks, images)
    evals = {shots: EpisodeSampler(eval_way, shots, eval_query, **norm).sample for shots in cfg.eval.shots}
    tp = cfg.train.task_parallel
    if tp == "auto" and recommended_task_parallel() == "map":
        tp = "map"  # convolutions on XLA:CPU: a loop over tasks beats vmap (see jmeta.ops)
    return Experiment(model, algo, build_meta_optimizer(cfg), train_sample, evals,
                      train_data=put_on_device(train_store), eval_data=put_on_device(eval_store),
                      task_kind="classification", eval_algorithm=eval_algo, task_parallel=tp,
                      conv_impl=conv_impl)
