"""Algorithm-, model- and task-owned config sections (jmeta.run.registry), the earlier flat config.json, presets
as files.

``tests/config_v0`` was written by the jmeta before the registry (flat sections with every key): two config.json
as ``jmeta train`` wrote them, every preset's config and algorithm object (``presets.json``), and a summary of the
experiments the two config.json built (``built.json``, from :func:`summary` run with that version).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest

from jmeta.run import config as C
from jmeta.run import registry as R

V0 = pathlib.Path(__file__).parent / "config_v0"


def summary(exp):
    """What a built experiment is made of, as JSON: the algorithm's fields, the model's parameter shapes and the
    shapes of a sampled training and evaluation batch."""
    import jax

    algo = {}
    for f in dataclasses.fields(exp.algorithm):
        v = getattr(exp.algorithm, f.name)
        if f.name == "apply":
            continue
        if f.name == "inner_transform":
            v = None if v is None else "adam"
        algo[f.name] = list(v) if isinstance(v, tuple) else v
    shapes = {jax.tree_util.keystr(p): [list(x.shape), round(float(abs(x).sum()), 3)]
              for p, x in jax.tree_util.tree_leaves_with_path(exp.model.params)}
    args = () if exp.train_data is None else (exp.train_data,)
    batch = exp.train_sample(jax.random.key(0), 2, *args)
    eargs = () if exp.eval_data is None else (exp.eval_data,)
    evals = {str(k): [list(x.shape) for x in jax.tree.leaves(s(jax.random.key(0), 2, *eargs))]
             for k, s in exp.eval_samples.items()}
    return {"algorithm": algo, "params": shapes, "train_batch": [list(x.shape) for x in jax.tree.leaves(batch)],
            "eval_batches": evals, "task_kind": exp.task_kind, "task_parallel": exp.task_parallel,
            "conv_impl": exp.conv_impl}


def _algorithm_fields(obj) -> dict:
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if f.name == "apply":
            continue
        if f.name == "inner_transform":
            v = None if v is None else "adam"
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


@pytest.mark.parametrize("name", ["sinusoid-maml", "omniglot-5w1s-maml"])
def test_a_v0_config_json_loads_into_the_new_shape_and_builds_the_same_experiment(name, monkeypatch):
    import numpy as np

    from jmeta.run import experiment
    from jmeta.data import ClassStore

    store = ClassStore(np.zeros((6, 20, 28, 28, 1), np.uint8), [f"c{i}" for i in range(6)], "toy")
    monkeypatch.setattr(experiment, "load_image_data", lambda cfg, data_dir=None: (store, store))
    old = json.loads((V0 / f"{name}.json").read_text())
    cfg = C.load(str(V0 / f"{name}.json"))
    d = json.loads(cfg.to_json())
    assert d["algorithm"] == {"name": "maml", **R.get("algorithm", "maml").options(),
                              "inner_lr": old["algorithm"]["inner_lr"], "num_steps": old["algorithm"]["inner_steps"]}
    for unused in ("svm_c", "cg_steps", "reg_lambda", "label_smoothing", "eval_steps", "inner_steps"):
        assert unused not in d["algorithm"]
    if name.startswith("sinusoid"):
        assert set(d["task"]) == {"family", "k_support", "k_query", "amplitude", "phase", "x_range", "dtype"}
        assert d["model"] == {"name": "mlp", "hidden": [40, 40], "activation": "relu"}
    else:
        assert d["task"] == {"family": "omniglot", "n_way": 5, "k_support": 1, "k_query": 1, "rotations": True,
                             "image_size": 28}
        assert d["model"]["hidden"] == 64 and d["model"]["pool"] == "stride" and "filters" not in d["model"]
    assert d["train"] == old["train"] and d["eval"] == old["eval"]
    assert C.from_dict(json.loads(cfg.to_json())) == cfg  # the new shape loads back as itself
    want = json.loads((V0 / "built.json").read_text())[name]
    assert json.loads(json.dumps(summary(experiment.build(cfg)), sort_keys=True)) == want


def test_v0_options_the_run_did_not_use_drop_at_their_defaults_and_fail_otherwise():
    old = json.loads((V0 / "sinusoid-maml.json").read_text())
    old["algorithm"]["cg_steps"] = 5  # the old default: dropped
    assert "cg_steps" not in C.from_dict(old).algorithm.to_dict()
    for section, key, value in (("algorithm", "svm_c", 0.5), ("algorithm", "label_smoothing", 0.1),
                                ("model", "filters", 32), ("task", "n_way", 20)):
        bad = json.loads(json.dumps(old))
        bad[section][key] = value
        with pytest.raises(C.ConfigError, match=rf"{section}.{key}={value!r} \(a config.json of an earlier jmeta\) "
                                                rf"is not an option of {section}.(name|family)="):
            C.from_dict(bad)


def test_every_preset_is_the_earlier_preset():
    """Each preset file gives the config the earlier code built, and the same algorithm object."""
    from jmeta.run.experiment import build_algorithm

    v0 = json.loads((V0 / "presets.json").read_text())
    assert sorted(n for n in C.PRESETS if n not in RL_PRESETS) == sorted(v0["presets"])
    for name, old in v0["presets"].items():
        cfg = C.load(name)
        d = json.loads(cfg.to_json())
        assert d == json.loads(C.from_dict(old).to_json()), name
        assert d["train"] == old["train"] and d["eval"] == old["eval"] and d["name"] == old["name"], name
        loss = "mse" if cfg.task.family == "sinusoid" else "cross_entropy"
        conv = None if loss == "mse" else ("patches_vjp" if cfg.algorithm.name == "imaml" else "lax")
        algo = build_algorithm(cfg, lambda *a, **k: None, loss=loss, conv_impl=conv)
        want = dict(v0["algorithms"][name])
        assert type(algo).__name__ == want.pop("class") or want["loss"] in ("mse", "cross_entropy"), name
        assert _algorithm_fields(algo) == want, name


#: The meta-RL presets (the earlier jmeta had none) and the constructor arguments each must hold.
RL_PRESETS = {
    "nav2d-maml-trpo": dict(num_tasks=20, num_episodes=20, inner_lr=0.1, estimator="dice", outer="trpo", max_kl=0.01),
    "nav2d-promp": dict(num_tasks=40, num_episodes=20, inner_lr=0.1, estimator="lvc", outer="ppo", outer_lr=1e-3,
                        ppo_epochs=5, clip_eps=0.3, inner_kl_penalty=5e-4, target_inner_kl=0.01),
    "cheetah-dir-maml-trpo": dict(num_tasks=40, num_episodes=20, inner_lr=0.1, outer="trpo", max_kl=0.01),
    "cheetah-vel-maml-trpo": dict(num_tasks=40, num_episodes=20, inner_lr=0.1, outer="trpo", max_kl=0.01),
    "ant-dir-maml-trpo": dict(num_tasks=40, num_episodes=20, inner_lr=0.1, outer="trpo", max_kl=0.01),
    "bandit-rl2": dict(meta_batch_size=64, num_episodes=10, discount=0.99),
    "tabular-mdp-rl2": dict(meta_batch_size=64, num_episodes=10, discount=0.99),
    "nav2d-rl2": dict(meta_batch_size=200, num_episodes=2, discount=0.99, gae_lambda=1.0),
    "metaworld-ml1-reach-maml-trpo": dict(num_tasks=20, num_episodes=10, inner_lr=0.1, estimator="reinforce",
                                          outer="trpo", max_kl=0.01),
}


@pytest.mark.parametrize("name", sorted(RL_PRESETS))
def test_every_meta_rl_preset_builds_its_algorithm(name):
    """Each meta-RL preset's sections hold only their entries' options, and (environments that need no MuJoCo)
    build the algorithm with the preset's values; the MJX ones are checked without building (no mujoco import)."""
    import sys

    cfg = C.load(name)
    assert R.is_rl(cfg) and cfg.train.steps > 0, name
    for kind in ("task", "model", "algorithm"):
        section = getattr(cfg, kind)
        assert set(section.to_dict()) == {section.key, *section.entry.options()}, (name, kind)
    if cfg.task.family in ("cheetah-dir", "cheetah-vel", "ant-dir"):
        assert "mujoco" not in sys.modules or "jmeta.rl.envs.locomotion" in sys.modules
        assert cfg.task.horizon == 200 and cfg.model.hidden == (100, 100)
        return
    if cfg.task.family == "metaworld-ml1":  # the algorithm needs the metaworld venv (tests/rl/test_metaworld.py)
        assert (cfg.task.horizon, cfg.model.hidden, cfg.train.meta_batch_size) == (500, (100, 100), 20)
        want = {k: v for k, v in RL_PRESETS[name].items() if k != "num_tasks"}
        assert {k: getattr(cfg.algorithm, k) for k in want} == want
        return
    from jmeta.run.rl import build

    algo = build(cfg).algorithm
    for key, want in RL_PRESETS[name].items():
        assert getattr(algo, key) == want, (name, key)


