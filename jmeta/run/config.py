"""Typed experiment configs, presets by name, and command-line overrides.

Every run is described by one :class:`Config` (nested dataclasses). A run
folder stores the resolved config as ``config.json``; ``jmeta train --config
RUN_DIR/config.json`` reproduces the run. Presets are named configs
(``jmeta train --config sinusoid-maml``); ``--set section.key=value``
overrides any field (values parse as JSON, else as strings):

    jmeta train --config sinusoid-maml --set algorithm.inner_lr=0.02 --set train.steps=5000

The ``task``, ``model`` and ``algorithm`` sections name an entry of :mod:`jmeta.run.registry`
(``task.family``, ``model.name``, ``algorithm.name``) and hold that entry's options only: the keyword
arguments of its constructor less what the wiring supplies (:mod:`jmeta.run.experiment`), checked by the
constructor (an option it does not have is an error naming it, the entry and its options). Options of the
run rather than of one constructor live in ``train`` and ``eval``: the evaluation's inner steps are
``eval.steps`` (passed to the algorithm as ``eval_steps``); the convolution form is the model's
``conv_impl`` (``"auto"`` is resolved by the wiring). A ``config.json`` of an earlier jmeta (flat sections
holding every algorithm's options) still loads: options the run did not use are dropped when at their old
defaults and refused otherwise (:func:`from_dict`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from jmeta import validate as _validate
from jmeta.run import registry as _registry
from jmeta.run.registry import ConfigError


class Section:
    """A ``task``, ``model`` or ``algorithm`` section: the entry's name and its options.

    Options read as attributes (``cfg.algorithm.inner_lr``; an older name such as ``inner_steps`` reads its
    new one, ``num_steps``); :meth:`to_dict` is the JSON form ``{"name": ..., **options}`` (``"family"`` for
    the task). Build one with :meth:`make`, which checks the options.
    """

    def __init__(self, kind: str, name: str, options: dict):
        # read-only (__setattr__ refuses): the fields go straight into the instance dictionary
        self.__dict__.update(kind=kind, entry=_registry.get(kind, name), options=dict(options))

    @classmethod
    def make(cls, kind: str, name: str, options: dict | None = None, placeholders: dict | None = None) -> "Section":
        """The section of entry ``name`` with ``options`` (defaults for the rest), checked by the entry."""
        entry = _registry.get(kind, name)
        opts = {}
        for k, v in (options or {}).items():
            k = entry.aliases.get(k, k)
            if k in opts:
                raise ConfigError(f"{kind}.{k} is given twice (also under an older name)")
            opts[k] = v
        return cls(kind, name, entry.check(opts, placeholders or {}))

    @property
    def key(self) -> str:
        return _registry.name_key(self.kind)

    def __getattr__(self, item):
        if item.startswith("__") or "options" not in self.__dict__:  # copy/pickle probing a bare instance
            raise AttributeError(item)
        if item == self.key:
            return self.entry.name
        opts = self.__dict__["options"]
        item = self.entry.aliases.get(item, item)
        if item in opts:
            v = opts[item]
            return tuple(v) if isinstance(v, list) else v
        raise AttributeError(f"{self.kind} {self.entry.name!r} has no option {item!r}; its options: {sorted(opts)}")

    def __setattr__(self, item, value):
        raise AttributeError(f"config sections are read-only: use apply_overrides(cfg, ['{self.kind}.{item}=...'])")

    def get(self, item, default=None):
        """The option ``item`` (an older name reads its new one), or ``default`` if the entry has none."""
        try:
            return getattr(self, item)
        except AttributeError:
            return default

    def to_dict(self) -> dict:
        return {self.key: self.entry.name, **{k: _json_value(v) for k, v in self.options.items()}}

    def __eq__(self, other):
        return isinstance(other, Section) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"Section({self.to_dict()!r})"


def _json_value(v):
    if isinstance(v, tuple):
        return [_json_value(x) for x in v]
    return v


def _default_section(kind: str, name: str):
    def make():
        entry = _registry.get(kind, name)
        return Section(kind, name, entry.options())
    return make


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
    task: Section = dataclasses.field(default_factory=_default_section("task", "sinusoid"))
    model: Section = dataclasses.field(default_factory=_default_section("model", "mlp"))
    algorithm: Section = dataclasses.field(default_factory=_default_section("algorithm", "maml"))
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return {"name": self.name, "task": self.task.to_dict(), "model": self.model.to_dict(),
                "algorithm": self.algorithm.to_dict(), "train": dataclasses.asdict(self.train),
                "eval": dataclasses.asdict(self.eval)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


ALGORITHMS = _registry.names("algorithm")
FAMILIES = _registry.names("task")
MODELS = _registry.names("model")

#: Sections whose keys are fixed fields, and sections that name a registry entry.
_SECTIONS = {"train": TrainConfig, "eval": EvalConfig}
_REGISTERED = ("task", "model", "algorithm")
_ALL_SECTIONS = ("task", "model", "algorithm", "train", "eval")


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
    """Builds a :class:`Config` from a (possibly partial) nested dict, validating every key.

    ``task``, ``model`` and ``algorithm`` are ``{name, **options}`` (``family`` for the task), checked by the
    registry entry they name. A flat section of an earlier jmeta (every family's, model's or algorithm's keys,
    :data:`V0_DEFAULTS`) is converted as that version built it: the options it passed on are kept (``inner_steps``
    as ``num_steps``, ``svm_c`` as ``C``, ``filters`` as ``hidden``, ``algorithm.eval_steps`` as
    ``eval.steps``), the others are dropped when at their old defaults and refused otherwise.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a JSON object, got {type(d).__name__}")
    unknown = set(d) - {"name", *_ALL_SECTIONS}
    if unknown:
        raise ConfigError(f"unknown config section(s) {sorted(unknown)}; valid: {['name', *_ALL_SECTIONS]}")
    cfg = Config()
    if "name" in d:
        cfg.name = check_name(str(d["name"]))
    subs = {}
    for section in _ALL_SECTIONS:
        sub = d.get(section, {})
        if not isinstance(sub, dict):
            raise ConfigError(f"config section {section!r} must be an object, got {sub!r}")
        subs[section] = dict(sub)
    for section, cls in _SECTIONS.items():
        fields = {f.name: f for f in dataclasses.fields(cls)}
        bad = set(subs[section]) - set(fields)
        if bad:
            raise ConfigError(f"unknown key(s) {sorted(f'{section}.{b}' for b in bad)}; valid keys of {section}: "
                              f"{sorted(fields)}")
        obj = getattr(cfg, section)
        for k, v in subs[section].items():
            setattr(obj, k, _coerce(section, fields[k], v))
    algo = subs["algorithm"]
    if "eval_steps" in algo:  # the evaluation's inner steps live in eval.steps
        steps = algo.pop("eval_steps")
        if "steps" not in subs["eval"]:
            cfg.eval.steps = _integer("algorithm.eval_steps", steps, min=0)
    for kind, default in (("task", "sinusoid"), ("model", "mlp"), ("algorithm", "maml")):
        sub = subs[kind]
        if set(V0_DEFAULTS[kind]) - {"eval_steps"} <= set(sub):
            sub = _from_v0(kind, sub)
        key = _registry.name_key(kind)
        name = sub.pop(key, default)
        placeholders = _placeholders(cfg, name, sub) if kind == "algorithm" else None
        setattr(cfg, kind, Section.make(kind, name, sub, placeholders))
    validate(cfg)
    return cfg


