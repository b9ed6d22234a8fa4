"""Typed experiment configs, presets by name, and command-line overrides.

Every run is described by one :class:`Config` (nested dataclasses). A run
folder stores the resolved config as ``config.json``; ``jmeta train --config
RUN_DIR/config.json`` reproduces the run. Presets are named configs
(``jmeta train --config sinusoid-maml``); ``--set section.key=value``
overrides any field (values parse as JSON, else as strings):

    jmeta train --config sinusoid-maml --set algorithm.inner_lr=0.02 --set train.steps=5000
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable

from jmeta import validate as _validate


class ConfigError(ValueError):
    """A config key or value that is not valid; the message names it and the valid choices."""


@dataclasses.dataclass
class TaskConfig:
    """The task family.

    Attributes:
      family: ``"sinusoid"``, ``"omniglot"`` or ``"miniimagenet"``.
      k_support: support examples (per class for classification).
      k_query: query examples (per class for classification).
      n_way: classes per episode (classification).
      rotations: Omniglot rotation augmentation as extra classes.
      image_size: image side length (classification).
      allow_pickle: allow loading mini-ImageNet from a pickle
        (``mini-imagenet-cache-*.pkl``) when no zip or npz is there; unpickling
        can run arbitrary code, so only for files you trust
        (``jmeta train --allow-pickle``).
    """

    family: str = "sinusoid"
    k_support: int = 10
    k_query: int = 10
    n_way: int = 5
    rotations: bool = True
    image_size: int = 28
    allow_pickle: bool = False


@dataclasses.dataclass
class ModelConfig:
    """The model: ``"mlp"`` (hidden widths, activation), ``"conv4"`` or ``"resnet12"``.

    ``conv_impl`` (image models): the convolution form, one of
    :data:`jmeta.ops.CONV_IMPLS`; ``"auto"`` picks per backend and per algorithm
    (per-task or shared kernels, :func:`jmeta.ops.recommended_conv_impl`).
    """

    name: str = "mlp"
    hidden: tuple = (40, 40)
    activation: str = "relu"
    filters: int = 64
    pool: str = "max"
    conv_impl: str = "auto"


@dataclasses.dataclass
class AlgorithmConfig:
    """The meta-learning algorithm and its inner loop.

    Attributes:
      name: one of :data:`ALGORITHMS`. ``"mamlpp"`` is MAML with MAML++'s
        options on: the multi-step loss always, ``learn_lr`` defaulting to
        ``"per_layer_per_step"`` (for ablations of single components use
        ``"maml"`` with ``multi_step_loss``/``learn_lr``/``bn_mode``);
        ``"metasgd"`` defaults ``learn_lr`` to ``"per_param"``. Options of the
        MAML inner loop set for an algorithm without one are refused.
      inner_lr: inner learning rate (initial value when learned).
      inner_steps: inner steps during meta-training.
      eval_steps: inner steps at evaluation; an override of it or of
        ``eval.steps`` sets both (the evaluation, ``jmeta eval`` and
        ``jmeta export`` adapt ``eval.steps`` steps).
      first_order: drop second-order terms.
      inner_optimizer: ``"sgd"`` or ``"adam"`` (Adam with ``eps_root=1e-8``).
      learn_lr: ``None`` or a learned-lr kind (``"scalar"``, ``"per_layer"``,
        ``"per_param"``, ``"per_layer_per_step"``).
      adapt_params: parameter path prefix(es) the inner loop adapts (ANIL), or ``None`` for all.
      remat: ``None``, ``"full"``, ``"dots"``, ``"dots_no_batch"``.
      multi_step_loss: MAML++ multi-step loss.
      msl_anneal_steps: meta-steps over which the multi-step loss anneals.
      bn_mode: ``"batch"``, ``"frozen"`` or ``"per_step"`` (MAML++ per-step
        BatchNorm; conv4 only).
      reg_lambda: iMAML's proximal regulariser lambda.
      cg_steps: iMAML's conjugate-gradient steps.
      svm_c: MetaOptNet-SVM's C.
      label_smoothing: label smoothing of the query loss (closed-form heads).
    """

    name: str = "maml"
    inner_lr: float = 0.01
    inner_steps: int = 1
    eval_steps: int = 10
    first_order: bool = False
    inner_optimizer: str = "sgd"
    learn_lr: Any = None
    adapt_params: Any = None
    remat: Any = None
    multi_step_loss: bool = False
    msl_anneal_steps: int = 10_000
    bn_mode: str = "batch"
    reg_lambda: float = 2.0
    cg_steps: int = 5
    svm_c: float = 0.1
    label_smoothing: float = 0.0


@dataclasses.dataclass
class TrainConfig:
    """Meta-training.

    Attributes:
      steps: meta-steps.
      meta_batch_size: tasks per meta-step.
      meta_optimizer: ``"adam"``, ``"sgd"``, ``"momentum"`` (0.9) or
        ``"nesterov"`` (0.9, as MetaOptNet).
      meta_lr: meta learning rate.
      weight_decay: L2 weight decay added to the meta-gradient (MetaOptNet: 5e-4).
      lr_decay_every, lr_decay: multiply the meta learning rate by
        ``lr_decay`` every ``lr_decay_every`` meta-steps (0: never; ProtoNets
        halve it every 2,000 episodes).
      lr_boundaries, lr_scales: piecewise-constant schedule: at meta-step
        ``lr_boundaries[i]`` the learning rate is multiplied by ``lr_scales[i]``.
      lr_cosine, lr_min: cosine annealing of the meta learning rate from
        ``meta_lr`` to ``lr_min`` over ``steps`` (MAML++: ``lr_min`` 1e-5).
      grad_clip: clip the meta-gradient to this global norm before the
        meta-optimizer (0: no clipping; the Meta-LSTM's code uses 0.25).
      seed: the run's seed (tasks, evaluation, and the initialisation of
        image models; the sinusoid MLP's initialisation is fixed, key 0, so
        that seeds share one program in a vectorised sweep).
      log_every: meta-steps between metric records.
      checkpoint_every: meta-steps between checkpoints (0: only at the end).
      keep_checkpoints: how many checkpoints to keep.
      task_parallel: ``"vmap"``, ``"map"`` or a chunk size.
      on_nan: ``"stop"`` (stop with a message) or ``"skip"`` (drop that update).
      deterministic: run XLA:GPU's deterministic operations (no autotuning, no
        atomics), so that a GPU run is a function of its seed; ``jmeta`` sets
        the flag before JAX starts (:mod:`jmeta.train.determinism`). Nothing
        changes on the CPU. ``false`` trades reproducibility for speed.
    """

    steps: int = 70_000
    meta_batch_size: int = 25
    meta_optimizer: str = "adam"
    meta_lr: float = 1e-3
    weight_decay: float = 0.0
    lr_decay_every: int = 0
    lr_decay: float = 0.5
    lr_boundaries: tuple = ()
    lr_scales: tuple = ()
    lr_cosine: bool = False
    lr_min: float = 0.0
    grad_clip: float = 0.0
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 5_000
    keep_checkpoints: int = 3
    task_parallel: Any = "vmap"
    on_nan: str = "stop"
    deterministic: bool = True


@dataclasses.dataclass
class EvalConfig:
    """Final evaluation: ``num_tasks`` held-out tasks for each shot count, curves over ``steps``.

    Attributes:
      split: the held-out split of an image family (``"test"`` or ``"val"``).
        Omniglot meta-trains on 1,100 characters with ``"val"`` (its 100
        validation characters are part of the usual 1,200 training ones).
      n_way: classes per evaluation episode (0: ``task.n_way``; metric and
        closed-form heads may train with more ways than they test).
      k_query: query examples per class of evaluation episodes (0: ``task.k_query``);
        sinusoid: query points per evaluation task (0: ``max(task.k_query, 10)``).
    """

    split: str = "test"
    n_way: int = 0
    k_query: int = 0
    num_tasks: int = 600
    shots: tuple = (5, 10)
    steps: int = 10
    report_steps: tuple = (1, 10)
    batch_size: int = 100


@dataclasses.dataclass
class Config:
    """A whole experiment."""

    name: str = "sinusoid-maml"
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = dataclasses.field(default_factory=AlgorithmConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


ALGORITHMS = ("maml", "fomaml", "metasgd", "anil", "reptile", "mamlpp", "protonet", "r2d2", "metaoptnet-svm",
              "metaoptnet-rr", "imaml", "meta-lstm")
FAMILIES = ("sinusoid", "omniglot", "miniimagenet")
MODELS = ("mlp", "conv4", "resnet12")

_SECTIONS = {"task": TaskConfig, "model": ModelConfig, "algorithm": AlgorithmConfig, "train": TrainConfig,
             "eval": EvalConfig}


#: The largest integer a config holds: step counters and task indices are int32 on the device.
MAX_INT = 2**31 - 1


def _integer(name: str, value, *, min: int | None = None, max: int | None = MAX_INT) -> int:
    """``value`` as an ``int`` in ``[min, MAX_INT]`` (an integral float such as ``1e3`` is accepted), or a
    :class:`ConfigError` naming the key."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        return _validate.integer(name, value, min=min, max=max)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _number(name: str, value) -> float:
    """``value`` as a finite ``float`` (NaN and infinities are refused: ``config.json`` could not hold them)."""
    try:
        return _validate.number(name, value)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _all_ok(check, values, **bounds) -> bool:
    """Whether every value passes ``check`` (:func:`jmeta.validate.integer` or ``number``) with ``bounds``."""
    try:
        for v in values:
            check("value", v, **bounds)
    except ValueError:
        return False
    return True


