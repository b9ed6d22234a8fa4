"""MAML-RL / ProMP: one compiled meta-step, TRPO's KL bound, meta-gradients against finite differences,
evaluation keys and bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from finite_differences import fd_relative_error

from jmeta.rl import MAMLRL, envs, gaussian_mlp_policy, promp
from jmeta.rl.maml_rl import conjugate_gradient


def _nav2d_algo(**kw):
    """The one nav2d configuration of this file (horizon 6, a 2-5-2 tanh Gaussian MLP, 2 tasks x 3 episodes,
    inner lr 0.3): the TRPO, gradient, first-order and ANIL tests build their algorithms from it and share one
    meta-batch of samples (``trpo_run``), so that they compile ``sample`` once (seconds on a CPU)."""
    pol = gaussian_mlp_policy(2, 2, (5,), activation="tanh", key=jax.random.key(1))
    return MAMLRL(envs.Nav2D(horizon=6), pol, **{"num_tasks": 2, "num_episodes": 3, "inner_lr": 0.3, **kw})


@pytest.fixture(scope="module")
def trpo_run():
    """Three float64 TRPO meta-steps (DiCE, one inner step) of the nav2d MAML-RL through one jitted function that
    counts its traces, the jitted ``sample`` of the same algorithm, and its samples at key 7 (the samples of the
    gradient tests). Float64: test_meta_step_from_samples_is_meta_step_on_given_samples compares the first step
    with ``meta_step_from_samples`` (float32 CG amplifies the rounding of two differently fused programs to ~2% of
    the update); the tests that use these float64 values run with the ``x64`` fixture."""
    old = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", True)
    try:
        algo = _nav2d_algo()
        traces = []

        def step(state, key):
            traces.append(1)
            return algo.meta_step(state, key)

        f = jax.jit(step)
        state = algo.init()
        state = state._replace(params=jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state.params))
        params0 = state.params
        history = []
        for i in range(3):
            key = jax.random.key(100 + i)
            new, m = f(state, key)
            history.append((state, key, new, jax.device_get(m)))
            state = new
        sample = jax.jit(algo.sample)
        samples = sample(params0, jax.random.key(7))
    finally:
        jax.config.update("jax_enable_x64", old)
    return algo, traces, history, sample, (params0, samples)


def test_meta_step_compiles_once(trpo_run):
    _, traces, history, _, _ = trpo_run
    assert len(traces) == 1
    assert [int(h[2].step) for h in history] == [1, 2, 3]


def test_trpo_step_satisfies_kl_bound_and_improves(x64, trpo_run):
    algo, _, history, sample, _ = trpo_run
    terms = jax.jit(algo.outer_terms)
    for state, key, new, m in history:
        assert bool(m["accepted"])
        data, old, _ = sample(state.params, key)  # the same samples as the step (same key)
        s0, kl0, _ = terms(state.params, data, old)
        s1, kl1, _ = terms(new.params, data, old)
        assert float(kl0) < 1e-6
        assert 0 < float(kl1) <= algo.max_kl
        np.testing.assert_allclose(kl1, m["kl"], rtol=1e-4)
        assert float(s1) > float(s0)
        # the step moved the parameters
        d = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), state.params, new.params))
        assert max(float(x) for x in d) > 0


def test_meta_step_from_samples_is_meta_step_on_given_samples(x64, trpo_run):
    """The outer update on samples drawn elsewhere (what a host-side environment, jmeta.rl.host, feeds it) is
    meta_step's: the same new parameters and metrics from the same samples (float64: float32 CG amplifies the
    rounding of two differently fused programs to ~2% of the update). ``meta_step``'s result is the first
    jitted meta-step of ``trpo_run``."""
    algo, _, history, sample, _ = trpo_run
    state, key, new, m = history[0]
    data, _, _ = sample(state.params, key)
    got, gm = jax.jit(algo.meta_step_from_samples)(state, data)
    assert int(got.step) == int(new.step) == 1 and bool(m["accepted"])
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(new.params), strict=True):
        assert a.dtype == jnp.float64
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    for k in ("return_pre", "return_post", "kl", "surrogate_gain", "line_search_steps", "accepted"):
        np.testing.assert_allclose(gm[k], m[k], rtol=1e-9, atol=1e-12, err_msg=k)
    with pytest.raises(ValueError, match=r"data must hold one \(traj, proc\) pair per inner step \(1\)"):
        algo.meta_step_from_samples(state, ((), data[1]))


def test_conjugate_gradient_solves_spd_system(x64):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    a = a @ a.T + 6 * np.eye(6)
    b = rng.normal(size=6)
    x = jax.jit(lambda b: conjugate_gradient(lambda v: jnp.asarray(a) @ v, b, iters=20))(jnp.asarray(b))
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-8)


@pytest.mark.parametrize("estimator,learn_lr,steps", [("dice", False, 1), ("lvc", False, 1), ("reinforce", True, 1),
                                                      ("dice", False, 2)])
def test_meta_gradient_matches_finite_differences(x64, trpo_run, estimator, learn_lr, steps):
    """Samples fixed (drawn once), the outer surrogate is a function of theta through the inner step(s); its
    jax.grad (second order through the inner policy gradient) against float64 central differences. All cases
    share one meta-batch, ``trpo_run``'s DiCE samples at key 7 (the check is of the gradient of the surrogate as a
    function of theta, whichever estimator adapted the policy that drew the samples): two inner steps take its
    pre-adaptation samples for the first step and its post-adaptation samples (drawn with theta_1, as a two-step
    ``sample`` draws the second step's) for the second step and the outer surrogate."""
    algo = _nav2d_algo(estimator=estimator, learn_inner_lr=learn_lr, num_inner_steps=steps)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), algo.init().params)
    params0, (data, old, _) = trpo_run[-1]
    jax.tree.map(np.testing.assert_array_equal, params["policy"], params0["policy"])
    if steps == 2:
        data, old = ((data[0][0], data[1]), data[1]), ((old[0][0], old[1]), old[1])
    err, g = fd_relative_error(lambda p: algo.outer_objective(p, data, old), params, eps=1e-5, n_dirs=3)
    assert err < 1e-5, err
    # the inner step matters: the meta-gradient differs from the gradient at the adapted parameters
    gnorm = float(jnp.sqrt(sum(jnp.sum(a * a) for a in jax.tree.leaves(g))))
    assert gnorm > 1e-4


