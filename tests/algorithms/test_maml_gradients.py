"""MAML-family meta-gradients against finite differences and a hand-unrolled reference."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmeta.algorithms import ANIL, FOMAML, MAML, MAMLPlusPlus, MetaSGD, Reptile
from jmeta.models import from_apply, mlp
from jmeta.tasks import Sinusoid, TaskBatch

from finite_differences import fd_relative_error


def _to64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def _task64(seed=0, k=5):
    t = Sinusoid(k, k, dtype="float64").sample(jax.random.key(seed), 1)
    return jax.tree.map(lambda a: a[0], t)


def _manual_mlp(params, x):
    """1-hidden-tanh MLP written by hand (independent of flax)."""
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    h = jnp.tanh(h @ params["w2"] + params["b2"])
    return h @ params["w3"] + params["b3"]


def _manual_params(seed=0, dtype=jnp.float64):
    k = jax.random.split(jax.random.key(seed), 3)
    return {
        "w1": jax.random.normal(k[0], (1, 8), dtype) * 0.8, "b1": jnp.zeros((8,), dtype) + 0.1,
        "w2": jax.random.normal(k[1], (8, 8), dtype) * 0.4, "b2": jnp.zeros((8,), dtype) - 0.1,
        "w3": jax.random.normal(k[2], (8, 1), dtype) * 0.4, "b3": jnp.zeros((1,), dtype),
    }


def _hand_unrolled_maml(params, task, lr, steps, first_order=False):
    """MAML objective written out step by step in plain Python (no scan, no optax)."""
    def sup(p):
        return jnp.mean((_manual_mlp(p, task.support_x) - task.support_y) ** 2)

    phi = params
    for _ in range(steps):
        g = jax.grad(sup)(phi)
        if first_order:
            g = jax.lax.stop_gradient(g)
        phi = jax.tree.map(lambda p, gg: p - lr * gg, phi, g)
    return jnp.mean((_manual_mlp(phi, task.query_x) - task.query_y) ** 2)


# one compiled program per (lr, steps, first_order), the task an argument: shared by the tests that use it
_hand_unrolled_grad = jax.jit(jax.grad(_hand_unrolled_maml), static_argnums=(2, 3, 4))


@functools.cache
def _meta_grad(algo):
    """``jax.grad`` of ``algo``'s task loss in (meta-parameters, task), compiled once per algorithm: the task is an
    argument (not a constant of the program), so tasks of the same shapes share the compiled program."""
    return jax.jit(jax.grad(lambda m, task: algo.task_loss(m, {}, task)[0]))


def _loss(algo):
    """``f(meta, task)``: ``algo``'s task loss, for ``fd_relative_error(..., args=(task,))``."""
    return lambda m, task: algo.task_loss(m, {}, task)[0]


def _params_loss(algo):
    """``f(params, task)`` with the meta-parameters ``{"params": params}``."""
    return lambda p, task: algo.task_loss({"params": p}, {}, task)[0]


@pytest.mark.parametrize("steps", [1, 3])
def test_maml_meta_gradient_matches_finite_differences_and_hand_unrolled(x64, steps):
    task = _task64(0)
    model = from_apply(_manual_mlp, _manual_params(), stateless=True)
    algo = MAML(model.apply, inner_lr=0.05, num_steps=steps)
    meta = algo.init(model.params)

    err, g = fd_relative_error(_params_loss(algo), meta["params"], args=(task,))  # g: jax.grad, compiled
    assert err < 1e-4
    g_ref = _hand_unrolled_grad(meta["params"], task, 0.05, steps, False)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 3])