def _placeholder_apply(*args, **kwargs):
    """The model function an algorithm is checked with before the model exists (never called)."""
    raise RuntimeError("placeholder model: the config check builds the algorithm without a model")


def _placeholders(cfg: Config, name: str, options: dict) -> dict:
    """The wiring an algorithm's constructor is checked with in :func:`from_dict` (:mod:`jmeta.run.experiment`
    supplies the real ones)."""
    return _registry.algorithm_wiring(
        _registry.get("algorithm", name), apply=_placeholder_apply,
        loss="mse" if cfg.task.family == "sinusoid" else "cross_entropy", n_way=cfg.task.get("n_way", 5),
        eval_steps=cfg.eval.steps, inner_optimizer=options.get("inner_optimizer", "sgd"))


#: The flat sections of an earlier jmeta: every key with its default.
V0_DEFAULTS = {
    "task": {"family": "sinusoid", "k_support": 10, "k_query": 10, "n_way": 5, "rotations": True, "image_size": 28,
             "allow_pickle": False},
    "model": {"name": "mlp", "hidden": [40, 40], "activation": "relu", "filters": 64, "pool": "max",
              "conv_impl": "auto"},
    "algorithm": {"name": "maml", "inner_lr": 0.01, "inner_steps": 1, "eval_steps": 10, "first_order": False,
                  "inner_optimizer": "sgd", "learn_lr": None, "adapt_params": None, "remat": None,
                  "multi_step_loss": False, "msl_anneal_steps": 10_000, "bn_mode": "batch", "reg_lambda": 2.0,
                  "cg_steps": 5, "svm_c": 0.1, "label_smoothing": 0.0},
}
_V0_GRADIENT = {k: k for k in ("inner_lr", "inner_optimizer", "remat", "bn_mode", "first_order", "learn_lr",
                               "adapt_params", "multi_step_loss", "msl_anneal_steps")} | {"inner_steps": "num_steps"}
