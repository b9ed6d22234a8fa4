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
    """

    family: str = "sinusoid"
    k_support: int = 10
    k_query: int = 10
    n_way: int = 5
    rotations: bool = True
    image_size: int = 28


@dataclasses.dataclass
class ModelConfig:
    """The model: ``"mlp"`` (hidden widths, activation), ``"conv4"`` or ``"resnet12"``."""

    name: str = "mlp"
    hidden: tuple = (40, 40)
    activation: str = "relu"
    filters: int = 64
    pool: str = "max"


@dataclasses.dataclass
class AlgorithmConfig:
    """The meta-learning algorithm and its inner loop.

    Attributes:
      name: one of :data:`ALGORITHMS`.
      inner_lr: inner learning rate (initial value when learned).
      inner_steps: inner steps during meta-training.
      eval_steps: inner steps at evaluation.
      first_order: drop second-order terms.
      inner_optimizer: ``"sgd"`` or ``"adam"`` (Adam with ``eps_root=1e-8``).
      learn_lr: ``None`` or a learned-lr kind (``"scalar"``, ``"per_layer"``,
        ``"per_param"``, ``"per_layer_per_step"``).
      adapt_params: parameter path prefix(es) the inner loop adapts (ANIL), or ``None`` for all.
      remat: ``None``, ``"full"``, ``"dots"``, ``"dots_no_batch"``.
      multi_step_loss: MAML++ multi-step loss.
      msl_anneal_steps: meta-steps over which the multi-step loss anneals.
      bn_mode: ``"batch"`` or ``"frozen"``.
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


@dataclasses.dataclass
class TrainConfig:
    """Meta-training.

    Attributes:
      steps: meta-steps.
      meta_batch_size: tasks per meta-step.
      meta_optimizer: ``"adam"`` or ``"sgd"``.
      meta_lr: meta learning rate.
      seed: the run's seed (tasks, initialisation, evaluation).
      log_every: meta-steps between metric records.
      checkpoint_every: meta-steps between checkpoints (0: only at the end).
      keep_checkpoints: how many checkpoints to keep.
      task_parallel: ``"vmap"``, ``"map"`` or a chunk size.
      on_nan: ``"stop"`` (stop with a message) or ``"skip"`` (drop that update).
    """

    steps: int = 70_000
    meta_batch_size: int = 25
    meta_optimizer: str = "adam"
    meta_lr: float = 1e-3
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 5_000
    keep_checkpoints: int = 3
    task_parallel: Any = "vmap"
    on_nan: str = "stop"


@dataclasses.dataclass
class EvalConfig:
    """Final evaluation: ``num_tasks`` held-out tasks for each shot count, curves over ``steps``."""

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


def _coerce(section: str, field: dataclasses.Field, value):
    name = f"{section}.{field.name}"
    default = field.default if field.default is not dataclasses.MISSING else None
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
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
        cfg.name = str(d["name"])
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
    choice("algorithm.bn_mode", cfg.algorithm.bn_mode, ("batch", "frozen"))
    choice("algorithm.remat", cfg.algorithm.remat, (None, "none", "full", "dots", "dots_no_batch"))
    choice("algorithm.learn_lr", cfg.algorithm.learn_lr,
           (None, "scalar", "per_layer", "per_param", "per_layer_per_step", "per_param_per_step"))
    choice("train.meta_optimizer", cfg.train.meta_optimizer, ("adam", "sgd"))
    choice("train.on_nan", cfg.train.on_nan, ("stop", "skip"))
    if not (cfg.train.task_parallel in ("vmap", "map", "auto") or
            (isinstance(cfg.train.task_parallel, int) and cfg.train.task_parallel >= 1)):
        raise ConfigError(f"train.task_parallel must be 'vmap', 'map', 'auto' or a positive chunk size, "
                          f"got {cfg.train.task_parallel!r}")
    if not cfg.algorithm.inner_lr > 0:
        raise ConfigError(f"algorithm.inner_lr must be > 0, got {cfg.algorithm.inner_lr!r}")
    if not cfg.train.meta_lr > 0:
        raise ConfigError(f"train.meta_lr must be > 0, got {cfg.train.meta_lr!r}")
    for name, value, lo in (("task.k_support", cfg.task.k_support, 1), ("task.k_query", cfg.task.k_query, 1),
                            ("task.n_way", cfg.task.n_way, 2), ("algorithm.inner_steps", cfg.algorithm.inner_steps, 1),
                            ("algorithm.eval_steps", cfg.algorithm.eval_steps, 0), ("train.steps", cfg.train.steps, 0),
                            ("train.meta_batch_size", cfg.train.meta_batch_size, 1),
                            ("train.log_every", cfg.train.log_every, 1),
                            ("train.checkpoint_every", cfg.train.checkpoint_every, 0),
                            ("train.keep_checkpoints", cfg.train.keep_checkpoints, 1),
                            ("eval.num_tasks", cfg.eval.num_tasks, 1), ("eval.steps", cfg.eval.steps, 0),
                            ("eval.batch_size", cfg.eval.batch_size, 1)):
        at_least(name, value, lo)
    for s in cfg.eval.shots:
        if not isinstance(s, int) or s < 1:
            raise ConfigError(f"eval.shots must be integers >= 1, got {cfg.eval.shots!r}")
    for s in cfg.eval.report_steps:
        if not isinstance(s, int) or not 0 <= s <= cfg.eval.steps:
            raise ConfigError(f"eval.report_steps must be integers in [0, eval.steps={cfg.eval.steps}], "
                              f"got {cfg.eval.report_steps!r}")
    return cfg


def apply_override(cfg: Config, assignment: str) -> Config:
    """Applies one ``section.key=value`` override (value parsed as JSON, else a string)."""
    if "=" not in assignment:
        raise ConfigError(f"an override must look like section.key=value, got {assignment!r}")
    path, raw = assignment.split("=", 1)
    parts = path.strip().split(".")
    d = cfg.to_dict()
    if parts == ["name"]:
        d["name"] = raw
        return from_dict(d)
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
    return from_dict(d)


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
