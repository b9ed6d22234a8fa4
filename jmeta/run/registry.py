"""Name -> constructor registry of the run layer: algorithms, models and task families.

A config section names one entry and holds that entry's options, ``{"name": "maml", "inner_lr": 0.01, ...}``
(``"family"`` for the task section). The options of an entry are its constructor's keyword arguments minus
those the wiring (:mod:`jmeta.run.experiment`) supplies (the model's ``apply``, the loss, the number of ways, the
evaluation's inner steps, keys, shapes) and minus those the name fixes (MetaOptNet's ``head``), plus a few
config-only keys the wiring turns into arguments (``inner_optimizer`` -> ``inner_transform``). An option the
constructor does not have is an error naming it, the entry and its options; values are checked by the
constructor itself (:meth:`Entry.check` builds the object once with placeholder wiring where that is cheap).

Constructors are named by ``"module:attribute"`` and imported on first use, so ``import jmeta`` stays cheap and
the library never imports this module.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
from typing import Any, Callable, Mapping

from jmeta._refs import resolve

_EMPTY: Mapping = types.MappingProxyType({})


class ConfigError(ValueError):
    """A config key or value that is not valid; the message names it and the valid choices."""


@dataclasses.dataclass(frozen=True, eq=False)
class Entry:
    """One registered constructor.

    Attributes:
      kind: the config section, ``"algorithm"``, ``"model"`` or ``"task"``.
      name: the name a config gives (``algorithm.name``, ``model.name``, ``task.family``).
      target: the constructor, ``"module:attribute"`` (a dataclass or a function with keyword arguments).
      wiring: constructor arguments the wiring supplies (not config options).
      fixed: constructor arguments the name fixes (not config options).
      extra: config-only options the wiring consumes, ``{key: (default, valid values)}``.
      aliases: older option names still accepted on input, ``{old: new}``.
      check_by_building: :meth:`check` builds the object with placeholder wiring (cheap constructors only).
      doc: one line.
    """

    kind: str
    name: str
    target: str
    wiring: tuple = ()
    fixed: Mapping = dataclasses.field(default_factory=dict)
    extra: Mapping = dataclasses.field(default_factory=dict)
    aliases: Mapping = dataclasses.field(default_factory=dict)
    check_by_building: bool = True
    doc: str = ""

    def constructor(self) -> Callable:
        return resolve(self.target)

    def options(self) -> dict[str, Any]:
        """``{option: default}`` in constructor order (config-only options last)."""
        ctor = self.constructor()
        if dataclasses.is_dataclass(ctor):
            params = [(f.name, f.default if f.default is not dataclasses.MISSING else
                       (f.default_factory() if f.default_factory is not dataclasses.MISSING else None))
                      for f in dataclasses.fields(ctor) if f.init]
        else:
            params = [(p.name, None if p.default is inspect.Parameter.empty else p.default)
                      for p in inspect.signature(ctor).parameters.values()
                      if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        out = {k: _plain(v) for k, v in params if k not in self.wiring and k not in self.fixed}
        out.update({k: _plain(d) for k, (d, _) in self.extra.items()})
        return out

    def unknown(self, key: str) -> ConfigError:
        return ConfigError(f"{self.kind}.{key} is not an option of {self.kind}.{name_key(self.kind)}={self.name!r}; "
                           f"its options: {sorted(self.options())}")

    def check(self, options: Mapping, placeholders: Mapping = _EMPTY) -> dict:
        """``options`` completed with the defaults and checked: every key an option, every value one the
        constructor accepts (the values it stores are returned, e.g. NumPy scalars as Python numbers).

        Raises:
          ConfigError: an unknown option (named, with the entry and its options) or a value the constructor
            refuses (its message, the option prefixed by the section).
        """
        valid = self.options()
        for key in options:
            if key not in valid:
                raise self.unknown(key)
        out = {**valid, **{k: _plain(v) for k, v in options.items()}}
        for key, (_, choices) in self.extra.items():
            if out[key] not in choices:
                raise ConfigError(f"{self.kind}.{key} must be one of {list(choices)}, got {out[key]!r}")
        if self.check_by_building:
            obj = self.build(out, **placeholders)
            if dataclasses.is_dataclass(obj):
                out.update({k: _plain(getattr(obj, k)) for k in out if k not in self.extra and hasattr(obj, k)})
        return out

    def build(self, options: Mapping, **wiring):
        """The object: the constructor called with the options (less config-only ones), the fixed arguments
        and ``wiring``; a ``ValueError``/``TypeError`` it raises becomes a :class:`ConfigError`."""
        kwargs = {k: _arg(v) for k, v in options.items() if k not in self.extra}
        try:
            return self.constructor()(**kwargs, **self.fixed, **wiring)
        except (ValueError, TypeError) as e:
            raise self.error(e) from e

    def error(self, e: Exception) -> ConfigError:
        """The constructor's message with the option it names prefixed by the section (``algorithm.inner_lr
        must be ...``), or prefixed by ``section:``."""
        if isinstance(e, ConfigError):
            return e
        msg = str(e)
        for key in sorted(self.options(), key=len, reverse=True):
            for lead in (key, f"{self.target.rpartition(':')[2]}.{key}"):
                if msg.startswith(lead) and not msg[len(lead):len(lead) + 1].isidentifier():
                    return ConfigError(f"{self.kind}.{key}{msg[len(lead):]}")
        return ConfigError(f"{self.kind}: {msg}")


def _plain(v):
    """A JSON-shaped value: tuples as lists (config.json holds lists)."""
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


def _arg(v):
    """A constructor argument: lists as tuples (the constructors' sequences are tuples)."""
    if isinstance(v, list):
        return tuple(_arg(x) for x in v)
    return v


REGISTRY: dict[str, dict[str, Entry]] = {"algorithm": {}, "model": {}, "task": {}}


def register(entry: Entry) -> Entry:
    """Adds ``entry`` under its kind and name (a name registered twice is an error)."""
    table = REGISTRY[entry.kind]
    if entry.name in table:
        raise ValueError(f"{entry.kind} {entry.name!r} is registered already ({table[entry.name].target})")
    table[entry.name] = entry
    return entry


def get(kind: str, name) -> Entry:
    """The entry of ``kind`` named ``name`` (else a :class:`ConfigError` listing the registered names)."""
    table = REGISTRY[kind]
    if not isinstance(name, str) or name not in table:
        raise ConfigError(f"{kind}.{name_key(kind)} must be one of {list(table)}, got {name!r}")
    return table[name]


def name_key(kind: str) -> str:
    """The key of a section that names its entry: ``"family"`` for the task, ``"name"`` otherwise."""
    return "family" if kind == "task" else "name"


def names(kind: str) -> tuple[str, ...]:
    return tuple(REGISTRY[kind])


# -- algorithms ------------------------------------------------------------------------------------------------

#: The differentiated inner loop: ``inner_optimizer`` ("sgd" or Adam with eps_root=1e-8) becomes ``inner_transform``.
_INNER = dict(wiring=("apply", "loss", "eval_steps", "inner_transform"), extra={"inner_optimizer": ("sgd", ("sgd", "adam"))},
              aliases={"inner_steps": "num_steps"})
for _name, _target, _doc in (
        ("maml", "jmeta.algorithms.maml:MAML", "MAML (Finn et al. 2017)"),
        ("fomaml", "jmeta.algorithms.maml:FOMAML", "first-order MAML"),
        ("metasgd", "jmeta.algorithms.maml:MetaSGD", "Meta-SGD: learned per-parameter inner rates (Li et al. 2017)"),
        ("anil", "jmeta.algorithms.maml:ANIL", "ANIL: only the head adapts (Raghu et al. 2020)"),
        ("reptile", "jmeta.algorithms.reptile:Reptile", "Reptile (Nichol et al. 2018)"),
        ("mamlpp", "jmeta.algorithms.maml:MAMLPlusPlus", "MAML++ (Antoniou et al. 2019)")):
    register(Entry("algorithm", _name, _target, doc=_doc, **_INNER))
register(Entry("algorithm", "protonet", "jmeta.algorithms.protonet:ProtoNet", wiring=("apply", "n_way"),
               doc="Prototypical Networks (Snell et al. 2017)"))
register(Entry("algorithm", "r2d2", "jmeta.algorithms.r2d2:R2D2", wiring=("apply", "n_way"),
               doc="R2-D2 ridge-regression head (Bertinetto et al. 2019)"))
for _head, _fixed in (("svm", "svm"), ("rr", "ridge")):
    register(Entry("algorithm", f"metaoptnet-{_head}", "jmeta.algorithms.metaoptnet:MetaOptNet",
                   wiring=("apply", "n_way"), fixed={"head": _fixed}, aliases={"svm_c": "C"},
                   doc=f"MetaOptNet with the {_fixed} head (Lee et al. 2019)"))
register(Entry("algorithm", "imaml", "jmeta.algorithms.imaml:IMAML",
               **{**_INNER, "wiring": (*_INNER["wiring"], "hvp")},
               doc="iMAML, implicit gradients (Rajeswaran et al. 2019)"))
register(Entry("algorithm", "meta-lstm", "jmeta.learned_optim.meta_lstm:MetaLSTM", wiring=("apply", "loss", "eval_steps"),
               aliases={"inner_steps": "num_steps"}, doc="Meta-LSTM learned optimizer (Ravi & Larochelle 2017)"))

# -- models ----------------------------------------------------------------------------------------------------

register(Entry("model", "mlp", "jmeta.models.mlp:mlp", wiring=("in_features", "out_features", "key"),
               check_by_building=False, doc="MLP (sinusoid regression)"))
register(Entry("model", "conv4", "jmeta.models.conv:conv4", wiring=("n_way", "input_shape", "per_step_bn", "key"),
               aliases={"filters": "hidden"}, check_by_building=False, doc="Conv4 (four conv-BN-ReLU blocks)"))
register(Entry("model", "resnet12", "jmeta.models.resnet:resnet12", wiring=("n_way", "input_shape", "key"),
               check_by_building=False, doc="ResNet-12 (MetaOptNet's backbone)"))

# -- task families ---------------------------------------------------------------------------------------------

register(Entry("task", "sinusoid", "jmeta.tasks.sinusoid:Sinusoid", doc="sinusoid regression (Finn et al. 2017)"))
register(Entry("task", "omniglot", "jmeta.run.families:Omniglot", doc="Omniglot N-way K-shot episodes"))
register(Entry("task", "miniimagenet", "jmeta.run.families:MiniImageNet", doc="mini-ImageNet N-way K-shot episodes"))

# -- meta-RL: environments, policies, algorithms (the wiring: jmeta.run.rl) --------------------------------------

for _name, _target, _build, _doc in (
        ("nav2d", "jmeta.rl.envs.nav2d:Nav2D", True, "2D navigation to a goal in [-0.5, 0.5]^2 (Finn et al. 2017)"),
        ("nav2d-corner", "jmeta.rl.envs.nav2d:Nav2DCorner", True, "point mass, sparse corner goals (ProMP)"),
        ("bandit", "jmeta.rl.envs.bandit:BernoulliBandit", True, "Bernoulli multi-armed bandits (RL^2)"),
        ("tabular-mdp", "jmeta.rl.envs.tabular:RandomTabularMDP", True, "random tabular MDPs (RL^2)"),
        # MJX and MetaWorld are imported by the constructors only: options are read from the classes
        ("cheetah-dir", "jmeta.rl.envs.locomotion:HalfCheetahDirection", False, "HalfCheetah forward/backward (MJX)"),
        ("cheetah-vel", "jmeta.rl.envs.locomotion:HalfCheetahVelocity", False, "HalfCheetah goal velocity (MJX)"),
        ("ant-dir", "jmeta.rl.envs.locomotion:AntDirection", False, "Ant forward/backward (MJX)"),
        ("metaworld-ml1", "jmeta.rl.envs.metaworld:MetaWorldML1", False, "MetaWorld ML1 on the host (metaworld)")):
    register(Entry("task", _name, _target, check_by_building=_build, doc=_doc))
register(Entry("model", "gaussian-mlp", "jmeta.rl.policies:gaussian_mlp_policy",
               wiring=("obs_size", "action_size", "key"), check_by_building=False,
               doc="Gaussian MLP policy with a learned log-std (MAML-RL, ProMP)"))
register(Entry("model", "gru", "jmeta.rl.recurrent:gru_policy", wiring=("input_size", "num_actions", "key"),
               check_by_building=False, doc="GRU categorical policy with a value head (RL^2)"))
register(Entry("model", "gaussian-gru", "jmeta.rl.recurrent:gaussian_gru_policy",
               wiring=("input_size", "action_size", "key"), check_by_building=False,
               doc="GRU Gaussian policy with a learned log-std and a value head (RL^2, continuous actions)"))
# Built with the environment and the policy (jmeta.run.rl.build): their values are checked there, by the
# constructors; the option names here.
register(Entry("algorithm", "maml-rl", "jmeta.rl.maml_rl:MAMLRL", wiring=("env", "policy", "num_tasks"),
               check_by_building=False, doc="MAML-RL: DiCE/LVC/first-order inner step, TRPO or PPO outer step"))
register(Entry("algorithm", "promp", "jmeta.rl.maml_rl:ProMP", wiring=("env", "policy", "num_tasks"),
               check_by_building=False, doc="ProMP (Rothfuss et al. 2019): LVC, PPO-clip, inner KL penalty"))
register(Entry("algorithm", "rl2", "jmeta.run.rl:rl2", wiring=("env", "policy", "meta_batch_size"),
               check_by_building=False, doc="RL^2 (Duan et al. 2016): GRU over a trial, PPO-clip"))


#: The environment families of meta-RL (``task.family``), wired by :mod:`jmeta.run.rl`.
RL_FAMILIES = ("nav2d", "nav2d-corner", "bandit", "tabular-mdp", "cheetah-dir", "cheetah-vel", "ant-dir",
               "metaworld-ml1")
#: Meta-RL families whose episodes run on the host (not inside jit).
HOST_FAMILIES = ("metaworld-ml1",)
#: The meta-RL algorithms and the policies (``model.name``) each takes (RL^2: ``gru`` for discrete actions,
#: ``gaussian-gru`` for continuous ones).
RL_ALGORITHMS = {"maml-rl": ("gaussian-mlp",), "promp": ("gaussian-mlp",), "rl2": ("gru", "gaussian-gru")}


def is_rl(cfg) -> bool:
    """Whether ``cfg`` is a meta-RL config (its task family is an environment)."""
    return cfg.task.family in RL_FAMILIES


def check_rl(cfg) -> None:
    """A :class:`ConfigError` unless ``cfg``'s task, model and algorithm are all meta-RL or all supervised, and a
    meta-RL algorithm has its policy (the environment's kind and sizes are checked by the constructors)."""
    family, model, algo = cfg.task.family, cfg.model.name, cfg.algorithm.name
    if family in RL_FAMILIES:
        if algo not in RL_ALGORITHMS:
            raise ConfigError(f"task.family={family!r} is a meta-RL environment; algorithm.name must be one of "
                              f"{list(RL_ALGORITHMS)}, got {algo!r}")
        if model not in RL_ALGORITHMS[algo]:
            want = " or ".join(repr(m) for m in RL_ALGORITHMS[algo])
            raise ConfigError(f"algorithm.name={algo!r} needs model.name={want}, got {model!r}")
    elif algo in RL_ALGORITHMS or any(model in ms for ms in RL_ALGORITHMS.values()):
        raise ConfigError(f"algorithm.name={algo!r} with model.name={model!r} is meta-RL; task.family must be one "
                          f"of {list(RL_FAMILIES)}, got {family!r}")


def inner_transform(inner_optimizer: str):
    """The ``inner_transform`` of the config option ``inner_optimizer``: ``None`` for ``"sgd"``, Adam's scaling
    with ``eps_root=1e-8`` (differentiable at zero gradients) for ``"adam"``."""
    if inner_optimizer == "adam":
        import optax

        return optax.scale_by_adam(eps_root=1e-8)
    return None


def algorithm_wiring(entry: Entry, *, apply, loss: str, n_way, eval_steps, inner_optimizer: str = "sgd",
                     conv_impl: str | None = None) -> dict:
    """The constructor arguments the wiring supplies to the algorithm ``entry`` (those in ``entry.wiring``):
    the model's ``apply``, the loss, the ways, ``eval_steps``, the :func:`inner_transform` of
    ``inner_optimizer`` and iMAML's ``hvp`` (``conv_impl`` is the model's resolved convolution form:
    custom_vjp convolutions, ``patches_vjp``, have no forward mode)."""
    values = {"apply": apply, "loss": loss, "n_way": n_way, "eval_steps": eval_steps,
              "inner_transform": inner_transform(inner_optimizer),
              "hvp": "reverse" if conv_impl == "patches_vjp" else "forward"}
    return {k: v for k, v in values.items() if k in entry.wiring}