def test_first_order_equals_stop_gradient_reference_and_differs_from_second_order(x64, steps):
    task = _task64(1)
    model = from_apply(_manual_mlp, _manual_params(1), stateless=True)
    fo = FOMAML(model.apply, inner_lr=0.05, num_steps=steps)
    so = MAML(model.apply, inner_lr=0.05, num_steps=steps)
    p = model.params
    g_fo = _meta_grad(fo)({"params": p}, task)["params"]
    g_so = _meta_grad(so)({"params": p}, task)["params"]
    g_ref = _hand_unrolled_grad(p, task, 0.05, steps, True)
    for a, b in zip(jax.tree.leaves(g_fo), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g_fo), jax.tree.leaves(g_so)))
    assert diff > 1e-3, "first-order gradient should differ from the second-order one"


def test_first_order_one_step_gradient_is_query_gradient_at_adapted_params(x64):
    # FOMAML's defining identity: d/dtheta = grad L_q(phi) evaluated at phi.
    task = _task64(2)
    model = from_apply(_manual_mlp, _manual_params(2), stateless=True)
    algo = FOMAML(model.apply, inner_lr=0.05, num_steps=1)
    p = model.params
    g = _meta_grad(algo)({"params": p}, task)["params"]

    @jax.jit  # the hand route as one compiled program (not op by op)
    def query_grad_at_phi(p):
        gs = jax.grad(lambda q: jnp.mean((_manual_mlp(q, task.support_x) - task.support_y) ** 2))(p)
        phi = jax.tree.map(lambda a, b: a - 0.05 * b, p, gs)
        return jax.grad(lambda q: jnp.mean((_manual_mlp(q, task.query_x) - task.query_y) ** 2))(phi)

    gq = query_grad_at_phi(p)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(gq)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_maml_on_flax_mlp_matches_finite_differences(x64):
    task = _task64(3)
    model = mlp(1, (16, 16), 1, activation="tanh")
    algo = MAML(model.apply, inner_lr=0.01, num_steps=2)
    p = _to64(model.params)
    assert fd_relative_error(_params_loss(algo), p, args=(task,))[0] < 1e-4


@pytest.mark.parametrize("kind", ["scalar", "per_layer", "per_param", "per_layer_per_step"])
def test_learned_learning_rate_gradients_match_finite_differences(x64, kind):
    task = _task64(4)
    model = from_apply(_manual_mlp, _manual_params(4), stateless=True)
    algo = MAML(model.apply, inner_lr=0.05, num_steps=2, learn_lr=kind)
    meta = _to64(algo.init(model.params))

    def f(log_lr, params, task):
        return algo.task_loss({"params": params, "log_lr": log_lr}, {}, task)[0]

    err, g = fd_relative_error(f, meta["log_lr"], args=(meta["params"], task))  # g: jax.grad, compiled
    assert all(float(jnp.max(jnp.abs(a))) > 0 for a in jax.tree.leaves(g)), "no gradient reached the learned rates"
    assert err < 1e-4


