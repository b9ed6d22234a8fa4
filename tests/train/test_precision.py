"""Mixed precision: bfloat16 compute, float32 parameters and meta-gradient accumulation."""

from __future__ import annotations

import functools
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _problems import tiny_model  # noqa: E402

from jmeta.algorithms import MAML  # noqa: E402
from jmeta.tasks import Sinusoid, TaskBatch  # noqa: E402
from jmeta.train import precision  # noqa: E402
from jmeta.train.step import batched_loss_and_grad, init_train_state, make_meta_step  # noqa: E402


def test_cast_helpers():
    tree = {"w": jnp.ones(2), "n": jnp.ones(2, jnp.int32), "k": jax.random.key(0)}
    c = precision.cast_floating(tree, jnp.bfloat16)
    assert c["w"].dtype == jnp.bfloat16 and c["n"].dtype == jnp.int32
    assert jax.dtypes.issubdtype(c["k"].dtype, jax.dtypes.prng_key)
    back = precision.restore_dtypes(c, tree)
    assert back["w"].dtype == jnp.float32
    assert precision.tree_dtypes(precision.to_float32(c)) >= {"float32", "int32"}
    assert precision.canonical_compute_dtype(None) is None
    assert precision.canonical_compute_dtype("bfloat16") == jnp.bfloat16
    for bad in ("int8", "float8", 3):
        with pytest.raises(ValueError, match="compute_dtype"):
            precision.canonical_compute_dtype(bad)


@pytest.fixture(scope="module")
def problem():
    model = tiny_model(40)
    alg = MAML(model.apply, inner_lr=0.05, num_steps=1)
    return model, alg


def test_bf16_gradient_is_float32_and_close(problem):
    model, alg = problem
    tasks = Sinusoid(k_support=10, k_query=10).sample(jax.random.key(5), 8)
    keys = jax.random.split(jax.random.key(6), 8)
    mp = alg.init(model.params)
    run = lambda dt: jax.jit(functools.partial(batched_loss_and_grad, alg, compute_dtype=dt))(  # noqa: E731
        mp, model.state, tasks, keys, 0)
    obj32, g32, m32, s32 = run(None)
    obj16, g16, m16, s16 = run(jnp.bfloat16)
    assert obj16.dtype == jnp.float32 and m16["loss"].dtype == jnp.float32
    assert precision.tree_dtypes(g16) == {"float32"}
    assert s16["mean"].dtype == jnp.float32
    np.testing.assert_allclose(obj16, obj32, rtol=3e-2)
    a = jnp.concatenate([x.ravel() for x in jax.tree.leaves(g16)])
    b = jnp.concatenate([x.ravel() for x in jax.tree.leaves(g32)])
    cos = float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))
    assert cos > 0.99, cos
    assert not np.allclose(a, b, rtol=1e-6, atol=0), "bf16 mode computed in float32"


def test_bf16_compute_really_happens(problem):
    model, alg = problem
    opt = optax.adam(1e-3)
    step = make_meta_step(alg, Sinusoid().sample, opt, meta_batch_size=4, compute_dtype=jnp.bfloat16, jit=False)
    state = init_train_state(alg, model.params, model.state, opt)
    jaxpr = str(jax.make_jaxpr(step)(state, jax.random.key(0)))
    assert "bf16" in jaxpr


def test_bf16_trains_and_keeps_float32_params(problem):
    model, alg = problem
    opt = optax.adam(1e-2)
    tasks = Sinusoid(k_support=10, k_query=10)
    step = make_meta_step(alg, tasks.sample, opt, meta_batch_size=8, compute_dtype=jnp.bfloat16)
    state = init_train_state(alg, model.params, model.state, opt)
    losses = []
    key = jax.random.key(0)
    for _ in range(400):
        state, m = step(state, key)
        losses.append(m["loss"])
    losses = np.asarray(jax.device_get(losses))
    assert np.all(np.isfinite(losses))
    first, last = losses[:50].mean(), losses[-50:].mean()
    assert last < 0.7 * first, (first, last)
    assert precision.tree_dtypes(state.meta_params) == {"float32"}
    assert precision.tree_dtypes(state.opt_state) <= {"float32", "int32"}
    assert state.model_state["mean"].dtype == jnp.float32


