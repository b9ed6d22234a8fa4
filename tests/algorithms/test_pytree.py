"""Algorithms are pytrees with static hyperparameters (:func:`jmeta._struct.static_dataclass`).

Every registered algorithm (the conformance test's tiny instances) and the meta-RL algorithms: no leaves;
equal hyperparameters give equal treedefs, so a jitted function taking the algorithm as an *argument* traces
once for equal instances and again for different ones; construction and ``dataclasses.replace`` check and
normalise the fields (no mutation of frozen instances anywhere).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_conformance import FACTORIES, init_params, sample

import jmeta
from jmeta._struct import frozen_dataclass, hparam, static_dataclass
from jmeta.tasks import task_at


def _changed(alg):
    """``dataclasses.replace`` of ``alg`` with one hyperparameter changed (a float if it has one)."""
    for f in dataclasses.fields(alg):
        v = getattr(alg, f.name)
        if isinstance(v, float) and not isinstance(v, bool):
            return dataclasses.replace(alg, **{f.name: v * 0.5 if v else 0.5})
    for f in dataclasses.fields(alg):
        v = getattr(alg, f.name)
        if isinstance(v, bool):
            return dataclasses.replace(alg, **{f.name: not v})
    raise AssertionError(f"{type(alg).__name__} has no float or flag field to change")


@pytest.fixture(scope="module")
def one_task():
    return task_at(sample(jax.random.key(0), 1), 0)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_algorithm_is_a_static_pytree_and_an_argument_of_jit(name, one_task):
    alg, same = FACTORIES[name](), FACTORIES[name]()
    other = _changed(alg)
    assert jax.tree.leaves(alg) == []
    assert jax.tree.structure(alg) == jax.tree.structure(same)
    assert hash(jax.tree.structure(alg)) == hash(jax.tree.structure(same))
    assert jax.tree.structure(alg) != jax.tree.structure(other)
    assert jax.tree.map(lambda x: x, alg) is alg  # unflattening gives the instance back (no re-construction)
    assert alg != same  # the instances keep identity equality (eq=False); only the treedefs compare fields

    params = init_params(jax.random.key(1))
    traces = []

    @jax.jit
    def loss(algorithm, meta_params, task):
        traces.append(type(algorithm).__name__)
        return algorithm.task_loss(meta_params, None, task, key=jax.random.key(2))[0]

    a = loss(alg, alg.init(params), one_task)
    b = loss(same, same.init(params), one_task)
    assert len(traces) == 1  # equal hyperparameters: no retrace
    np.testing.assert_array_equal(a, b)
    # the algorithm used directly (closed over: a constant of the program, not an argument) gives the same loss
    direct = jax.jit(lambda meta_params, task: alg.task_loss(meta_params, None, task, key=jax.random.key(2))[0])
    np.testing.assert_allclose(a, direct(alg.init(params), one_task), rtol=1e-5, atol=1e-6)
    # lower() shares jit's trace cache (an equal treedef would not retrace) and skips the XLA compile
    loss.lower(other, other.init(params), one_task)
    assert len(traces) == 2  # a different hyperparameter: a new program


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_replace_checks_and_normalises(name):
    alg = FACTORIES[name]()
    for f in dataclasses.fields(alg):
        v = getattr(alg, f.name)
        if isinstance(v, float) and not isinstance(v, bool):
            with pytest.raises(ValueError, match=f.name):
                dataclasses.replace(alg, **{f.name: "0.1"})
            got = dataclasses.replace(alg, **{f.name: np.float32(v)})
            assert type(getattr(got, f.name)) is float  # NumPy scalars are stored as Python numbers
        elif isinstance(v, int) and not isinstance(v, bool) and f.name != "n_way":
            with pytest.raises(ValueError, match=f.name):
                dataclasses.replace(alg, **{f.name: -1})
            got = dataclasses.replace(alg, **{f.name: np.int64(v)})
            assert type(getattr(got, f.name)) is int


def test_subclass_default_keeps_the_base_check_and_lists_become_tuples():
    apply = FACTORIES["MAML"]().apply
    assert jmeta.FOMAML(apply).first_order is True
    with pytest.raises(ValueError, match="first_order must be True or False"):
        jmeta.FOMAML(apply, first_order="yes")
    anil = jmeta.ANIL(apply, adapt_params=["layers_1"])
    assert anil.adapt_params == ("layers_1",)
    assert jax.tree.structure(anil) == jax.tree.structure(jmeta.ANIL(apply, adapt_params=("layers_1",)))
    with pytest.raises(ValueError, match="adapt_params must be None"):
        jmeta.MAML(apply, adapt_params=[])


def test_with_hparams_traced_values_still_pass():
    """The vectorised sweep's copies hold traced floats: construction lets them through unchecked."""
    from jmeta.train.vectorized import with_hparams

    alg = FACTORIES["MAML"]()
    lrs = jax.vmap(lambda lr: jnp.asarray(with_hparams(alg, inner_lr=lr).inner_lr) * 2)(jnp.array([0.1, 0.2]))
    np.testing.assert_allclose(lrs, [0.2, 0.4])
    with pytest.raises(ValueError, match="inner_lr must be a number > 0"):
        with_hparams(alg, inner_lr=-1.0)