def test_metasgd_gradient_flows_into_per_parameter_rates(x64):
    task = _task64(5)
    model = from_apply(_manual_mlp, _manual_params(5), stateless=True)
    algo = MetaSGD(model.apply, inner_lr=0.05, num_steps=1)
    meta = _to64(algo.init(model.params))
    assert jax.tree.map(jnp.shape, meta["log_lr"]) == jax.tree.map(jnp.shape, meta["params"])
    err, g = fd_relative_error(_loss(algo), meta, args=(task,))  # g: jax.grad, compiled
    # Hand route: phi = theta - exp(l) * g_s ; dL/dl = -exp(l) * g_s * grad_phi L_q.

    @jax.jit  # the hand route as one compiled program (not op by op)
    def hand_route(meta):
        gs = jax.grad(lambda q: jnp.mean((_manual_mlp(q, task.support_x) - task.support_y) ** 2))(meta["params"])
        phi = jax.tree.map(lambda a, l, b: a - jnp.exp(l) * b, meta["params"], meta["log_lr"], gs)
        gq = jax.grad(lambda q: jnp.mean((_manual_mlp(q, task.query_x) - task.query_y) ** 2))(phi)
        return jax.tree.map(lambda l, b, c: -jnp.exp(l) * b * c, meta["log_lr"], gs, gq)

    ref = hand_route(meta)
    for a, b in zip(jax.tree.leaves(g["log_lr"]), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    assert err < 1e-4


@pytest.mark.parametrize("kind", ["scalar", "per_layer", "per_param", "per_layer_per_step", "per_param_per_step"])
def test_learned_rates_take_the_params_float_dtype(x64, kind):
    from jmeta.inner.lr import init_log_lr

    for dtype in (jnp.float64, jnp.float32):
        params = _manual_params(dtype=dtype)
        log_lr = init_log_lr(params, 0.05, kind, num_steps=3)
        assert {a.dtype for a in jax.tree.leaves(log_lr)} == {jnp.dtype(dtype)}, (kind, dtype)
        np.testing.assert_allclose(np.exp(np.asarray(jax.tree.leaves(log_lr)[0])), 0.05,
                                   rtol=1e-12 if dtype == jnp.float64 else 1e-6)
    # float64 params need no manual cast: MetaSGD's meta-gradient matches finite differences as is
    task = _task64(5)
    model = from_apply(_manual_mlp, _manual_params(5), stateless=True)
    algo = MAML(model.apply, inner_lr=0.05, num_steps=2, learn_lr=kind)
    meta = algo.init(model.params)
    assert all(a.dtype == jnp.float64 for a in jax.tree.leaves(meta))
    assert fd_relative_error(_loss(algo), meta, args=(task,))[0] < 1e-4


def test_learned_rates_stay_float32_for_float32_params():
    model = mlp()
    meta = MetaSGD(model.apply).init(model.params)
    assert {a.dtype for a in jax.tree.leaves(meta["log_lr"])} == {jnp.dtype(jnp.float32)}


def test_anil_adapts_only_the_head_and_body_gets_second_order_gradient(x64):
    task = _task64(6)
    model = from_apply(_manual_mlp, _manual_params(6), stateless=True)
    algo = ANIL(model.apply, inner_lr=0.1, num_steps=2, adapt_params=("w3", "b3"))
    p = model.params
    adapted = jax.jit(algo.adapt)({"params": p}, {}, task.support_x, task.support_y)
    for name in ("w1", "b1", "w2", "b2"):
        np.testing.assert_array_equal(adapted[name], p[name])
    assert float(jnp.max(jnp.abs(adapted["w3"] - p["w3"]))) > 0

    def ref(q):
        def sup(head):
            return jnp.mean((_manual_mlp({**q, **head}, task.support_x) - task.support_y) ** 2)

        head = {"w3": q["w3"], "b3": q["b3"]}
        for _ in range(2):
            gh = jax.grad(sup)(head)
            head = jax.tree.map(lambda a, b: a - 0.1 * b, head, gh)
        return jnp.mean((_manual_mlp({**q, **head}, task.query_x) - task.query_y) ** 2)

    err, g = fd_relative_error(_params_loss(algo), p, args=(task,))  # g: jax.grad, compiled
    g_ref = jax.jit(jax.grad(ref))(p)
    for k in p:
        np.testing.assert_allclose(g[k], g_ref[k], rtol=1e-10, atol=1e-12)
    assert err < 1e-4


def test_anil_filter_that_selects_nothing_is_an_error():
    model = from_apply(_manual_mlp, _manual_params(0, jnp.float32), stateless=True)
    algo = ANIL(model.apply, adapt_params="nope")
    task = jax.tree.map(lambda a: a[0], Sinusoid(5, 5).sample(jax.random.key(0), 1))
    with pytest.raises(ValueError, match="selects no parameter"):
        algo.task_loss({"params": model.params}, {}, task)


def test_reptile_gradient_is_theta_minus_adapted(x64):
    task = _task64(7)
    model = from_apply(_manual_mlp, _manual_params(7), stateless=True)
    algo = Reptile(model.apply, inner_lr=0.02, num_steps=3, train_on_query=False)
    p = model.params
    g = _meta_grad(algo)({"params": p}, task)["params"]
    phi = jax.jit(algo.adapt)({"params": p}, {}, task.support_x, task.support_y)
    for k in p:
        np.testing.assert_allclose(g[k], p[k] - phi[k], rtol=1e-10, atol=1e-12)


def test_inner_adam_with_eps_root_gives_finite_meta_gradient(x64):
    task = _task64(8)
    model = from_apply(_manual_mlp, _manual_params(8), stateless=True)
    algo = MAML(model.apply, inner_lr=0.01, num_steps=3, inner_transform=optax.scale_by_adam(eps_root=1e-8))
    err, g = fd_relative_error(_params_loss(algo), model.params, eps=1e-7, args=(task,))  # g: jax.grad, compiled
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(g))
    assert err < 1e-4


