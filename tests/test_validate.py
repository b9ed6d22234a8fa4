"""jmeta.validate: one argument check for the whole library; NumPy/JAX scalars accepted as Python numbers."""

from __future__ import annotations

import ast
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jmeta
from jmeta import validate


@pytest.mark.parametrize("value", [3, np.int64(3), np.int32(3), np.uint8(3), jnp.array(3), np.array(3)])
def test_integer_accepts_python_numpy_and_jax_scalars(value):
    out = validate.integer("n", value, min=1, max=3)
    assert out == 3 and type(out) is int


@pytest.mark.parametrize("value, message", [
    (True, r"n must be an integer >= 1; got True \(bool\)"),
    (np.bool_(True), r"n must be an integer >= 1; got np.True_ \(bool\)|got True \(bool"),
    (2.0, r"n must be an integer >= 1; got 2\.0 \(float\)"),
    ("2", r"n must be an integer >= 1; got '2' \(str\)"),
    (np.array([2]), r"n must be an integer >= 1; got array\(\[2\]\) \(ndarray\)"),
    (0, r"n must be an integer >= 1; got 0$"),
])
def test_integer_refusals_name_the_argument_the_value_and_what_is_valid(value, message):
    with pytest.raises(ValueError, match=message):
        validate.integer("n", value, min=1)


def test_integer_bounds_and_optional():
    with pytest.raises(ValueError, match=r"k must be an integer >= 0 and <= 5; got 6"):
        validate.integer("k", 6, min=0, max=5)
    assert validate.integer("k", None, optional=True) is None
    with pytest.raises(ValueError, match=r"k must be an integer; got None \(NoneType\)"):
        validate.integer("k", None)
    with pytest.raises(ValueError, match=r"k must be an integer >= 1 or None; got 'x' \(str\)"):
        validate.integer("k", "x", min=1, optional=True)


@pytest.mark.parametrize("value", [0.5, 1, np.float32(0.5), np.float64(0.5), jnp.array(0.5), jnp.bfloat16(0.5)])
def test_number_accepts_python_numpy_and_jax_scalars(value):
    out = validate.number("lr", value, min=0, min_open=True)
    assert out == float(value) and type(out) is float


@pytest.mark.parametrize("value, message", [
    (float("nan"), r"lr must be a finite number > 0 \(not NaN or infinite\); got nan"),
    (float("inf"), r"lr must be a finite number > 0 \(not NaN or infinite\); got inf"),
    (np.float32("nan"), r"lr must be a finite number > 0"),
    (0.0, r"lr must be a number > 0; got 0\.0"),
    (False, r"lr must be a number > 0; got False \(bool\)"),
    ("0.1", r"lr must be a number > 0; got '0\.1' \(str\)"),
    (jnp.array([0.1, 0.2]), r"lr must be a number > 0; got Array"),
])
def test_number_refusals(value, message):
    with pytest.raises(ValueError, match=message):
        validate.number("lr", value, min=0, min_open=True)


def test_number_infinity_only_when_allowed_and_nan_never():
    assert validate.number("x", float("inf"), finite=False) == math.inf
    with pytest.raises(ValueError, match="x must be a number .*not NaN"):
        validate.number("x", float("nan"), finite=False)


def test_a_tracer_passes_only_with_traced_ok():
    def f(lr):
        assert validate.number("lr", lr, min=0, traced_ok=True) is lr
        with pytest.raises(ValueError, match="lr must be a number"):
            validate.number("lr", lr)
        return lr * 2

    assert float(jax.jit(f)(1.0)) == 2.0


def test_flag_and_choice():
    assert validate.flag("f", np.bool_(True)) is True
    with pytest.raises(ValueError, match=r"f must be True or False; got 1 \(int\)"):
        validate.flag("f", 1)
    assert validate.choice("mode", "a", ("a", "b")) == "a"
    with pytest.raises(ValueError, match=r"mode must be one of 'a', 'b'; got 'c' \(str\)"):
        validate.choice("mode", "c", ("a", "b"))


def test_validate_does_not_import_jax():
    """The data loaders use it; they stay free of jax."""
    import subprocess
    import sys

    code = "import sys, jmeta.validate as v; v.integer('n', 3); v.number('x', 0.5); print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- the library accepts NumPy/JAX scalars wherever a Python number works (issue 20, item 10) ---------------