def test_meta_rl_algorithms_are_static_pytrees():
    from jmeta.rl import MAMLRL, RL2, PPOConfig, gaussian_mlp_policy, gru_policy, rl2_input_size
    from jmeta.rl.envs import BernoulliBandit, Nav2D

    env = Nav2D(horizon=4)
    policy = gaussian_mlp_policy(2, 2, (4,), key=jax.random.key(0))
    a, b = MAMLRL(env, policy, num_tasks=2, num_episodes=2), MAMLRL(env, policy, num_tasks=2, num_episodes=2)
    assert jax.tree.leaves(a) == [] and jax.tree.structure(a) == jax.tree.structure(b)
    assert jax.tree.structure(a) != jax.tree.structure(dataclasses.replace(a, inner_lr=0.2))
    bandit = BernoulliBandit(num_arms=3, horizon=2)
    gru = gru_policy(rl2_input_size(bandit), bandit.action_size, hidden_size=4, key=jax.random.key(0))
    r = RL2(bandit, gru, num_episodes=np.int64(2), meta_batch_size=4, ppo=PPOConfig(num_minibatches=2))
    assert type(r.num_episodes) is int and jax.tree.leaves(r) == []
    assert jax.tree.structure(r) == jax.tree.structure(RL2(bandit, gru, num_episodes=2, meta_batch_size=4,
                                                           ppo=PPOConfig(num_minibatches=2)))
    with pytest.raises(ValueError, match="discount"):
        dataclasses.replace(r, discount=2.0)


def test_static_dataclass_helper():
    @static_dataclass
    class Opts:
        lr: float = hparam(0.1, jmeta.validate.number, min=0)
        names: tuple = hparam((), lambda name, v: tuple(v))

    o = Opts(lr=np.float32(0.5), names=["a"])
    assert o.lr == 0.5 and type(o.lr) is float and o.names == ("a",)
    with pytest.raises(ValueError, match="lr must be a number >= 0; got -1"):
        Opts(lr=-1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.lr = 1.0
    with pytest.raises(TypeError, match="unexpected keyword argument 'foo'"):
        Opts(foo=1)
    assert jax.jit(lambda opts, x: x * opts.lr)(o, 2.0) == 1.0

    @static_dataclass
    class Bad:
        items: list = None

    traces = []
    f = jax.jit(lambda opts: traces.append(1) or 0)
    f(Bad(items=[1]))
    f(Bad(items=[1]))  # jit compares the treedefs' field values (equal lists too)
    assert len(traces) == 1
    with pytest.raises(TypeError, match="field\\(s\\) items are not"):
        hash(jax.tree_util.treedef_children(jax.tree.structure((Bad(items=[1]),)))[0].node_data())

    @frozen_dataclass
    class Plain:
        n: int = hparam(1, jmeta.validate.integer, min=1)

    assert Plain(np.int32(3)) == Plain(3) and jax.tree.leaves(Plain()) == [Plain()]  # not a pytree node