#: What the earlier wiring passed on to each constructor: {old key: option}.
_V0_USED = {
    "task": {"sinusoid": ("k_support", "k_query"),
             "omniglot": ("n_way", "k_support", "k_query", "rotations", "image_size"),
             "miniimagenet": ("n_way", "k_support", "k_query", "image_size", "allow_pickle")},
    "model": {"mlp": ("hidden", "activation"), "conv4": {"filters": "hidden", "pool": "pool", "conv_impl": "conv_impl"},
              "resnet12": ("conv_impl",)},
    "algorithm": {**{n: _V0_GRADIENT for n in ("maml", "fomaml", "metasgd", "anil", "mamlpp")},
                  "reptile": {k: v for k, v in _V0_GRADIENT.items() if k not in ("first_order", "msl_anneal_steps")},
                  "imaml": {"inner_lr": "inner_lr", "inner_steps": "num_steps", "inner_optimizer": "inner_optimizer",
                            "reg_lambda": "reg_lambda", "cg_steps": "cg_steps", "adapt_params": "adapt_params",
                            "bn_mode": "bn_mode"},
                  "protonet": (), "r2d2": ("label_smoothing",),
                  "metaoptnet-svm": {"label_smoothing": "label_smoothing", "svm_c": "C"},
                  "metaoptnet-rr": {"label_smoothing": "label_smoothing", "svm_c": "C"},
                  "meta-lstm": {"inner_steps": "num_steps", "bn_mode": "bn_mode", "first_order": "second_order"}},
}


def _from_v0(kind: str, sub: dict) -> dict:
    """A flat section of an earlier jmeta as ``{name, **options}`` (see :func:`from_dict`)."""
    key = _registry.name_key(kind)
    name = sub[key]
    entry = _registry.get(kind, name)
    used = _V0_USED[kind][name]
    used = used if isinstance(used, dict) else {k: k for k in used}
    out = {key: name}
    for k, v in sub.items():
        if k == "remat" and v == "none":
            v = None
        if k in (key, "eval_steps"):
            continue
        if k in used:
            out[used[k]] = v
        elif _same(v, V0_DEFAULTS[kind].get(k)) or (name, k) == ("miniimagenet", "rotations"):
            continue  # the earlier wiring ignored it (mini-ImageNet has no rotations)
        else:
            raise ConfigError(f"{kind}.{k}={v!r} (a config.json of an earlier jmeta) is not an option of {kind}.{key}="
                              f"{name!r} (that version ignored it): remove it; its options: {sorted(entry.options())}")
    # the earlier wiring's fixed choices per name
    if name == "fomaml":
        out["first_order"] = True
    if name in ("metasgd", "mamlpp", "anil"):
        for k in ("learn_lr", "adapt_params"):
            if out.get(k, 0) is None:
                del out[k]  # the entry's default (per_param, per_layer_per_step, the head)
    if name == "mamlpp":
        out["multi_step_loss"] = True
    if name == "meta-lstm":
        out["second_order"] = not out["second_order"]
    return out