def test_preset_files_name_their_command_and_jmeta_presets_lists_them(capsys):
    from jmeta.run.cli import main

    for name, preset in C.PRESETS.items():
        assert f"    jmeta train --config {name}\n" in preset.doc, name
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [x.split()[0] for x in lines] == sorted(C.PRESETS)
    assert all(len(x.split()) > 3 for x in lines)


@pytest.mark.parametrize("name", R.names("algorithm"))
def test_an_option_the_algorithm_does_not_have_is_an_error_naming_it(name):
    family = "sinusoid" if name not in ("protonet", "r2d2", "metaoptnet-svm", "metaoptnet-rr", "meta-lstm") \
        else "omniglot"
    base = C.load("sinusoid-maml" if family == "sinusoid" else "omniglot-5w1s-protonet")
    if name in R.RL_ALGORITHMS:
        base = C.load({"maml-rl": "nav2d-maml-trpo", "promp": "nav2d-promp", "rl2": "bandit-rl2"}[name])
    cfg = C.apply_overrides(base, [f"algorithm.name={name}"] + (["algorithm.adapt_params=layers_2"]
                                                                 if name == "anil" else []))
    assert set(cfg.algorithm.to_dict()) == {"name", *R.get("algorithm", name).options()}
    with pytest.raises(C.ConfigError, match=rf"algorithm.filters is not an option of algorithm.name='{name}'; its "
                                            rf"options: \["):
        C.apply_overrides(cfg, ["algorithm.filters=3"])


