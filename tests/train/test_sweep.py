"""Vectorised sweeps: n configurations in one program equal n separate runs."""

from __future__ import annotations

import dataclasses
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
from jmeta.tasks import Sinusoid  # noqa: E402
from jmeta.train import vectorized as sweep  # noqa: E402  (the vmapped sweep engine)
from jmeta.train.step import init_train_state, make_meta_step  # noqa: E402

STEPS = 4
HP = {"inner_lr": [0.01, 0.05, 0.1], "meta_lr": [1e-2, 3e-3, 1e-2], "seed": [0, 1, 7]}


def test_sweep_equals_separate_runs():
    model = tiny_model()
    alg = MAML(model.apply, inner_lr=0.01, num_steps=2)
    tasks = Sinusoid(k_support=5, k_query=5)
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    state = sweep.init_sweep(alg, model.params, model.state, opt, HP)
    traces = []

    def sample(key, n, data=None):
        traces.append(1)  # once per trace of the sweep step
        return tasks.sample(key, n)

    step = sweep.make_sweep_step(alg, sample, opt, meta_batch_size=4)
    state, hist = sweep.run_sweep(step, state, STEPS)
    assert len(traces) == 1  # all configurations, all steps: one compiled program
    assert hist["loss"].shape == (STEPS, 3)
    assert int(state.train.step[0]) == STEPS

    for i in range(3):
        # an independent route: a plain run with Python-float hyperparameters and plain optax.adam
        alg_i = dataclasses.replace(alg, inner_lr=HP["inner_lr"][i])
        opt_i = optax.adam(HP["meta_lr"][i])
        st = init_train_state(alg_i, model.params, model.state, opt_i)
        step_i = make_meta_step(alg_i, tasks.sample, opt_i, meta_batch_size=4)
        losses = []
        for _ in range(STEPS):
            st, m = step_i(st, jax.random.key(HP["seed"][i]))
            losses.append(float(m["loss"]))
        np.testing.assert_allclose(hist["loss"][:, i], losses, rtol=2e-5, err_msg=f"config {i}")
        sel = sweep.select(state, i)
        for a, b in zip(jax.tree.leaves(sel.meta_params), jax.tree.leaves(st.meta_params)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=f"config {i}")
        np.testing.assert_allclose(sel.opt_state.hyperparams["learning_rate"], HP["meta_lr"][i], rtol=1e-7)
    # the configurations really differ
    assert not np.allclose(hist["loss"][:, 0], hist["loss"][:, 1])


def test_init_fn_and_errors():
    model = tiny_model()
    alg = MAML(model.apply, inner_lr=0.01, num_steps=1)
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    st = sweep.init_sweep(alg, None, None, opt, {"seed": [0, 1]},
                          init_fn=lambda k: (tiny_model(seed=0).params | {"b2": jax.random.normal(k, (1,))}, {
                              "mean": jnp.zeros(())}))
    b2 = st.train.meta_params["params"]["b2"]
    assert b2.shape == (2, 1) and float(b2[0, 0]) != float(b2[1, 0])
    with pytest.raises(ValueError, match="not a float hyperparameter"):
        sweep.init_sweep(alg, model.params, model.state, opt, {"num_steps": [1, 2]})
    with pytest.raises(ValueError, match="not a hyperparameter"):
        sweep.init_sweep(alg, model.params, model.state, opt, {"outer_lr": [1.0, 2.0]})
    with pytest.raises(ValueError, match="same number of configurations"):
        sweep.init_sweep(alg, model.params, model.state, opt, {"inner_lr": [0.1, 0.2], "meta_lr": [0.1]})
    with pytest.raises(ValueError, match="inject_hyperparams"):
        sweep.init_sweep(alg, model.params, model.state, optax.sgd(0.1), {"meta_lr": [0.1, 0.2]})
    with pytest.raises(ValueError, match="seed"):
        sweep.init_sweep(alg, model.params, model.state, opt, {"seed": [0.5, 1.5]})
    with pytest.raises(ValueError, match="configuration index"):
        sweep.select(st, 5)


def test_with_hparams_is_a_validated_copy():
    """``with_hparams`` is ``dataclasses.replace``: a new instance through the constructor (a concrete value is
    checked, a traced one passes), the original untouched."""
    model = tiny_model()
    alg = MAML(model.apply, inner_lr=0.01, num_steps=1)
    new = sweep.with_hparams(alg, inner_lr=0.5)
    assert new is not alg and new.inner_lr == 0.5 and alg.inner_lr == 0.01
    assert dataclasses.replace(new, inner_lr=0.01).num_steps == alg.num_steps
    with pytest.raises(ValueError, match="inner_lr must be a number > 0"):
        sweep.with_hparams(alg, inner_lr=-1.0)
    traced = jax.jit(lambda lr: jnp.asarray(sweep.with_hparams(alg, inner_lr=lr).inner_lr))(0.25)
    assert float(traced) == 0.25 and alg.inner_lr == 0.01