def _same(a, b) -> bool:
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    return norm(a) == norm(b) and type(a) is not bool or a is b


def validate(cfg: Config) -> Config:
    """Checks values that have a fixed set of choices or a range; raises :class:`ConfigError`."""
    def choice(name, value, valid):
        if value not in valid:
            raise ConfigError(f"{name} must be one of {list(valid)}, got {value!r}")

    def at_least(name, value, lo):
        if value < lo:
            raise ConfigError(f"{name} must be >= {lo}, got {value!r}")

    choice("eval.split", cfg.eval.split, ("test", "val"))
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
    _registry.check_rl(cfg)
    if cfg.task.family == "sinusoid" and cfg.model.name != "mlp":
        raise ConfigError(f"task.family='sinusoid' needs model.name='mlp', got {cfg.model.name!r}")
    if cfg.task.family != "sinusoid" and cfg.model.name == "mlp" and not _registry.is_rl(cfg):
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
    # The model is built later (it costs an initialisation); its options that name a fixed set are checked here
    # so that a typo fails before any data is read.
    if cfg.model.name == "mlp":
        from jmeta.models.mlp import ACTIVATIONS

        choice("model.activation", cfg.model.activation, tuple(ACTIVATIONS))
        if not _all_ok(_validate.integer, cfg.model.hidden, min=1, max=MAX_INT):
            raise ConfigError(f"model.hidden must be a list of positive integers, got {list(cfg.model.hidden)!r}")
    if cfg.model.get("conv_impl", "auto") != "auto":  # the default needs no check (and no jax import)
        from jmeta.ops.conv import CONV_IMPLS

        choice("model.conv_impl", cfg.model.conv_impl, CONV_IMPLS)
    if cfg.algorithm.get("bn_mode") == "per_step" and cfg.model.name != "conv4":
        raise ConfigError(f"algorithm.bn_mode='per_step' is implemented for model.name='conv4' only, got "
                          f"{cfg.model.name!r}")
    if not cfg.eval.shots:
        raise ConfigError("eval.shots must list at least one shot count, e.g. [5, 10]")
    if not cfg.train.meta_lr > 0:
        raise ConfigError(f"train.meta_lr must be > 0, got {cfg.train.meta_lr!r}")
    for name, value, lo in (("train.steps", cfg.train.steps, 0),
                            ("train.meta_batch_size", cfg.train.meta_batch_size, 1),
                            ("train.lr_decay_every", cfg.train.lr_decay_every, 0),
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


def _parse_assignment(d: dict, assignment: str) -> str:
    """Sets ``section.key=value`` in the dict ``d``; returns the key as set (``algorithm.eval_steps`` is
    ``eval.steps``)."""
    if not isinstance(assignment, str) or "=" not in assignment:
        raise ConfigError(f"an override must look like section.key=value, got {assignment!r}")
    path, raw = assignment.split("=", 1)
    parts = path.strip().split(".")
    if parts == ["name"]:
        d["name"] = raw
        return "name"
    if len(parts) != 2 or parts[0] not in _ALL_SECTIONS:
        raise ConfigError(f"override key {path!r} must be section.key with section one of {sorted(_ALL_SECTIONS)}")
    section, key = parts
    if section in _SECTIONS and key not in d[section]:
        raise ConfigError(f"unknown key {path!r}; valid keys of {section}: {sorted(d[section])}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if raw.strip().lower() in ("none", "null"):
        value = None
    if (section, key) == ("algorithm", "eval_steps"):  # an older name of eval.steps
        section, key = "eval", "steps"
        if "algorithm.eval_steps" in d.setdefault("_given", {}) or "eval.steps" in d["_given"]:
            other = d["_given"].get("eval.steps", d["_given"].get("algorithm.eval_steps"))
            if other != value:
                raise ConfigError(f"algorithm.eval_steps={value!r} and eval.steps={other!r} must agree (both are "
                                  f"the evaluation's inner steps)")
        d["_given"]["algorithm.eval_steps"] = value
    elif (section, key) == ("eval", "steps"):
        given = d.setdefault("_given", {})
        if "algorithm.eval_steps" in given and given["algorithm.eval_steps"] != value:
            raise ConfigError(f"algorithm.eval_steps={given['algorithm.eval_steps']!r} and eval.steps={value!r} "
                              f"must agree (both are the evaluation's inner steps)")
        given["eval.steps"] = value
    elif section in _REGISTERED:  # an older option name (inner_steps, svm_c, filters) of the named entry
        name = d[section].get(_registry.name_key(section))
        if isinstance(name, str) and name in _registry.names(section):
            key = _registry.get(section, name).aliases.get(key, key)
    d[section][key] = value
    return f"{section}.{key}"


def apply_overrides(cfg: Config, assignments) -> Config:
    """Applies ``section.key=value`` overrides together and validates the result once.

    The order does not matter for validity: ``eval.steps=20`` and
    ``eval.report_steps=[1,20]`` may be given in either order. A new ``algorithm.name`` (``model.name``,
    ``task.family``) keeps the options of the old one that the new one also has and that were changed from
    the old one's defaults; the others start at the new one's defaults.
    """
    d = cfg.to_dict()
    given = {_parse_assignment(d, a) for a in list(assignments)}
    d.pop("_given", None)
    for kind in _REGISTERED:
        old = getattr(cfg, kind)
        new_name = d[kind][old.key]
        if new_name == old.entry.name or not isinstance(new_name, str) or new_name not in _registry.names(kind):
            continue  # same entry, or a bad name the entry lookup refuses
        new = _registry.get(kind, new_name)
        valid, defaults = new.options(), old.entry.options()
        keep = {}
        for k, v in d[kind].items():
            k2 = new.aliases.get(k, k)
            if f"{kind}.{k}" in given or k == old.key:
                keep[k] = v
            elif k2 in valid and v != defaults.get(k):
                keep[k2] = v
        d[kind] = keep
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

_PRESET_PACKAGE = "jmeta.run.presets"


class Preset:
    """A named config: the module ``jmeta/run/presets/<name with _ for ->.py``, whose docstring says what it
    is (first line) and the command that runs it, and whose ``CONFIG`` is the config dict (options left out
    take their defaults). Calling it returns the :class:`Config`."""

    def __init__(self, name: str):
        self.name = name

    def module(self):
        import importlib

        return importlib.import_module(f"{_PRESET_PACKAGE}.{self.name.replace('-', '_')}")

    @property
    def doc(self) -> str:
        """The preset module's docstring."""
        return self.module().__doc__ or ""

    def __call__(self) -> Config:
        return from_dict({"name": self.name, **self.module().CONFIG})


def _find_presets() -> dict[str, Preset]:
    folder = pathlib.Path(__file__).resolve().parent / "presets"
    return {p.stem.replace("_", "-"): Preset(p.stem.replace("_", "-"))
            for p in sorted(folder.glob("*.py")) if not p.name.startswith("_")}


#: Presets by name (``jmeta presets`` lists them).
PRESETS: dict[str, Preset] = _find_presets()


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