def test_switching_the_algorithm_keeps_the_changed_options_it_also_has():
    base = C.apply_overrides(C.load("sinusoid-maml"), ["algorithm.inner_lr=0.05", "algorithm.first_order=true"])
    cfg = C.apply_overrides(base, ["algorithm.name=imaml"])
    assert (cfg.algorithm.inner_lr, cfg.algorithm.num_steps) == (0.05, 10)  # iMAML has no first_order: dropped
    assert "first_order" not in cfg.algorithm.to_dict()
    cfg = C.apply_overrides(base, ["algorithm.name=reptile", "algorithm.inner_steps=3"])  # the older name
    assert (cfg.algorithm.name, cfg.algorithm.num_steps, cfg.algorithm.inner_steps) == ("reptile", 3, 3)
    cfg = C.apply_overrides(C.load("miniimagenet-5w1s-metaoptnet-svm"), ["algorithm.svm_c=0.5"])
    assert cfg.algorithm.C == 0.5


def test_the_registry_builds_what_it_lists():
    """Every entry's options are its constructor's keyword arguments less the wiring's and the fixed ones."""
    import inspect

    for kind, table in R.REGISTRY.items():
        for name, entry in table.items():
            ctor = entry.constructor()
            params = set(inspect.signature(ctor).parameters)
            assert set(entry.options()) - set(entry.extra) <= params, (kind, name)
            assert set(entry.wiring) <= params and set(entry.fixed) <= params, (kind, name)
            assert params - set(entry.options()) <= set(entry.wiring) | set(entry.fixed) | {"inner_transform"}, \
                (kind, name)


def test_a_config_copies_pickles_and_reads_older_option_names():
    import copy
    import pickle

    cfg = C.load("omniglot-5w1s-maml")
    assert copy.deepcopy(cfg) == cfg and pickle.loads(pickle.dumps(cfg)) == cfg
    assert (cfg.model.filters, cfg.model.hidden, cfg.algorithm.inner_steps) == (64, 64, 1)
    with pytest.raises(AttributeError, match=r"algorithm 'maml' has no option 'svm_c'; its options: \["):
        cfg.algorithm.svm_c
    with pytest.raises(AttributeError, match="read-only"):
        cfg.algorithm.inner_lr = 0.1