_NAN_AT_ZERO = {"adam eps_root=0": (optax.scale_by_adam(), True),
                "amsgrad": (optax.scale_by_amsgrad(), True),
                "rms eps outside sqrt": (optax.scale_by_rms(eps_in_sqrt=False), True),
                "adam eps_root=1e-8": (optax.scale_by_adam(eps_root=1e-8), False),
                "rms (eps in sqrt)": (optax.scale_by_rms(), False),
                "global-norm clip": (optax.clip_by_global_norm(1.0), False),
                "momentum": (optax.trace(0.9), False)}


@functools.cache
def _relu_mlp_and_task():
    """The ReLU MLP and the task of the NaN-probe tests, built once for all of them."""
    model = mlp(1, (40, 40), 1)
    return model, jax.tree.map(lambda a: a[0], Sinusoid(10, 10).sample(jax.random.key(0), 1))


@pytest.mark.parametrize("name", list(_NAN_AT_ZERO))
def test_nan_derivative_probe_predicts_a_nan_meta_gradient(name):
    """The probe agrees with what second-order MAML gives on a ReLU MLP (dead units give zero gradients)."""
    from jmeta.inner import nan_derivative_at_zero_gradient

    transform, nan = _NAN_AT_ZERO[name]
    assert nan_derivative_at_zero_gradient(transform) is nan
    model, task = _relu_mlp_and_task()
    with pytest.warns(UserWarning, match="NaN derivative at a zero gradient") if nan else _no_warning():
        algo = MAML(model.apply, inner_lr=0.01, num_steps=3, inner_transform=transform)
    # one compiled program per transform (op by op, the second-order loop dispatches hundreds of small programs)
    g = jax.jit(jax.grad(lambda m, task: algo.task_loss(m, model.state, task)[0]))(algo.init(model.params), task)
    finite = all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(g))
    assert finite is not nan


def test_nan_derivative_warning_only_where_the_loop_is_differentiated():
    model = mlp(1, (8,), 1)
    adam = optax.scale_by_adam()
    for cls in (MAML, MetaSGD, ANIL, MAMLPlusPlus):
        with pytest.warns(UserWarning, match=cls.__name__):
            cls(model.apply, inner_transform=adam)
    with _no_warning():
        FOMAML(model.apply, inner_transform=adam)
        MAML(model.apply, inner_transform=adam, first_order=True)
        Reptile(model.apply, inner_transform=adam)


def _no_warning():
    import warnings
    from contextlib import contextmanager

    @contextmanager
    def cm():
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            yield
    return cm()