def test_mixed_precision_task_loss_contract(problem):
    model, alg = problem
    task = TaskBatch(*(a[0] for a in Sinusoid().sample(jax.random.key(1), 1)))
    f = precision.mixed_precision_task_loss(alg, "bfloat16")
    obj, aux = jax.jit(f)(alg.init(model.params), model.state, task)
    assert obj.dtype == jnp.float32 and aux["metrics"]["loss"].dtype == jnp.float32
    assert aux["model_state"]["mean"].dtype == jnp.float32


def test_bf16_keeps_the_model_state_in_float32():
    """A running statistic updated by small increments (momentum 0.9, inputs of mean 1.03 from 1.0) stalled at
    1.001 when the state was cast to bfloat16 (increments below its spacing rounded away); the state now stays
    float32 and follows float32 up to the bf16 rounding of the inputs (1.03 -> 1.0312)."""
    from jmeta.algorithms import MAML
    from jmeta.models import from_apply
    from jmeta.tasks.base import TaskBatch
    from jmeta.train.step import init_train_state, make_meta_step

    def apply(params, state, x, *, train):
        if train:
            state = {"mean": 0.9 * state["mean"] + 0.1 * jnp.mean(x)}
        return x @ params["w"], state

    model = from_apply(apply, {"w": jnp.ones((1, 1))}, {"mean": jnp.ones(())})
    algo = MAML(model.apply, inner_lr=0.01, num_steps=1)

    def sample(key, n, data=None):
        x = 1.03 + 0.01 * jax.random.normal(key, (n, 10, 1))
        return TaskBatch(x, x, x, x)

    opt = optax.sgd(0.0)
    means = {}
    for cd in (None, "bfloat16"):
        step = make_meta_step(algo, sample, opt, meta_batch_size=4, compute_dtype=cd)
        st = init_train_state(algo, model.params, model.state, opt)
        for _ in range(100):
            st, _ = step(st, jax.random.key(0))
        assert st.model_state["mean"].dtype == jnp.float32
        means[cd] = float(st.model_state["mean"])
    assert abs(means[None] - 1.0302) < 1e-3 and abs(means["bfloat16"] - means[None]) < 2e-3, means


def test_conv4_and_resnet12_activations_stay_bf16_with_a_float32_state():
    from jmeta.models import conv4
    from jmeta.models.resnet import resnet12

    for model, shape in ((conv4(5, input_shape=(28, 28, 1)), (2, 28, 28, 1)),
                         (resnet12(5, input_shape=(16, 16, 3), widths=(4, 4, 4, 4)), (2, 16, 16, 3))):
        params = precision.cast_floating(model.params, jnp.bfloat16)
        for train in (True, False):  # dtypes only: traced, not run
            out, new_state = jax.eval_shape(functools.partial(model.apply, train=train), params, model.state,
                                            jax.ShapeDtypeStruct(shape, jnp.bfloat16))
            assert out.dtype == jnp.bfloat16
            assert {x.dtype for x in jax.tree.leaves(new_state)} == {jnp.dtype(jnp.float32)}


def test_float64_model_state_is_averaged_in_float64(x64):
    """Per-task states were averaged in float32: a float64 running mean lost its last digits."""
    from jmeta.train.step import _mean_state

    old = {"m": jnp.ones((), jnp.float64), "n": jnp.zeros((), jnp.int32)}
    states = {"m": jnp.full((4,), 1.0 + 1e-9, jnp.float64), "n": jnp.arange(4, dtype=jnp.int32)}
    new = _mean_state(states, old)
    assert new["m"].dtype == jnp.float64 and abs(float(new["m"]) - (1.0 + 1e-9)) < 1e-15
    assert int(new["n"]) == 3