def _adapted(algo, params, data):
    """The adapted parameters ``[theta_0, ..., theta_K]`` (task axis first) of ``algo``'s inner step(s) on
    ``data``: what ``algo.sample`` returns as ``old`` for the samples it draws."""
    return jax.jit(jax.vmap(algo.adapted_params, in_axes=(None, 0)))(params, data[0])


def test_first_order_meta_gradient_is_the_post_update_gradient(x64, trpo_run):
    algo = _nav2d_algo(estimator="first_order")
    pol = algo.policy
    params, (data, _, _) = trpo_run[-1]  # the shared meta-batch (DiCE-adapted sampling policy)
    ps = _adapted(algo, params, data)  # the first-order algorithm's own adapted parameters
    old = (tuple(ps[:-1]), ps[-1])
    adapted = old[1]
    g = jax.jit(jax.grad(lambda p: algo.outer_objective(p, data, old)))(params)  # one program, not op by op
    # route 2: per task, the gradient of the post-update surrogate with respect to the adapted parameters

    def post(p_task, traj, proc):
        lp = pol.log_prob(p_task, traj.obs, traj.actions)
        return jnp.sum(jnp.exp(lp - traj.log_probs) * proc.advantages * traj.mask) / jnp.sum(traj.mask)

    per_task = jax.jit(jax.vmap(jax.grad(post)))(adapted, *data[1])
    expected = jax.tree.map(lambda a: jnp.mean(a, 0), per_task)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12), g["policy"], expected)


def test_promp_and_ppo_steps_run_and_adapt_the_penalty():
    env = envs.Nav2D(horizon=8)
    algo = promp(env, gaussian_mlp_policy(2, 2, (8,), key=jax.random.key(0)), num_tasks=2, num_episodes=3)
    assert algo.estimator == "lvc" and algo.outer == "ppo"
    state = algo.init()
    new, m = jax.jit(algo.meta_step)(state, jax.random.key(0))
    # the penalty coefficient halves or doubles (or stays) according to the measured inner KL
    ikl, c0, c1 = float(m["inner_kl"][0]), float(state.inner_kl_coef[0]), float(new.inner_kl_coef[0])
    expected = c0 / 2 if ikl < 0.01 / 1.5 else (c0 * 2 if ikl > 0.015 else c0)
    np.testing.assert_allclose(c1, expected, rtol=1e-6)
    assert float(m["surrogate_gain"]) > 0


def test_evaluate_summary_keys(x64, trpo_run):
    algo, _, history, _, _ = trpo_run
    ev = algo.evaluate(history[-1][2].params, jax.random.key(3), num_tasks=4, num_steps=2, num_episodes=2)
    assert ev["num_tasks"] == 4 and ev["num_steps"] == 2
    assert list(ev["summary"]) == ["return after 0 step(s)", "return after 1 step(s)", "return after 2 step(s)"]
    for v in ev["summary"].values():
        assert np.isfinite(v["mean"]) and v["ci95"] > 0 and v["nonfinite"] == 0
    # explicit tasks give the same numbers as the tasks the key would draw
    k_tasks, _ = jax.random.split(jax.random.key(3))
    ev2 = algo.evaluate(history[-1][2].params, jax.random.key(3), num_steps=2, num_episodes=2,
                        tasks=algo.env.sample_tasks(k_tasks, 4))
    np.testing.assert_allclose(ev2["return"]["mean"], ev["return"]["mean"], rtol=1e-6)


def test_bad_input_one_clear_error_each():
    """The contract's bad inputs (policy action size, horizon 0, negative inner lr, task pytrees of the wrong
    shape or structure) are checked for every meta-RL algorithm by tests/rl/test_rl_conformance.py."""
    env = envs.Nav2D(horizon=10)
    with pytest.raises(ValueError, match=r"horizon must be an integer >= 1; got 0"):
        envs.Nav2D(horizon=0)
    with pytest.raises(ValueError, match="estimator must be one of"):
        MAMLRL(env, gaussian_mlp_policy(2, 2, (4,)), estimator="vpg")


def test_anil_adapts_only_the_named_parameters(x64, trpo_run):
    """ANIL's inner step (the one ``sample`` adapts with: ``_adapted``) on the shared meta-batch."""
    algo = _nav2d_algo(adapt_params=("mean/layers_1", "log_std"))
    pol = algo.policy
    params, (data, _, _) = trpo_run[-1]
    adapted = _adapted(algo, params, data)[-1]
    np.testing.assert_array_equal(adapted["mean"]["layers_0"]["kernel"][0],
                                  params["policy"]["mean"]["layers_0"]["kernel"])
    assert not np.allclose(adapted["mean"]["layers_1"]["kernel"][0], params["policy"]["mean"]["layers_1"]["kernel"])
    assert not np.allclose(adapted["log_std"][0], params["policy"]["log_std"])
    with pytest.raises(ValueError, match="adapt_params entry 'mean/head' matches no policy parameter"):
        MAMLRL(algo.env, pol, adapt_params=("mean/head",))