def test_multi_step_loss_weights_and_gradient(x64):
    from jmeta.algorithms import msl_weights

    w0 = np.asarray(msl_weights(5, 0, 100))
    np.testing.assert_allclose(w0, 0.2)
    w_late = np.asarray(msl_weights(5, 99, 100))  # the end of the annealing: the floor 0.03/K
    np.testing.assert_allclose(w_late[:-1], 0.03 / 5)
    np.testing.assert_allclose(w_late.sum(), 1.0, rtol=1e-6)
    for step in (100, 1000):  # afterwards only the final step's loss (the authors' code switches MSL off)
        np.testing.assert_array_equal(np.asarray(msl_weights(5, step, 100)), [0, 0, 0, 0, 1])
    task = _task64(9)
    model = from_apply(_manual_mlp, _manual_params(9), stateless=True)
    algo = MAMLPlusPlus(model.apply, inner_lr=0.05, num_steps=3, msl_anneal_steps=100)
    meta = _to64(algo.init(model.params))

    @jax.jit
    @jax.value_and_grad
    def ref(m, step):  # the step a traced argument: one program for the three steps below
        def sup(p):
            return jnp.mean((_manual_mlp(p, task.support_x) - task.support_y) ** 2)

        phi, total = m["params"], 0.0
        w = msl_weights(3, step, 100)
        for k in range(3):
            g = jax.grad(sup)(phi)
            phi = jax.tree.map(lambda p, gg, l: p - jnp.exp(l[k]) * gg, phi, g, m["log_lr"])
            total = total + w[k] * jnp.mean((_manual_mlp(phi, task.query_x) - task.query_y) ** 2)
        return total

    ours = jax.jit(jax.value_and_grad(lambda m, step: algo.task_loss(m, {}, task, step=step)[0]))
    for step in (0, 50, 150):
        v, g = ours(meta, step)
        v_ref, g_ref = ref(meta, step)
        np.testing.assert_allclose(v, v_ref, rtol=1e-10)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_bad_task_shapes_are_clear_errors():
    from jmeta.tasks import validate_task_batch

    x = jnp.zeros((4, 5, 1))
    with pytest.raises(ValueError, match="support_x has 5 examples but TaskBatch.support_y has 3"):
        validate_task_batch(TaskBatch(x, jnp.zeros((4, 3, 1)), x, x))
    with pytest.raises(ValueError, match="support and query inputs differ"):
        validate_task_batch(TaskBatch(x, x, jnp.zeros((4, 5, 2)), x))
    with pytest.raises(ValueError, match="task axis"):
        validate_task_batch(TaskBatch(x, x, jnp.zeros((3, 5, 1)), jnp.zeros((3, 5, 1))))
    with pytest.raises(ValueError, match="no examples"):
        validate_task_batch(TaskBatch(jnp.zeros((4, 0, 1)), jnp.zeros((4, 0, 1)), x, x))


def test_num_tasks_is_the_task_axis_and_raises_for_a_single_task():
    batch = Sinusoid(5, 5).sample(jax.random.key(0), 3)
    assert batch.num_tasks == 3
    images = TaskBatch(jnp.zeros((2, 5, 4, 4, 1)), jnp.zeros((2, 5), jnp.int32),
                       jnp.zeros((2, 10, 4, 4, 1)), jnp.zeros((2, 10), jnp.int32))
    assert images.num_tasks == 2
    singles = [
        jax.tree.map(lambda a: a[0], batch),                                  # support_x (5, 1), k == q
        jax.tree.map(lambda a: a[0], Sinusoid(5, 10).sample(jax.random.key(0), 1)),
        jax.tree.map(lambda a: a[0], images),                                 # support_x (5, 4, 4, 1), labels (5,)
        TaskBatch(jnp.zeros((5, 4, 4, 1)), jnp.zeros((5,), jnp.int32),       # k == q images
                  jnp.zeros((5, 4, 4, 1)), jnp.zeros((5,), jnp.int32)),
        TaskBatch(jnp.zeros((5,)), jnp.zeros((5,)), jnp.zeros((5,)), jnp.zeros((5,))),
    ]
    for task in singles:
        with pytest.raises(ValueError, match="no task axis"):
            task.num_tasks