def test_algorithms_accept_numpy_and_jax_scalars_and_store_python_numbers():
    from jmeta.algorithms import IMAML, MAML, R2D2, MetaOptNet, MetaSGD, ProtoNet
    from jmeta.models import mlp

    apply = mlp().apply
    for lr in (np.float32(0.01), jnp.array(0.01), np.float64(0.01)):
        for cls in (MAML, MetaSGD, IMAML):
            alg = cls(apply, inner_lr=lr, num_steps=np.int64(2))
            assert type(alg.inner_lr) is float and alg.inner_lr == pytest.approx(0.01)
            assert type(alg.num_steps) is int and alg.num_steps == 2
    assert type(R2D2(apply, n_way=np.int64(5), init_lambda=np.float32(2.0)).n_way) is int
    assert MetaOptNet(apply, n_way=np.int32(5), C=np.float32(0.5)).C == 0.5
    assert ProtoNet(apply, n_way=np.int64(5)).n_way == 5


def test_a_numpy_hyperparameter_is_sweepable():
    """Stored as a Python float, ``inner_lr=np.float32(...)`` is a float field the vectorised sweep can vary."""
    from jmeta.algorithms import MAML
    from jmeta.models import mlp
    from jmeta.train.vectorized import with_hparams

    alg = with_hparams(MAML(mlp().apply, inner_lr=np.float32(0.01)), inner_lr=0.5)
    assert alg.inner_lr == 0.5


def test_training_with_numpy_scalars_matches_python_numbers():
    from jmeta.algorithms import MAML
    from jmeta.models import mlp
    from jmeta.tasks import Sinusoid
    from jmeta.train import init_train_state, make_meta_step

    model, opt = mlp(hidden=(8,)), optax.sgd(1e-3)
    losses = []
    for lr, k, b, ks in ((0.01, 2, 4, 5), (np.float32(0.01), np.int64(2), np.int64(4), np.int64(5))):
        alg = MAML(model.apply, inner_lr=lr, num_steps=k)
        step = make_meta_step(alg, Sinusoid(k_support=ks, k_query=ks).sample, opt, meta_batch_size=b)
        state = init_train_state(alg, model.params, model.state, opt)
        _, m = step(state, jax.random.key(0))
        losses.append(float(m["loss"]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_models_tasks_and_loops_accept_numpy_integers():
    from jmeta.inner import inner_loop
    from jmeta.models import conv4, mlp
    from jmeta.tasks import EpisodeSampler, Sinusoid

    assert mlp(in_features=np.int64(1), hidden=(np.int32(4),)).apply is not None
    assert conv4(np.int64(5), input_shape=(8, 8, 1), hidden=np.int64(4), num_blocks=np.int64(1)).params
    assert Sinusoid().sample(jax.random.key(0), np.int64(3)).support_x.shape[0] == 3
    s = EpisodeSampler(n_way=np.int64(2), k_shot=np.int64(1), q_query=np.int64(1))
    assert type(s.n_way) is int
    res = inner_loop(lambda p: jnp.sum(p ** 2), jnp.ones(2), optax.sgd(0.1), np.int64(3))
    assert res.params.shape == (2,)


# -- one house: no duplicated checks, no private names across modules (issue 17, item 5) -------------------

def _jmeta_sources():
    root = pathlib.Path(jmeta.__file__).parent
    return [p for p in root.rglob("*.py") if "rl" not in p.relative_to(root).parts[:1]]


def test_no_private_name_is_imported_across_modules():
    """``from jmeta.x import _name`` (a private function) is refused; private modules (``jmeta._io``) may be
    imported whole, as they are package-internal by their module name."""
    bad = []
    for path in _jmeta_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jmeta"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        is_module = (pathlib.Path(jmeta.__file__).parent.joinpath(
                            *node.module.split(".")[1:], f"{alias.name}.py")).exists()
                        if not is_module:
                            bad.append(f"{path.name}: from {node.module} import {alias.name}")
    assert bad == []


def test_argument_checks_go_through_jmeta_validate():
    """The hand-written ``isinstance(v, bool) or not isinstance(v, int) or v < lo`` check is gone from the library."""
    offenders = []
    for path in _jmeta_sources():
        if path.name == "validate.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if "isinstance(" in line and "bool)" in line and (" < " in line or "<=" in line):
                offenders.append(f"{path.name}:{i}: {line.strip()}")
    assert offenders == []
