"""One conformance test for every jmeta meta-RL algorithm (:data:`jmeta.rl.ALGORITHMS`).

The supervised algorithms have ``tests/algorithms/test_conformance.py``; that test's registry scan also
requires every class implementing this contract to be in :data:`jmeta.rl.ALGORITHMS`, so "every algorithm" of
jmeta is covered by one of the two. Each meta-RL algorithm (and its option variants: Meta-SGD and ANIL are
MAML-RL options), built tiny (a 4-step nav2d or a 3-armed bandit, a few tasks and episodes), goes through the
same checks: it satisfies :class:`~jmeta.rl.MetaRLAlgorithm` (method signatures included); the state and
metrics have the documented structure, shapes and dtypes; a meta-step is deterministic for a key; the batched
``sample`` (``vmap`` over tasks) equals a Python loop of ``sample_task``; the meta-step compiles once over
several iterations; ``evaluate`` gives finite ``"return ..."`` summaries; bad inputs (a policy whose action
size is not the environment's, horizon 0, a negative learning rate, a task pytree of the wrong shape) get one
clear error each. A class anywhere in ``jmeta`` that implements the contract but is missing from the registry
fails :func:`test_registry_is_complete`, and a registered algorithm without a tiny instance here fails its
own tests. Multi-device sharding: ``tests/rl/test_rl_sharding.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmeta
from ast_classes import classes_in_jmeta
from jmeta.rl import (ALGORITHMS, MAMLRL, RL2, MetaRLAlgorithm, PPOConfig, ProMP, algorithm_classes, draw_tasks,
                      envs, gaussian_mlp_policy, gru_policy, make_rl_meta_step, rl2_input_size)
from jmeta.rl.base import ALGORITHM_BASES

NAV = envs.Nav2D(horizon=4)
BANDIT = envs.BernoulliBandit(num_arms=3)


def nav_policy(action_size=2):
    return gaussian_mlp_policy(2, action_size, (6,), key=jax.random.key(0))


def bandit_policy(num_actions=3):
    return gru_policy(rl2_input_size(BANDIT), num_actions, hidden_size=6, key=jax.random.key(0))


small = dict(num_tasks=3, num_episodes=2)
#: The inner loop of both MAML-RL instances: Meta-SGD (learned per-parameter inner rates) and ANIL (adapt the
#: head and log-std only) on, ProMP's LVC estimator. Their sampling (``sample``, ``sample_task``) and evaluation
#: are then one program each, compiled once for the two (compiling one costs seconds on a CPU); the outer updates
#: (TRPO, PPO with the inner KL penalty) differ.
INNER = dict(learn_inner_lr=True, adapt_params=("mean/layers_1", "log_std"), estimator="lvc")
#: A tiny instance of every registered algorithm (and option variants); a new algorithm adds one line here.
FACTORIES = {
    # MAML-TRPO with its Meta-SGD and ANIL options on: one instance covers the three (compiling a MAML-RL
    # meta-step costs seconds on a CPU)
    "MAMLRL": lambda: MAMLRL(NAV, nav_policy(), cg_iters=3, max_backtracks=3, **INNER, **small),
    "ProMP": lambda: ProMP(NAV, nav_policy(), ppo_epochs=1, **INNER, **small),
    "RL2": lambda: RL2(BANDIT, bandit_policy(), num_episodes=2, meta_batch_size=4,
                       ppo=PPOConfig(epochs=1, num_minibatches=2)),
}
CASES = sorted(set(ALGORITHMS) | set(FACTORIES))
#: How each family's contract violations are built: a policy with the wrong action size, an environment of
#: horizon 0, a negative learning rate (the inner step's, or RL^2's outer PPO step), and the error each gives.
BAD = {
    MAMLRL: dict(policy=lambda: nav_policy(3), action_error=r"policy.action_size is 3 but env.action_size is 2",
                 bad_lr=lambda rebuild: rebuild(inner_lr=-0.1), lr_error=r"inner_lr must be a number >= 0; got -0.1"),
    RL2: dict(policy=lambda: bandit_policy(4),
              action_error=r"policy.num_actions \(4\) must equal the environment's action_size \(3\)",
              bad_lr=lambda rebuild: rebuild(ppo=PPOConfig(learning_rate=-0.1)),
              lr_error=r"learning_rate must be a number > 0; got -0.1"),
}


class Case:
    """One algorithm with its state and the compiled functions the tests share."""

    def __init__(self, name):
        if name not in FACTORIES:
            pytest.fail(f"{name} is in jmeta.rl.ALGORITHMS but has no tiny instance in FACTORIES of {__file__}: "
                        f"add one so that it runs through the conformance checks")
        self.name = name
        self.algo = FACTORIES[name]()
        self.state = self.algo.init(jax.random.key(1))
        self.key = jax.random.key(3)
        self.step = make_rl_meta_step(self.algo)

    @functools.cached_property
    def run(self):
        """Three meta-steps from ``init`` (keys 0, 1, 2), then the first again: ``(states, metrics)``."""
        states, metrics, s = [], [], self.state
        for i in (0, 1, 2):
            s, m = self.step(s, jax.random.fold_in(self.key, i))
            states.append(s)
            metrics.append(m)
        again = self.step(self.state, jax.random.fold_in(self.key, 0))
        return states, metrics, again

    @functools.cached_property
    def samples(self):
        """``(batched samples, [per-task samples of a loop])`` from the same key."""
        params = self.state.params
        batched = jax.jit(self.algo.sample)(params, self.key)
        tasks, keys = draw_tasks(self.algo.env, self.key, self.algo.meta_batch_size)
        one = jax.jit(self.algo.sample_task)
        loop = [one(params, jax.tree.map(lambda a, i=i: a[i], tasks), keys[i])
                for i in range(self.algo.meta_batch_size)]
        return batched, tasks, loop

    def family(self):
        return next(cls for cls in BAD if isinstance(self.algo, cls))


@pytest.fixture(scope="module", params=CASES)
def case(request):
    return Case(request.param)


def test_registry_lists_classes():
    classes = algorithm_classes()
    assert set(classes) == set(ALGORITHMS)
    for name, cls in classes.items():
        assert cls.__name__ == name
    for name in FACTORIES:
        assert name.partition("[")[0] in ALGORITHMS, f"{name}: a variant of an unregistered algorithm"


def unregistered(classes) -> list[str]:
    """Classes implementing the meta-RL contract (defining ``meta_step``, or deriving from a registered class)
    that are neither in :data:`jmeta.rl.ALGORITHMS` nor in ``ALGORITHM_BASES``."""
    known = set(ALGORITHMS.values()) | set(ALGORITHM_BASES.values())
    names = {ref.partition(":")[2] for ref in known}
    protocol = {"jmeta.rl.base:MetaRLAlgorithm"}
    found = {ref for ref, (methods, bases) in classes.items()
             if ref not in protocol and ("meta_step" in methods or bases & names)}
    assert known <= found, f"registry entries that implement no meta_step: {sorted(known - found)}"
    return sorted(found - known)


def test_registry_is_complete():
    classes = classes_in_jmeta()
    assert not unregistered(classes), (f"classes implementing the meta-RL contract but missing from "
                                       f"jmeta.rl.ALGORITHMS: {unregistered(classes)}")
    # the check fails for a class that implements the contract (or derives from a registered one) unlisted
    assert unregistered({**classes, "jmeta.rl.pearl:PEARL": ({"init", "meta_step"}, set())}) == \
        ["jmeta.rl.pearl:PEARL"]
    assert unregistered({**classes, "jmeta.rl.x:MyProMP": ({"init"}, {"ProMP"})}) == ["jmeta.rl.x:MyProMP"]


def _compatible(got: inspect.Signature, want: inspect.Signature) -> str | None:
    """Why an implementation's signature cannot be called as the protocol's (``None`` if it can): the same
    positional parameters in order, every keyword of the protocol accepted, extra parameters defaulted."""
    P = inspect.Parameter
    positional = (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)
    gp = [p for p in got.parameters.values() if p.kind in positional]
    wp = [p for p in want.parameters.values() if p.kind in positional]
    if len(gp) < len(wp) or any(w.kind == P.POSITIONAL_OR_KEYWORD and g.name != w.name for g, w in zip(gp, wp)):
        return f"positional parameters {[p.name for p in gp]} do not start with {[p.name for p in wp]}"
    for g, w in zip(gp, wp):
        if (g.default is P.empty) != (w.default is P.empty):
            return f"{g.name}: default differs (required vs optional)"
    for p in want.parameters.values():
        if p.kind == P.KEYWORD_ONLY:
            q = got.parameters.get(p.name)
            if q is None or q.kind not in (P.KEYWORD_ONLY, P.POSITIONAL_OR_KEYWORD):
                return f"keyword {p.name} not accepted"
            if (p.default is P.empty) != (q.default is P.empty):
                return f"{p.name}: default differs (required vs optional)"
    extra = [q.name for q in list(got.parameters.values())[len(wp):] if q.name not in want.parameters
             and q.default is P.empty and q.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD)]
    return f"extra required parameters {extra}" if extra else None


def test_protocol(case):
    assert isinstance(case.algo, MetaRLAlgorithm)
    for method in ("init", "sample_task", "sample", "meta_step", "check_tasks", "evaluate"):
        want = inspect.signature(getattr(MetaRLAlgorithm, method))
        got = inspect.signature(getattr(type(case.algo), method))
        why = _compatible(got, want)
        assert why is None, f"{case.name}.{method}{got} vs MetaRLAlgorithm.{method}{want}: {why}"
    assert isinstance(case.algo.meta_batch_size, int) and case.algo.meta_batch_size >= 1
    assert dataclasses.is_dataclass(case.algo) and case.algo.__dataclass_params__.frozen


def test_init_and_state(case):
    s = case.state
    assert hasattr(s, "_fields") and "params" in s._fields, type(s)
    for leaf in jax.tree.leaves(s.params):
        assert leaf.dtype == jnp.float32, (case.name, leaf.dtype)
    # init(params=...) starts from the given policy parameters
    doubled = jax.tree.map(lambda a: 2 * a, case.algo.init(jax.random.key(1)).params)
    policy = doubled["policy"] if isinstance(doubled, dict) and "policy" in doubled else doubled
    s2 = case.algo.init(jax.random.key(1), params=policy)
    got = s2.params["policy"] if isinstance(s2.params, dict) and "policy" in s2.params else s2.params
    jax.tree.map(np.testing.assert_array_equal, got, policy)


def test_state_and_metrics_shapes(case):
    states, metrics, _ = case.run
    ref = case.state
    for s in states:
        assert type(s) is type(ref)
        assert jax.tree.structure(s) == jax.tree.structure(ref)
        for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(ref)):
            assert a.shape == b.shape and a.dtype == b.dtype, (case.name, a.shape, b.shape, a.dtype, b.dtype)
        counter = s.step if hasattr(s, "step") else s.iteration
    assert int(counter) == 3
    assert any(float(jnp.abs(a - b).max()) > 0 for a, b in zip(jax.tree.leaves(states[0].params),
                                                                jax.tree.leaves(ref.params))), "no update"
    assert set(metrics[0]) == set(metrics[-1]) and any(re.search("return", k) for k in metrics[0])
    for name, m in metrics[0].items():
        assert m.ndim <= 1 and (jnp.issubdtype(m.dtype, jnp.floating) or jnp.issubdtype(m.dtype, jnp.integer)
                                or m.dtype == jnp.bool_), (name, m.shape, m.dtype)
        assert np.all(np.isfinite(np.asarray(m, np.float64))), (name, m)


def test_deterministic_for_a_key(case):
    states, metrics, (again, m_again) = case.run
    jax.tree.map(np.testing.assert_array_equal, again.params, states[0].params)
    jax.tree.map(np.testing.assert_array_equal, m_again, metrics[0])
    # another key, another meta-batch
    assert any(float(jnp.abs(a - b).max()) > 0 for a, b in zip(jax.tree.leaves(states[1].params),
                                                                jax.tree.leaves(again.params)))


def test_vmap_over_tasks_equals_loop(case):
    batched, tasks, loop = case.samples
    jax.tree.map(np.testing.assert_array_equal, batched[-1], tasks)
    for i, one in enumerate(loop):
        got = jax.tree.map(lambda a, i=i: a[i], batched[0])
        assert jax.tree.structure(got) == jax.tree.structure(one)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(one)):
            if jnp.issubdtype(a.dtype, jnp.floating):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=f"{case.name} task {i}")
            else:
                np.testing.assert_array_equal(a, b, err_msg=f"{case.name} task {i}")
    assert len({float(jnp.sum(jnp.abs(jax.tree.leaves(o)[0]))) for o in loop}) > 1, "tasks sampled alike"


def test_meta_step_compiles_once(case):
    case.run  # noqa: B018 (four meta-steps: three iterations and a repeat from the start)
    assert case.step.num_traces == 1, f"{case.name}: the meta-step was traced {case.step.num_traces} times"


def test_evaluate(case):
    report = case.algo.evaluate(case.state.params, jax.random.key(9), num_tasks=2)
    summary = report["summary"]
    keys = [k for k in summary if k.startswith("return")]
    assert keys, summary
    for k in keys:
        v = summary[k]["mean"] if isinstance(summary[k], dict) else summary[k]
        assert np.isfinite(v), (k, v)
    tasks = case.algo.env.sample_tasks(jax.random.key(4), 2)
    assert case.algo.check_tasks(tasks) == 2
    given = case.algo.evaluate(case.state.params, jax.random.key(9), tasks=tasks)["summary"]
    assert set(given) == set(summary)


@dataclasses.dataclass(frozen=True)
class _ZeroHorizon:
    """An environment declaring horizon 0 (the algorithms check ``env.horizon``)."""

    discrete: bool
    obs_size: int = 2
    action_size: int = 2
    horizon: int = 0

    def sample_tasks(self, key, n):
        return {"goal": jnp.zeros((n, 2))}

    def reset(self, key, task):
        return jnp.zeros(2), jnp.zeros(2)

    def step(self, state, action, task):
        return state, state, jnp.zeros(()), jnp.zeros((), bool)


def test_bad_inputs(case):
    algo, bad = case.algo, BAD[case.family()]
    fields = {f.name: getattr(algo, f.name) for f in dataclasses.fields(algo) if f.init}
    rebuild = lambda **kw: type(algo)(**{**fields, **kw})  # noqa: E731
    with pytest.raises(ValueError, match=bad["action_error"]):
        rebuild(policy=bad["policy"]())
    with pytest.raises(ValueError, match=r"env.horizon must be an integer >= 1; got 0"):
        rebuild(env=_ZeroHorizon(discrete=algo.env.discrete))
    with pytest.raises(ValueError, match=bad["lr_error"]):
        bad["bad_lr"](rebuild)
    good = algo.env.sample_tasks(jax.random.key(0), 5)
    (path, leaf), *_ = jax.tree_util.tree_leaves_with_path(good)
    wrong = jax.tree_util.tree_map_with_path(
        lambda p, a: jnp.zeros(a.shape + (1,), a.dtype) if p == path else a, good)
    msg = re.escape(f"tasks{jax.tree_util.keystr(path)} has shape {tuple(leaf.shape) + (1,)}")
    with pytest.raises(ValueError, match=msg):
        algo.check_tasks(wrong)
    with pytest.raises(ValueError, match=msg):
        algo.evaluate(case.state.params, jax.random.key(0), tasks=wrong)
    with pytest.raises(ValueError, match="tasks must have the structure"):
        algo.check_tasks({"not_a_task_field": leaf})


def test_mesh_arguments(case):
    mesh = jmeta.train.distributed.task_mesh(1)
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        make_rl_meta_step(case.algo, mesh="gpu")
    with pytest.raises(ValueError, match="task_axis must name axes"):
        make_rl_meta_step(case.algo, mesh=mesh, task_axis="batch")
    with pytest.raises(ValueError, match="task_axis is only meaningful with a mesh"):
        make_rl_meta_step(case.algo, task_axis="tasks")


def test_make_rl_meta_step_refuses_a_supervised_algorithm():
    with pytest.raises(TypeError, match=r"algorithm must implement jmeta.rl.MetaRLAlgorithm .*got MAML"):
        make_rl_meta_step(jmeta.MAML(lambda p, s, x, *, train: (x, s)))


def test_former_calls_keep_working():
    """``MAMLRL.init(policy_params)`` (the former signature; deprecated), ``init(policy_params=...)`` and the
    ``promp(env, policy, **kw)`` factory still work under the shared contract."""
    algo = MAMLRL(NAV, nav_policy(), **small)
    p = jax.tree.map(lambda a: a + 1, algo.policy.init())
    with pytest.warns(DeprecationWarning, match=r"init\(params=policy_params\)"):
        legacy = algo.init(p)
    for s in (legacy, algo.init(policy_params=p), algo.init(params=p), algo.init(jax.random.key(0), p)):
        jax.tree.map(np.testing.assert_array_equal, s.params["policy"], p)
    with pytest.raises(TypeError, match="params= or policy_params=, not both"):
        algo.init(params=p, policy_params=p)
    with pytest.raises(TypeError, match="key must be a jax.random.key or None"):
        algo.init(p, p)
    pro = jmeta.rl.promp(NAV, nav_policy(), clip_eps=0.2, **small)
    assert type(pro) is ProMP and isinstance(pro, MAMLRL)
    assert (pro.estimator, pro.outer, pro.clip_eps, pro.inner_kl_penalty) == ("lvc", "ppo", 0.2, 5e-4)
