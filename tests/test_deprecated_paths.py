"""Old import paths and names of moved or renamed code: each still works, warns once naming the new one, and is
the same object."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest

#: old dotted path -> new home (issue 17: the run layer moved into jmeta.run).
MOVED = {
    "jmeta.config": "jmeta.run.config",
    "jmeta.experiment": "jmeta.run.experiment",
    "jmeta.export": "jmeta.run.export",
    "jmeta.plots": "jmeta.run.plots",
    "jmeta.sweep": "jmeta.run.search",
    "jmeta.cli": "jmeta.run.cli",
    "jmeta.train.runner": "jmeta.run.runner",
    "jmeta.train.checkpoint": "jmeta.run.checkpoint",
    "jmeta.train.lock": "jmeta.run.lock",
    "jmeta.train.interrupt": "jmeta.run.interrupt",
    "jmeta.train.logging": "jmeta.run.logs",
    "jmeta.train.tensorboard": "jmeta.run.tensorboard",
    "jmeta.train.wandb_logger": "jmeta.run.wandb_logger",
    "jmeta.train.sweep": "jmeta.train.vectorized",  # the vmapped engine, apart from jmeta.run.search
    "jmeta.learned_optim.tasks": "jmeta.learned_optim.optimizees",
}


def _fresh_import(old: str):
    """``import old`` twice from a fresh start, in code whose file name is ``<importer>``; the warnings."""
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scope: dict = {}
        exec(compile(f"import {old}\nimport {old}\nfirst = sys.modules[{old!r}]", "<importer>", "exec"),
             {"sys": sys}, scope)
    return scope["first"], [w for w in caught if issubclass(w.category, DeprecationWarning)]


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_imports_warns_once_and_is_the_new_module(old):
    new = importlib.import_module(MOVED[old])
    module, warned = _fresh_import(old)
    assert len(warned) == 1, [str(w.message) for w in warned]
    message = str(warned[0].message)
    assert MOVED[old] in message and old in message
    assert warned[0].filename == "<importer>"  # attributed to the import line, not to the shim
    assert module is new  # every name, private ones included, is the same object
    parent, _, child = old.rpartition(".")
    assert getattr(sys.modules[parent], child) is new
    public = [n for n in vars(new) if not n.startswith("_")]
    scope: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # already imported: no second warning
        exec(f"from {old} import {', '.join(public)}", scope)
    assert all(scope[n] is getattr(new, n) for n in public)


def test_jmeta_config_attribute_is_the_deprecated_alias():
    import jmeta
    import jmeta.run.config

    sys.modules.pop("jmeta.config", None)
    vars(jmeta).pop("config", None)
    with pytest.warns(DeprecationWarning, match=r"jmeta\.run\.config"):
        assert jmeta.config is jmeta.run.config
    assert "config" not in jmeta.__all__


def test_train_evaluate_is_the_function_and_evaluation_the_module():
    import types

    import jmeta.train
    import jmeta.train.evaluation

    assert isinstance(jmeta.train.evaluation, types.ModuleType)
    assert callable(jmeta.train.evaluate) and jmeta.train.evaluate is jmeta.train.evaluation.evaluate
    import jmeta.train.evaluate  # noqa: F401  (the old module path: imports, and leaves the function in place)

    assert jmeta.train.evaluate is jmeta.train.evaluation.evaluate


def test_the_old_evaluate_module_path_answers_from_evaluation_and_warns_once():
    import jmeta.train.evaluation as E
    from jmeta._deprecation import renamed_module

    import jmeta.train  # noqa: F401

    saved = sys.modules.pop("jmeta.train.evaluate")
    try:
        renamed_module("jmeta.train.evaluate", "jmeta.train.evaluation")  # a fresh stand-in: not warned yet
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scope: dict = {}
            exec(compile("from jmeta.train.evaluate import mean_ci95, task_statistics\n"
                         "from jmeta.train.evaluate import evaluate", "<importer>", "exec"), scope)
        warned = [w for w in caught if issubclass(w.category, DeprecationWarning)]
        assert [str(w.message).split(":")[0] for w in warned] == [
            "jmeta.train.evaluate was renamed jmeta.train.evaluation"]
        assert warned[0].filename == "<importer>"
        assert (scope["mean_ci95"], scope["task_statistics"], scope["evaluate"]) == (E.mean_ci95, E.task_statistics,
                                                                                    E.evaluate)
        with pytest.raises(ImportError, match="no_such_name"):
            exec("from jmeta.train.evaluate import no_such_name", {})
    finally:
        sys.modules["jmeta.train.evaluate"] = saved


def test_the_old_learned_optimizer_meta_step_name_warns_and_builds_the_same_step():
    import jax
    import jax.numpy as jnp
    import optax

    from jmeta.learned_optim import make_meta_step, make_optimizer_meta_step
    from jmeta.learned_optim.train import MetaTrainState

    class Estimator:  # the gradient of 0.5 * theta**2
        def grad(self, theta, worker_state, key):
            return theta, worker_state, {"loss": 0.5 * jnp.sum(theta ** 2)}

    opt = optax.sgd(0.5)
    state = MetaTrainState(jnp.ones(3), opt.init(jnp.ones(3)), (), jnp.zeros((), jnp.int32))
    with pytest.warns(DeprecationWarning, match="make_optimizer_meta_step") as record:
        old = make_meta_step(Estimator(), opt)
    assert record[0].filename == __file__
    new = make_optimizer_meta_step(Estimator(), opt)
    (s_old, m_old), (s_new, m_new) = old(state, jax.random.key(0)), new(state, jax.random.key(0))
    assert float(s_old.theta[0]) == float(s_new.theta[0]) == 0.5 and int(s_old.step) == 1
    assert float(m_old["loss"]) == float(m_new["loss"]) == 1.5
    import jmeta.learned_optim as LO

    assert "make_meta_step" not in LO.__all__ and "make_optimizer_meta_step" in LO.__all__


def test_meta_lstm_from_config_is_deprecated_and_builds_what_the_run_layer_builds():
    import dataclasses

    from jmeta.learned_optim import MetaLSTM
    from jmeta.run import config as C
    from jmeta.run.experiment import build_algorithm

    def apply(params, state, x, **kw):
        return x @ params["w"], state

    cfg = C.apply_overrides(C.load("miniimagenet-5w5s-meta-lstm"), ["algorithm.eval_steps=3"])
    built = build_algorithm(cfg, apply, loss="cross_entropy")
    assert (built.num_steps, built.eval_steps, built.second_order) == (8, 3, False)
    with pytest.warns(DeprecationWarning, match="build_algorithm") as record:
        old = MetaLSTM.from_config(cfg, apply=apply, loss="cross_entropy")
    assert record[0].filename == __file__
    assert all(getattr(old, f.name) == getattr(built, f.name) for f in dataclasses.fields(MetaLSTM))
