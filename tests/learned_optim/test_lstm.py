"""The coordinate-wise LSTM optimizer as an optax transformation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmeta.learned_optim import LSTMOptimizer, LSTMOptimizerState, lstm_optimizer, preprocess_gradients

LOPT = LSTMOptimizer()


@pytest.fixture(scope="module")
def theta():
    return LOPT.init(jax.random.key(0))


def _params():
    return {"dense": {"w": jnp.ones((3, 4)), "b": jnp.zeros((4,))}, "scale": jnp.array(2.0, dtype=jnp.float32)}


def _grads(params, key):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    # drawn flat and reshaped: the numbers of jax.random.normal(k, shape), at a fraction of the compile time
    return treedef.unflatten([jax.random.normal(k, (math.prod(jnp.shape(x)),)).reshape(jnp.shape(x))
                              for k, x in zip(keys, leaves)])


def test_preprocess_matches_paper():
    p = 10.0
    g = jnp.asarray([3.0, -0.5, 1e-6, -2e-5, 0.0])
    out = preprocess_gradients(g, p)
    big = np.abs(np.asarray(g)) >= math.exp(-p)
    expected = np.where(
        big[:, None],
        np.stack([np.log(np.abs(g) + (~big)) / p, np.sign(g)], -1),
        np.stack([-np.ones(5), math.exp(p) * np.asarray(g)], -1),
    )
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    # Finite derivative at g = 0 and on both branches.
    d = jax.vmap(jax.jacfwd(lambda x: preprocess_gradients(x, p)))(g)
    assert np.all(np.isfinite(d))


def test_theta_and_state_shapes(theta):
    assert theta["lstm"]["layer_0"]["w_x"].shape == (2, 80)
    assert theta["lstm"]["layer_0"]["w_h"].shape == (20, 80)
    assert theta["lstm"]["layer_1"]["w_x"].shape == (20, 80)
    assert theta["out"]["w"].shape == (20, 1)
    params = _params()
    opt = LOPT.opt_fn(theta)
    state = opt.init(params)
    assert isinstance(state, LSTMOptimizerState)
    for p, h, c in zip(jax.tree.leaves(params), jax.tree.leaves(state.hidden), jax.tree.leaves(state.cell)):
        assert h.shape == jnp.shape(p) + (2, 20) and c.shape == h.shape
        assert not np.any(h) and not np.any(c)
    updates, state2 = opt.update(_grads(params, jax.random.key(1)), state)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    for p, u in zip(jax.tree.leaves(params), jax.tree.leaves(updates)):
        assert u.shape == jnp.shape(p) and np.all(np.isfinite(u))
    assert jax.tree.structure(state2) == jax.tree.structure(state)
    assert any(np.any(h) for h in jax.tree.leaves(state2.hidden))


def test_coordinatewise_and_permutation_equivariant(theta):
    opt = LOPT.opt_fn(theta)
    g = jax.random.normal(jax.random.key(2), (7,))
    perm = jnp.asarray([3, 1, 6, 0, 2, 5, 4])
    u, _ = opt.update(g, opt.init(g))
    u_perm, _ = opt.update(g[perm], opt.init(g))
    np.testing.assert_allclose(u[perm], u_perm, rtol=1e-6)
    # Same gradient value in two different leaves -> same update.
    u2, _ = opt.update({"a": g[:2], "b": g[:2]}, opt.init({"a": g[:2], "b": g[:2]}))
    np.testing.assert_allclose(u2["a"], u2["b"])


def test_jit_matches_eager_over_steps(theta):
    params = _params()
    opt = LOPT.opt_fn(theta)
    traces = []

    @jax.jit
    def step(params, state, key):
        traces.append(1)
        updates, state = opt.update(_grads(params, key), state, params)
        return optax.apply_updates(params, updates), state

    p_j, s_j = params, opt.init(params)
    p_e, s_e = params, opt.init(params)
    for i in range(3):
        k = jax.random.key(10 + i)
        p_j, s_j = step(p_j, s_j, k)
        u, s_e = opt.update(_grads(p_e, k), s_e, p_e)
        p_e = optax.apply_updates(p_e, u)
    assert len(traces) == 1
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), (p_j, s_j), (p_e, s_e))


def test_vmap_over_tasks_matches_loop(theta):
    opt = LOPT.opt_fn(theta)
    n = 4
    draw = lambda k: {"w": jax.random.normal(k, (15,)).reshape(5, 3)}  # noqa: E731  (normal(k, (5, 3)), drawn flat)
    params = jax.vmap(draw)(jax.random.split(jax.random.key(3), n))
    grads = jax.vmap(draw)(jax.random.split(jax.random.key(4), n))
    states = jax.vmap(opt.init)(params)
    assert states.hidden["w"].shape == (n, 5, 3, 2, 20)
    u_v, s_v = jax.vmap(opt.update)(grads, states, params)
    for i in range(n):
        take = lambda t: jax.tree.map(lambda x: x[i], t)  # noqa: E731
        u_i, s_i = opt.update(take(grads), take(states), take(params))
        np.testing.assert_allclose(u_v["w"][i], u_i["w"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(s_v.hidden["w"][i], s_i.hidden["w"], rtol=1e-5, atol=1e-7)


def test_vmap_over_theta(theta):
    thetas = jax.vmap(LOPT.init)(jax.random.split(jax.random.key(5), 3))
    g = {"w": jnp.linspace(-1.0, 1.0, 6)}

    def upd(th):
        opt = LOPT.opt_fn(th)
        return opt.update(g, opt.init(g))[0]["w"]

    u = jax.vmap(upd)(thetas)
    for i in range(3):
        np.testing.assert_allclose(u[i], upd(jax.tree.map(lambda x: x[i], thetas)), rtol=1e-5, atol=1e-7)


def test_in_optax_chain(theta):
    params = _params()
    grads = _grads(params, jax.random.key(6))
    opt = LOPT.opt_fn(theta)
    chained = optax.chain(optax.clip_by_global_norm(1e9), opt, optax.scale(2.0))
    state = chained.init(params)
    u_c, state = jax.jit(chained.update)(grads, state, params)
    u, _ = opt.update(grads, opt.init(params), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, 2 * b, rtol=1e-5, atol=1e-7), u_c, u)
    # Runs a few jitted steps inside a chain without error.
    for _ in range(2):
        u_c, state = jax.jit(chained.update)(grads, state, params)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(u_c))


def test_groups_use_their_own_theta():
    groups = lambda path: "conv" if "conv" in jax.tree_util.keystr(path) else "dense"  # noqa: E731
    lopt = LSTMOptimizer(groups=groups, group_names=("conv", "dense"))
    theta = lopt.init(jax.random.key(7))
    assert set(theta) == {"conv", "dense"}
    params = {"conv_0": {"w": jnp.ones((3, 3, 1, 2))}, "dense": {"w": jnp.ones((4, 2))}}
    grads = _grads(params, jax.random.key(8))
    u, _ = lopt.opt_fn(theta).update(grads, lopt.opt_fn(theta).init(params))
    for name, leaf in (("conv", "conv_0"), ("dense", "dense")):
        single = LOPT.opt_fn(theta[name])
        u_ref, _ = single.update(grads[leaf]["w"], single.init(grads[leaf]["w"]))
        np.testing.assert_allclose(u[leaf]["w"], u_ref, rtol=1e-6)
    assert not np.allclose(theta["conv"]["out"]["w"], theta["dense"]["out"]["w"])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="hidden_size"):
        LSTMOptimizer(hidden_size=0)
    with pytest.raises(ValueError, match="num_layers"):
        LSTMOptimizer(num_layers=0)
    with pytest.raises(ValueError, match="preprocess_p"):
        LSTMOptimizer(preprocess_p=-1.0)
    with pytest.raises(ValueError, match="output_scale"):
        LSTMOptimizer(output_scale=0.0)
    with pytest.raises(ValueError, match="group_names"):
        LSTMOptimizer(groups=lambda p: "a")
    with pytest.raises(ValueError, match="group_names"):
        LSTMOptimizer(group_names=("a",))
    with pytest.raises(ValueError, match="theta"):
        lstm_optimizer({"nope": 1})
    lopt = LSTMOptimizer(groups=lambda p: "other", group_names=("a",))
    opt = lopt.opt_fn(lopt.init(jax.random.key(0)))
    with pytest.raises(ValueError, match="valid group names"):
        opt.update({"w": jnp.ones(2)}, opt.init({"w": jnp.ones(2)}))


@pytest.mark.parametrize("kwargs,match", [
    (dict(hidden_size=6), r"theta\['lstm'\]\['layer_0'\]\['w_x'\] must be an array of shape \(2, 24\) "
                          r"for hidden_size=6, num_layers=2, got shape \(2, 80\); theta was made for hidden_size=20"),
    (dict(num_layers=1), r"theta\['lstm'\] must be a dict with keys \['layer_0'\] .*got \['layer_0', 'layer_1'\]"),
    (dict(num_layers=3), r"theta\['lstm'\] must be a dict with keys \['layer_0', 'layer_1', 'layer_2'\]"),
])
def test_theta_must_match_hidden_size_and_num_layers(theta, kwargs, match):
    # A 2-layer, 20-unit theta: one layer must not silently ignore layer_1, and wrong sizes must not fail
    # inside the LSTM with a dot_general TypeError or a KeyError.
    with pytest.raises(ValueError, match=match):
        LSTMOptimizer(**kwargs).opt_fn(theta)
    with pytest.raises(ValueError, match=match):
        lstm_optimizer(theta, **kwargs)


def test_theta_entries_are_checked_per_group_and_per_array(theta):
    bad = {**theta, "out": {**theta["out"], "w": theta["out"]["w"][:5]}}
    with pytest.raises(ValueError, match=r"theta\['out'\]\['w'\] must be an array of shape \(20, 1\).*got shape \(5, 1\)"):
        lstm_optimizer(bad)
    no_bias = {**theta, "lstm": {**theta["lstm"], "layer_1": {k: v for k, v in theta["lstm"]["layer_1"].items()
                                                               if k != "b"}}}
    with pytest.raises(ValueError, match=r"theta\['lstm'\]\['layer_1'\] must be a dict with keys \['b', 'w_h', 'w_x'\]"):
        lstm_optimizer(no_bias)
    lopt = LSTMOptimizer(groups=lambda p: "a", group_names=("a", "b"))
    grouped = {"a": theta, "b": LSTMOptimizer(hidden_size=4).init(jax.random.key(1))}
    with pytest.raises(ValueError, match=r"theta\['b'\]\['lstm'\]\['layer_0'\]\['w_x'\] must be an array of shape"):
        lopt.opt_fn(grouped)
    # vmapped thetas (batched leaves) are checked on their per-example shapes
    thetas = jax.vmap(LOPT.init)(jax.random.split(jax.random.key(2), 2))
    g = {"w": jnp.ones(3)}
    u = jax.vmap(lambda th: LOPT.opt_fn(th).update(g, LOPT.opt_fn(th).init(g))[0])(thetas)
    assert u["w"].shape == (2, 3)