def check_name(name) -> str:
    """A run name: non-empty, no path separators, not ``.`` or ``..`` (it names a folder under ``runs/``)."""
    if not isinstance(name, str) or not name.strip() or name in (".", "..") or "\0" in name \
            or any(sep in name for sep in ("/", "\\")):
        raise ConfigError(f"name must be a plain name (no '/' or '\\', not '.' or '..'): it names the run folder "
                          f"under runs/; got {name!r}")
    return name


def _coerce(section: str, field: dataclasses.Field, value):
    name = f"{section}.{field.name}"
    default = field.default if field.default is not dataclasses.MISSING else None
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        return _integer(name, value, max=None if name == "train.seed" else MAX_INT)  # validate() bounds the seed
    if isinstance(default, float):
        return _number(name, value)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return tuple(value)
    if isinstance(default, str) and field.name not in ("task_parallel",):
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    if isinstance(value, list):
        return tuple(value)
    return value


def from_dict(d: dict) -> Config:
    """Builds a :class:`Config` from a (possibly partial) nested dict, validating every key."""
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a JSON object, got {type(d).__name__}")
    unknown = set(d) - {"name", *_SECTIONS}
    if unknown:
        raise ConfigError(f"unknown config section(s) {sorted(unknown)}; valid: {['name', *_SECTIONS]}")
    cfg = Config()
    if "name" in d:
        cfg.name = check_name(str(d["name"]))
    for section, cls in _SECTIONS.items():
        sub = d.get(section, {})
        if not isinstance(sub, dict):
            raise ConfigError(f"config section {section!r} must be an object, got {sub!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        bad = set(sub) - set(fields)
        if bad:
            raise ConfigError(f"unknown key(s) {sorted(f'{section}.{b}' for b in bad)}; valid keys of {section}: "
                              f"{sorted(fields)}")
        obj = getattr(cfg, section)
        for k, v in sub.items():
            setattr(obj, k, _coerce(section, fields[k], v))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> Config:
    """Checks values that have a fixed set of choices or a range; raises :class:`ConfigError`."""
    def choice(name, value, valid):
        if value not in valid:
            raise ConfigError(f"{name} must be one of {list(valid)}, got {value!r}")

    def at_least(name, value, lo):
        if value < lo:
            raise ConfigError(f"{name} must be >= {lo}, got {value!r}")

    choice("task.family", cfg.task.family, FAMILIES)
    choice("model.name", cfg.model.name, MODELS)
    choice("algorithm.name", cfg.algorithm.name, ALGORITHMS)
    choice("algorithm.inner_optimizer", cfg.algorithm.inner_optimizer, ("sgd", "adam"))
    choice("algorithm.bn_mode", cfg.algorithm.bn_mode, ("batch", "frozen", "per_step"))
    choice("eval.split", cfg.eval.split, ("test", "val"))
    choice("algorithm.remat", cfg.algorithm.remat, (None, "none", "full", "dots", "dots_no_batch"))
    choice("algorithm.learn_lr", cfg.algorithm.learn_lr,
           (None, "scalar", "per_layer", "per_param", "per_layer_per_step", "per_param_per_step"))
    choice("train.meta_optimizer", cfg.train.meta_optimizer, ("adam", "sgd", "momentum", "nesterov"))
    if len(cfg.train.lr_boundaries) != len(cfg.train.lr_scales):
        raise ConfigError(f"train.lr_boundaries and train.lr_scales must have the same length, got "
                          f"{list(cfg.train.lr_boundaries)} and {list(cfg.train.lr_scales)}")
    if not _all_ok(_validate.integer, cfg.train.lr_boundaries, min=1, max=MAX_INT):
        raise ConfigError(f"train.lr_boundaries must be positive integers, got {list(cfg.train.lr_boundaries)}")
    if not _all_ok(_validate.number, cfg.train.lr_scales, min=0, min_open=True):
        raise ConfigError(f"train.lr_scales must be positive finite numbers, got {list(cfg.train.lr_scales)}")
    if cfg.train.lr_cosine and (cfg.train.lr_boundaries or cfg.train.lr_decay_every):
        raise ConfigError("train.lr_cosine is a schedule of its own: leave train.lr_boundaries and "
                          "train.lr_decay_every unset with it")
    if not 0 <= cfg.train.lr_min < cfg.train.meta_lr:
        raise ConfigError(f"train.lr_min must be in [0, train.meta_lr={cfg.train.meta_lr}), got {cfg.train.lr_min!r}")
    if not cfg.train.lr_decay > 0:
        raise ConfigError(f"train.lr_decay must be > 0, got {cfg.train.lr_decay!r}")
    if cfg.train.weight_decay < 0:
        raise ConfigError(f"train.weight_decay must be >= 0, got {cfg.train.weight_decay!r}")
    if not cfg.train.grad_clip >= 0:
        raise ConfigError(f"train.grad_clip must be >= 0 (0: no clipping), got {cfg.train.grad_clip!r}")
    if cfg.algorithm.name == "meta-lstm" and cfg.algorithm.bn_mode not in ("batch", "frozen"):
        raise ConfigError(f"algorithm.bn_mode must be 'batch' or 'frozen' for meta-lstm, got "
                          f"{cfg.algorithm.bn_mode!r}")
    for name, v in (("algorithm.reg_lambda", cfg.algorithm.reg_lambda), ("algorithm.svm_c", cfg.algorithm.svm_c)):
        if not v > 0:
            raise ConfigError(f"{name} must be > 0, got {v!r}")
    if not 0 <= cfg.algorithm.label_smoothing < 1:
        raise ConfigError(f"algorithm.label_smoothing must be in [0, 1), got {cfg.algorithm.label_smoothing!r}")
    if cfg.task.family == "sinusoid" and cfg.model.name != "mlp":
        raise ConfigError(f"task.family='sinusoid' needs model.name='mlp', got {cfg.model.name!r}")
    if cfg.task.family != "sinusoid" and cfg.model.name == "mlp":
        raise ConfigError(f"task.family={cfg.task.family!r} needs model.name 'conv4' or 'resnet12', got 'mlp'")
    choice("train.on_nan", cfg.train.on_nan, ("stop", "skip"))
    tp = cfg.train.task_parallel
    if not (isinstance(tp, str) and tp in ("vmap", "map", "auto")):
        try:
            tp = cfg.train.task_parallel = _validate.integer("train.task_parallel", tp, min=1, max=MAX_INT)
        except ValueError:
            raise ConfigError(f"train.task_parallel must be 'vmap', 'map', 'auto' or a positive chunk size, "
                              f"got {tp!r}") from None
    if isinstance(tp, int) and cfg.train.meta_batch_size % tp:
        raise ConfigError(f"train.task_parallel={tp} (a chunk size) must divide train.meta_batch_size="
                          f"{cfg.train.meta_batch_size}")
    seed = cfg.train.seed
    if not _all_ok(_validate.integer, [seed], min=0, max=2**32 - 1):
        raise ConfigError(f"train.seed must be an integer in [0, 2**32), got {seed!r} (JAX keys hold 32 bits: larger "
                          "seeds would repeat smaller ones)")
    if cfg.model.name == "mlp":
        from jmeta.models.mlp import ACTIVATIONS

        choice("model.activation", cfg.model.activation, tuple(ACTIVATIONS))
        if not _all_ok(_validate.integer, cfg.model.hidden, min=1, max=MAX_INT):
            raise ConfigError(f"model.hidden must be a list of positive integers, got {list(cfg.model.hidden)!r}")
    if cfg.model.conv_impl != "auto":  # the default needs no check (and no jax import)
        from jmeta.ops.conv import CONV_IMPLS

        choice("model.conv_impl", cfg.model.conv_impl, CONV_IMPLS)
    if cfg.algorithm.bn_mode == "per_step" and cfg.model.name != "conv4":
        raise ConfigError(f"algorithm.bn_mode='per_step' is implemented for model.name='conv4' only, got "
                          f"{cfg.model.name!r}")
    if not cfg.eval.shots:
        raise ConfigError("eval.shots must list at least one shot count, e.g. [5, 10]")
    if not cfg.algorithm.inner_lr > 0:
        raise ConfigError(f"algorithm.inner_lr must be > 0, got {cfg.algorithm.inner_lr!r}")
    if not cfg.train.meta_lr > 0:
        raise ConfigError(f"train.meta_lr must be > 0, got {cfg.train.meta_lr!r}")
    for name, value, lo in (("task.k_support", cfg.task.k_support, 1), ("task.k_query", cfg.task.k_query, 1),
                            ("task.n_way", cfg.task.n_way, 2), ("algorithm.inner_steps", cfg.algorithm.inner_steps, 1),
                            ("algorithm.eval_steps", cfg.algorithm.eval_steps, 0), ("train.steps", cfg.train.steps, 0),
                            ("train.meta_batch_size", cfg.train.meta_batch_size, 1),
                            ("train.lr_decay_every", cfg.train.lr_decay_every, 0),
                            ("algorithm.cg_steps", cfg.algorithm.cg_steps, 1),
                            ("eval.n_way", cfg.eval.n_way, 0), ("eval.k_query", cfg.eval.k_query, 0),
                            ("train.log_every", cfg.train.log_every, 1),
                            ("train.checkpoint_every", cfg.train.checkpoint_every, 0),
                            ("train.keep_checkpoints", cfg.train.keep_checkpoints, 1),
                            ("eval.num_tasks", cfg.eval.num_tasks, 1), ("eval.steps", cfg.eval.steps, 0),
                            ("eval.batch_size", cfg.eval.batch_size, 1)):
        at_least(name, value, lo)
    if not _all_ok(_validate.integer, cfg.eval.shots, min=1, max=MAX_INT):
        raise ConfigError(f"eval.shots must be integers >= 1, got {cfg.eval.shots!r}")
    if not _all_ok(_validate.integer, cfg.eval.report_steps, min=0, max=cfg.eval.steps):
        raise ConfigError(f"eval.report_steps must be integers in [0, eval.steps={cfg.eval.steps}], "
                          f"got {cfg.eval.report_steps!r}")
    return cfg


def _parse_assignment(d: dict, assignment: str) -> None:
    if not isinstance(assignment, str) or "=" not in assignment:
        raise ConfigError(f"an override must look like section.key=value, got {assignment!r}")
    path, raw = assignment.split("=", 1)
    parts = path.strip().split(".")
    if parts == ["name"]:
        d["name"] = raw
        return
    if len(parts) != 2 or parts[0] not in _SECTIONS:
        raise ConfigError(f"override key {path!r} must be section.key with section one of {sorted(_SECTIONS)}")
    section, key = parts
    if key not in d[section]:
        raise ConfigError(f"unknown key {path!r}; valid keys of {section}: {sorted(d[section])}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if raw.strip().lower() in ("none", "null"):
        value = None
    d[section][key] = value


def apply_overrides(cfg: Config, assignments) -> Config:
    """Applies ``section.key=value`` overrides together and validates the result once.

    The order does not matter for validity: ``eval.steps=20`` and
    ``eval.report_steps=[1,20]`` may be given in either order.
    """
    d = cfg.to_dict()
    assignments = list(assignments)
    for a in assignments:
        _parse_assignment(d, a)
    # algorithm.eval_steps and eval.steps name one thing (the inner steps of the evaluation, of `jmeta eval`
    # and of `jmeta export`): an override of one carries the other along; contradicting ones are refused.
    given = {a.split("=", 1)[0].strip() for a in assignments}
    if "algorithm.eval_steps" in given and "eval.steps" in given:
        if d["algorithm"]["eval_steps"] != d["eval"]["steps"]:
            raise ConfigError(f"algorithm.eval_steps={d['algorithm']['eval_steps']!r} and eval.steps="
                              f"{d['eval']['steps']!r} must agree (both are the evaluation's inner steps)")
    elif "algorithm.eval_steps" in given:
        d["eval"]["steps"] = d["algorithm"]["eval_steps"]
    elif "eval.steps" in given:
        d["algorithm"]["eval_steps"] = d["eval"]["steps"]
    steps, report = d["eval"]["steps"], d["eval"]["report_steps"]
    if "eval.report_steps" not in given and isinstance(steps, int) and not isinstance(steps, bool) \
            and isinstance(report, (list, tuple)) and any(isinstance(r, int) and r > steps for r in report):
        # fewer evaluation steps than reported ones: report what is left and the last step (as `jmeta eval --steps`)
        d["eval"]["report_steps"] = sorted({r for r in report if r <= steps} | {steps})
    return from_dict(d)


def apply_override(cfg: Config, assignment: str) -> Config:
    """Applies one ``section.key=value`` override (value parsed as JSON, else a string)."""
    return apply_overrides(cfg, [assignment])


# -- presets ---------------------------------------------------------------------------------------

PRESETS: dict[str, Callable[[], Config]] = {}


def preset(name: str):
    """Registers a preset factory under ``name``."""
    def deco(fn):
        PRESETS[name] = fn
        return fn

    return deco


@preset("sinusoid-maml")
def _sinusoid_maml() -> Config:
    """MAML on sinusoid regression with the paper's settings (Finn et al. 2017, section 5.1):
    1-40-40-1 ReLU, K=10, one inner SGD step of 0.01, meta-batch 25, Adam 1e-3, 70,000 steps."""
    return Config()


@preset("sinusoid-maml-k5")
def _sinusoid_maml_k5() -> Config:
    """As ``sinusoid-maml`` but trained with K=5 (the 5-shot figures of the paper)."""
    c = Config(name="sinusoid-maml-k5")
    c.task.k_support = c.task.k_query = 5
    return c


def _sinusoid_variant(preset_name: str, **algo) -> Callable[[], Config]:
    def make() -> Config:
        c = Config(name=f"sinusoid-{preset_name}")
        for k, v in algo.items():
            setattr(c.algorithm, k, v)
        return c

    make.__doc__ = f"Sinusoid regression with {algo['name']} (other settings as sinusoid-maml)."
    return make


for _n, _a in {
    "fomaml": dict(name="fomaml", first_order=True),
    "metasgd": dict(name="metasgd", learn_lr="per_param"),
    "maml-learned-lr": dict(name="maml", learn_lr="scalar"),
    "anil": dict(name="anil", adapt_params="layers_2"),
    "reptile": dict(name="reptile", inner_steps=5, inner_lr=0.02),
    "mamlpp": dict(name="mamlpp", inner_steps=5, learn_lr="per_layer_per_step", multi_step_loss=True),
}.items():
    PRESETS[f"sinusoid-{_n}"] = _sinusoid_variant(_n, **_a)


# -- image presets (the papers' settings) ------------------------------------------------------------


def _image(name: str, family: str, n_way: int, k_shot: int, *, k_query: int, model: str = "conv4",
           filters: int = 64, pool: str = "max", algorithm: dict, train: dict, eval_steps: int = 0,
           eval_way: int = 0, eval_query: int = 15, doc: str) -> None:
    def make() -> Config:
        c = Config(name=name)
        c.task = TaskConfig(family=family, k_support=k_shot, k_query=k_query, n_way=n_way,
                            rotations=family == "omniglot", image_size=28 if family == "omniglot" else 84)
        c.model = ModelConfig(name=model, filters=filters, pool=pool)
        for k, v in algorithm.items():
            setattr(c.algorithm, k, v)
        c.algorithm.eval_steps = eval_steps
        for k, v in {"log_every": 100, "checkpoint_every": 2_000, "task_parallel": "auto", **train}.items():
            setattr(c.train, k, v)
        c.eval = EvalConfig(split="test", n_way=eval_way, k_query=eval_query, num_tasks=600, shots=(k_shot,),
                            steps=eval_steps, report_steps=(0, eval_steps) if eval_steps else (0,), batch_size=50)
        return c

    make.__doc__ = doc
    PRESETS[name] = make


# MAML (Finn et al. 2017, appendix A.1 and the official README): Omniglot 5-way one inner step of 0.4,
# meta-batch 32, evaluated with 3 steps; 20-way 5 steps of 0.1, meta-batch 16; strided convs, 64 filters;
# mini-ImageNet 5 steps of 0.01 (10 at test), 32 filters, max-pool, meta-batch 4 (1-shot) / 2 (5-shot);
# 60,000 meta-steps, Adam 1e-3.
for _way, _shot in ((5, 1), (5, 5), (20, 1), (20, 5)):
    for _alg in ("maml", "fomaml"):
        _five = _way == 5
        _image(f"omniglot-{_way}w{_shot}s-{_alg}", "omniglot", _way, _shot, k_query=_shot, pool="stride",
               algorithm=dict(name=_alg, first_order=_alg == "fomaml", inner_lr=0.4 if _five else 0.1,
                              inner_steps=1 if _five else 5),
               train=dict(steps=60_000, meta_batch_size=32 if _five else 16), eval_steps=3 if _five else 5,
               eval_query=_shot,
               doc=f"{'First-order ' if _alg == 'fomaml' else ''}MAML, Omniglot {_way}-way {_shot}-shot, the "
                   f"paper's settings (Finn et al. 2017).")
for _shot, _mb in ((1, 4), (5, 2)):
    for _alg in ("maml", "fomaml"):
        _image(f"miniimagenet-5w{_shot}s-{_alg}", "miniimagenet", 5, _shot, k_query=15, filters=32,
               algorithm=dict(name=_alg, first_order=_alg == "fomaml", inner_lr=0.01, inner_steps=5),
               train=dict(steps=60_000, meta_batch_size=_mb), eval_steps=10,
               doc=f"{'First-order ' if _alg == 'fomaml' else ''}MAML, mini-ImageNet 5-way {_shot}-shot, "
                   f"Conv4-32 with max-pool, the paper's settings (Finn et al. 2017).")
# MAML++ (Antoniou et al. 2019): 5 steps, per-step BatchNorm, learned per-layer per-step rates, multi-step loss.
_image("omniglot-5w1s-mamlpp", "omniglot", 5, 1, k_query=1, pool="max",
       algorithm=dict(name="mamlpp", inner_lr=0.1, inner_steps=5, bn_mode="per_step", multi_step_loss=True,
                      learn_lr="per_layer_per_step", msl_anneal_steps=5_000),
       train=dict(steps=50_000, meta_batch_size=8, lr_cosine=True, lr_min=1e-5), eval_steps=5, eval_query=1,
       doc="MAML++ on Omniglot 5-way 1-shot (Antoniou et al. 2019): 5 steps, per-step BatchNorm, LSLR, MSL over "
           "the first 5,000 steps (10 epochs of 500), Adam 1e-3 cosine-annealed to 1e-5 (the authors' config).")
# Prototypical Networks (Snell et al. 2017): Omniglot 60-way training, 5 queries; mini-ImageNet 30-way
# (1-shot) / 20-way (5-shot), 15 queries; Adam 1e-3 halved every 2,000 episodes; tested 5-way, 15 queries.
for _shot in (1, 5):
    _image(f"omniglot-5w{_shot}s-protonet", "omniglot", 60, _shot, k_query=5,
           algorithm=dict(name="protonet"), train=dict(steps=20_000, meta_batch_size=1, lr_decay_every=2_000),
           eval_way=5, doc=f"Prototypical Networks, Omniglot 5-way {_shot}-shot (trained 60-way), Snell et al. 2017.")
    _image(f"miniimagenet-5w{_shot}s-protonet", "miniimagenet", 30 if _shot == 1 else 20, _shot, k_query=15,
           algorithm=dict(name="protonet"), train=dict(steps=30_000, meta_batch_size=1, lr_decay_every=2_000),
           eval_way=5, doc=f"Prototypical Networks, mini-ImageNet 5-way {_shot}-shot, Conv4-64 (Snell et al. 2017).")
# MetaOptNet (Lee et al. 2019): ResNet-12, SVM (C=0.1) or ridge head, label smoothing 0.1, SGD Nesterov
# 0.9, lr 0.1 -> 0.006 -> 0.0012 -> 0.00024 at epochs 20/40/50 of 1,000 episodes, 8 episodes per batch,
# 6 queries per class in training (the paper also trains 1-shot models with 15 shots; here the test shot).
for _head in ("svm", "rr"):
    for _shot in (1, 5):
        _image(f"miniimagenet-5w{_shot}s-metaoptnet-{_head}", "miniimagenet", 5, _shot, k_query=6, model="resnet12",
               algorithm=dict(name=f"metaoptnet-{_head}", label_smoothing=0.1, svm_c=0.1),
               train=dict(steps=60_000, meta_batch_size=8, meta_optimizer="nesterov", meta_lr=0.1,
                          weight_decay=5e-4, lr_boundaries=(20_000, 40_000, 50_000), lr_scales=(0.06, 0.2, 0.2)),
               doc=f"MetaOptNet-{_head.upper()}, ResNet-12, mini-ImageNet 5-way {_shot}-shot (Lee et al. 2019).")
# R2-D2 (Bertinetto et al. 2019) with the same ResNet-12 backbone (the paper uses a 4-layer 96-192-384-512 CNN).
for _shot in (1, 5):
    _image(f"miniimagenet-5w{_shot}s-r2d2", "miniimagenet", 5, _shot, k_query=6, model="resnet12",
           algorithm=dict(name="r2d2"),
           train=dict(steps=60_000, meta_batch_size=8, meta_optimizer="nesterov", meta_lr=0.1, weight_decay=5e-4,
                      lr_boundaries=(20_000, 40_000, 50_000), lr_scales=(0.06, 0.2, 0.2)),
           doc=f"R2-D2 ridge head, ResNet-12, mini-ImageNet 5-way {_shot}-shot (Bertinetto et al. 2019; "
               f"MetaOptNet's schedule).")
# iMAML (Rajeswaran et al. 2019, iMAML-GD): Omniglot, lambda 2, 5 CG steps, 16 (5-way) / 25 (20-way)
# inner gradient-descent steps.
for _way, _steps in ((5, 16), (20, 25)):
    _image(f"omniglot-{_way}w1s-imaml", "omniglot", _way, 1, k_query=1, pool="stride",
           algorithm=dict(name="imaml", inner_lr=0.1, inner_steps=_steps, reg_lambda=2.0, cg_steps=5),
           train=dict(steps=30_000, meta_batch_size=32 if _way == 5 else 16), eval_steps=_steps, eval_query=1,
           doc=f"iMAML (GD inner solver), Omniglot {_way}-way 1-shot (Rajeswaran et al. 2019).")
# Meta-LSTM (Ravi & Larochelle 2017): Conv4-32 learner with max-pool whose parameters are the cell state of the
# meta-learner; Adam 1e-3 with the meta-gradient clipped to global norm 0.25, one episode per meta-step, 15
# query images per class, no second derivatives through the learner's gradients (first_order). Updates per
# episode: 5-shot 8 (8 epochs of one 25-image batch: the official code's settings as its PyTorch port lists
# them); 1-shot 12 (12 epochs of the 5-image support). The paper trains on mini-ImageNet only; the Omniglot
# preset uses the same learner on 28x28 characters with 5 updates.
for _fam, _shot, _steps, _q, _n in (("miniimagenet", 1, 12, 15, 50_000), ("miniimagenet", 5, 8, 15, 50_000),
                                    ("omniglot", 1, 5, 15, 30_000)):
    _image(f"{_fam}-5w{_shot}s-meta-lstm", _fam, 5, _shot, k_query=_q, filters=32, pool="max",
           algorithm=dict(name="meta-lstm", inner_steps=_steps, first_order=True),
           train=dict(steps=_n, meta_batch_size=1, meta_lr=1e-3, grad_clip=0.25), eval_steps=_steps,
           doc=f"Meta-LSTM learner (Ravi & Larochelle 2017), {_fam} 5-way {_shot}-shot, {_steps} updates per "
               f"episode, Conv4-32.")


def load(name_or_path: str | None) -> Config:
    """A preset by name, or a JSON config file (a run folder's ``config.json``, or the folder itself)."""
    if name_or_path is None:
        return PRESETS["sinusoid-maml"]()
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]()
    p = pathlib.Path(name_or_path)
    if p.is_dir() and (p / "config.json").is_file():
        p = p / "config.json"
    if p.is_file():
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {p} is not valid JSON: {e}") from None
        return from_dict(d)
    raise ConfigError(f"no preset or config file named {name_or_path!r}; presets: {sorted(PRESETS)}")