def test_bad_hyperparameters_are_clear_errors():
    model = mlp()
    with pytest.raises(ValueError, match="k_support must be an integer >= 1"):
        Sinusoid(k_support=0)
    for bad in (-0.1, 0, float("inf"), float("nan"), True, "0.1"):
        for cls in (MAML, MetaSGD, Reptile):
            with pytest.raises(ValueError, match="inner_lr must be a (finite )?number > 0"):
                cls(model.apply, inner_lr=bad)
    with pytest.raises(ValueError, match="num_steps must be an integer >= 1"):
        MAML(model.apply, num_steps=0)
    with pytest.raises(ValueError, match="learn_lr must be None or one of"):
        MAML(model.apply, learn_lr="per_galaxy")
    with pytest.raises(ValueError, match="loss must be one of"):
        MAML(model.apply, loss="hinge")
    with pytest.raises(ValueError, match="remat must be one of"):
        MAML(model.apply, remat="sometimes")


def test_model_output_not_matching_labels_is_a_clear_error():
    model = mlp(1, (8,), 3)  # 3 outputs for 1-d regression targets
    algo = MAML(model.apply)
    task = jax.tree.map(lambda a: a[0], Sinusoid(5, 5).sample(jax.random.key(0), 1))
    with pytest.raises(ValueError, match=r"model output shape \(5, 3\) does not match the targets' shape \(5, 1\)"):
        algo.task_loss(algo.init(model.params), model.state, task)


@pytest.mark.parametrize("cls", [MAML, FOMAML, Reptile, "IMAML"])
def test_a_whole_optimizer_as_inner_transform_is_warned_about(cls):
    """inner_transform is a direction; optax.adam(lr) / optax.sgd(lr) already descend, -inner_lr would ascend."""
    if cls == "IMAML":
        from jmeta.algorithms import IMAML as cls
    model = mlp(1, (8,), 1)
    import warnings

    for opt in (optax.adam(1e-3), optax.sgd(0.1)):
        with warnings.catch_warnings(record=True) as caught:  # Adam without eps_root also gets the NaN warning
            warnings.simplefilter("always")
            cls(model.apply, inner_transform=opt)
        assert any("points against the gradient" in str(w.message) for w in caught), cls
    with _no_warning():
        cls(model.apply, inner_transform=optax.chain(optax.sgd(0.1), optax.scale(-1.0)), inner_lr=1.0)
        cls(model.apply, inner_transform=optax.scale_by_adam(eps_root=1e-8))
        cls(model.apply, inner_transform=optax.trace(0.9))


def test_learned_optimizer_inside_maml_as_documented():
    """MAML's docstring: a whole optimizer goes in as chain(opt, scale(-1)) with inner_lr=1 -- it then
    takes exactly the optimizer's own steps (checked against applying its updates by hand)."""
    from jmeta.learned_optim import LSTMOptimizer

    model = mlp(1, (8,), 1)
    lopt = LSTMOptimizer(hidden_size=4)
    opt = lopt.opt_fn(lopt.init(jax.random.key(3)))
    with _no_warning():  # this random LSTM's first update happens to ascend; a learned optimizer is not judged
        algo = MAML(model.apply, inner_lr=1.0, num_steps=3, inner_transform=optax.chain(opt, optax.scale(-1.0)))
    task = jax.tree.map(lambda a: a[0], Sinusoid(5, 5).sample(jax.random.key(0), 1))
    adapted = jax.jit(algo.adapt)(algo.init(model.params), model.state, task.support_x, task.support_y)

    def loss(p):
        return jnp.mean((model.apply(p, model.state, task.support_x, train=True)[0] - task.support_y) ** 2)

    @jax.jit
    def by_hand(p):  # the optimizer's three updates applied in a Python loop, compiled as one program
        s = opt.init(p)
        for _ in range(3):
            u, s = opt.update(jax.grad(loss)(p), s, p)
            p = optax.apply_updates(p, u)
        return p

    p = by_hand(model.params)
    for a, b in zip(jax.tree.leaves(adapted), jax.tree.leaves(p)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
