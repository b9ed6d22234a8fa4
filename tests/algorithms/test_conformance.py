"""One conformance test for every jmeta algorithm (:data:`jmeta.algorithms.ALGORITHMS`).

Each algorithm, built on a tiny 4-8-3 tanh MLP and a batch of 4 three-way classification tasks, goes through the
same checks: it satisfies :class:`~jmeta.algorithms.MetaLearner` (method signatures included); ``init`` /
``task_loss`` / ``adapt`` + ``predict`` / ``evaluate`` give the documented shapes and dtypes; the batched
meta-gradient (:func:`jmeta.meta_grad`, ``vmap`` over tasks) equals a Python loop of per-task gradients, averaged;
the meta-step compiles once over several iterations; bad inputs get clear errors. A class anywhere in ``jmeta``
that implements the contract but is missing from the registry fails :func:`test_registry_is_complete`, and a
registered algorithm without a tiny instance here fails its own tests. The meta-RL algorithms
(:data:`jmeta.rl.ALGORITHMS`) have their own contract and checks in ``tests/rl/test_rl_conformance.py``;
:func:`test_rl_algorithms_are_covered` makes "every algorithm" include them.
"""

from __future__ import annotations

import ast
import functools
import inspect
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jmeta
from ast_classes import classes_in_jmeta
from jmeta.algorithms import ALGORITHM_BASES, ALGORITHMS, MetaLearner, algorithm_classes
from jmeta.tasks import TaskBatch

N_WAY, DIM, HIDDEN, SHOTS, QUERY, B = 3, 4, 8, 2, 2, 4
PKG = pathlib.Path(jmeta.__file__).resolve().parent


def apply(params, state, x, *, train):
    del train
    h = jnp.tanh(x @ params["layers_0"]["kernel"] + params["layers_0"]["bias"])
    return h @ params["layers_1"]["kernel"] + params["layers_1"]["bias"], state


def init_params(key):
    k0, k1 = jax.random.split(key)
    return {"layers_0": {"kernel": jax.random.normal(k0, (DIM, HIDDEN)) / 2, "bias": jnp.zeros((HIDDEN,))},
            "layers_1": {"kernel": jax.random.normal(k1, (HIDDEN, N_WAY)) / 3, "bias": jnp.zeros((N_WAY,))}}


def sample(key, num_tasks, data=None):
    """Three Gaussian classes per task, ``SHOTS`` support and ``QUERY`` query points each."""
    km, ks, kq = jax.random.split(key, 3)
    means = jax.random.normal(km, (num_tasks, N_WAY, DIM))
    labels_s = jnp.tile(jnp.repeat(jnp.arange(N_WAY), SHOTS), (num_tasks, 1))
    labels_q = jnp.tile(jnp.repeat(jnp.arange(N_WAY), QUERY), (num_tasks, 1))
    pick = jax.vmap(lambda m, y: m[y])
    xs = pick(means, labels_s) + 0.5 * jax.random.normal(ks, labels_s.shape + (DIM,))
    xq = pick(means, labels_q) + 0.5 * jax.random.normal(kq, labels_q.shape + (DIM,))
    return TaskBatch(xs, labels_s, xq, labels_q)


ce = dict(loss="cross_entropy")
#: A tiny instance of every registered algorithm (and option variants); a new algorithm adds one line here.
FACTORIES = {
    "MAML": lambda: jmeta.MAML(apply, inner_lr=0.3, num_steps=2, **ce),
    "FOMAML": lambda: jmeta.FOMAML(apply, inner_lr=0.3, num_steps=2, **ce),
    "MetaSGD": lambda: jmeta.MetaSGD(apply, inner_lr=0.3, num_steps=2, **ce),
    "ANIL": lambda: jmeta.ANIL(apply, inner_lr=0.3, num_steps=2, adapt_params="layers_1", **ce),
    "MAMLPlusPlus": lambda: jmeta.MAMLPlusPlus(apply, inner_lr=0.3, num_steps=2, msl_anneal_steps=4, **ce),
    "Reptile": lambda: jmeta.Reptile(apply, inner_lr=0.3, num_steps=2, **ce),
    "ProtoNet": lambda: jmeta.ProtoNet(apply, n_way=N_WAY),
    "R2D2": lambda: jmeta.R2D2(apply, n_way=N_WAY),
    "MetaOptNet": lambda: jmeta.MetaOptNet(apply, n_way=N_WAY, max_iter=30),
    "MetaOptNet[ridge]": lambda: jmeta.MetaOptNet(apply, n_way=N_WAY, head="ridge"),
    "IMAML": lambda: jmeta.IMAML(apply, inner_lr=0.1, num_steps=2, cg_steps=2, **ce),
    "MetaLSTM": lambda: jmeta.learned_optim.MetaLSTM(apply, num_steps=2, hidden_size=4),
}
CASES = sorted(set(ALGORITHMS) | set(FACTORIES))


class Case:
    """One algorithm with its meta-parameters, a task batch and the compiled functions the tests share."""

    def __init__(self, name):
        if name not in FACTORIES:
            pytest.fail(f"{name} is in jmeta.algorithms.ALGORITHMS but has no tiny instance in FACTORIES of "
                        f"{__file__}: add one so that it runs through the conformance checks")
        self.name = name
        self.algo = FACTORIES[name]()
        self.params = init_params(jax.random.key(0))
        self.meta_params = self.algo.init(self.params, key=jax.random.key(1))
        self.state = {}
        self.tasks = sample(jax.random.key(2), B)
        self.key = jax.random.key(3)

    @functools.cached_property
    def meta_grad(self):
        """``meta_grad`` with one key (split inside) and with the same per-task keys given explicitly, side by
        side in one compiled program (one compile instead of one per key form)."""
        mg = functools.partial(jmeta.meta_grad, self.algo, has_aux=True)
        return jax.jit(lambda mp, tasks, key, keys: (mg(mp, tasks, key), mg(mp, tasks, keys)))

    @functools.cached_property
    def per_task(self):
        """Everything the tests need of ONE task, in one compiled program (reused for every task of the loop):
        ``task_loss`` with its gradient, ``adapt`` + ``predict``, and ``evaluate``."""
        algo = self.algo

        def f(mp, t, k):
            (obj, aux), g = jax.value_and_grad(
                lambda m: algo.task_loss(m, self.state, t, key=k, step=0), has_aux=True)(mp)
            adapted = algo.adapt(mp, self.state, t.support_x, t.support_y, key=k)
            out = algo.predict(mp, adapted, self.state, t.query_x)
            return obj, aux, g, out, algo.evaluate(mp, self.state, t, key=k)

        f = jax.jit(f)
        keys = jax.random.split(self.key, B)
        return [f(self.meta_params, one_task(self.tasks, i), keys[i]) for i in range(B)]

    def eval_steps(self) -> int:
        a = self.algo
        return getattr(a, "eval_steps", None) or getattr(a, "num_steps", 0)


@pytest.fixture(scope="module", params=CASES)
def case(request):
    return Case(request.param)


def one_task(tasks, i=0):
    return jax.tree.map(lambda a: a[i], tasks)


def test_registry_lists_classes():
    classes = algorithm_classes()
    assert set(classes) == set(ALGORITHMS)
    for name, cls in classes.items():
        assert cls.__name__ == name


def test_registry_is_complete():
    """Every class that implements the contract (defines ``task_loss`` or ``adapt``, or derives from a registered
    class) is in ALGORITHMS or ALGORITHM_BASES, so the conformance checks cannot miss a new algorithm."""
    classes = classes_in_jmeta()
    known = set(ALGORITHMS.values()) | set(ALGORITHM_BASES.values())
    known_names = {ref.partition(":")[2] for ref in known}
    protocol = {"jmeta.algorithms.base:MetaLearner"}
    found = {ref for ref, (methods, bases) in classes.items()
             if ref not in protocol and (methods & {"task_loss", "adapt"} or bases & known_names)}
    assert found, "the scan found no algorithm at all"
    missing = sorted(found - known)
    assert not missing, (f"classes implementing the algorithm contract but missing from "
                         f"jmeta.algorithms.ALGORITHMS (or ALGORITHM_BASES): {missing}")
    assert known <= set(classes), f"registry entries that name no class: {sorted(known - set(classes))}"


def test_rl_algorithms_are_covered():
    """Every class implementing the meta-RL contract (defines ``meta_step`` or derives from a registered meta-RL
    class) is in jmeta.rl.ALGORITHMS, and every entry has a tiny instance in the meta-RL conformance test."""
    from jmeta.rl import ALGORITHMS as RL_ALGORITHMS
    from jmeta.rl.base import ALGORITHM_BASES as RL_BASES

    known = set(RL_ALGORITHMS.values()) | set(RL_BASES.values())
    names = {ref.partition(":")[2] for ref in known}
    found = {ref for ref, (methods, bases) in classes_in_jmeta().items()
             if ref != "jmeta.rl.base:MetaRLAlgorithm" and ("meta_step" in methods or bases & names)}
    assert found >= known and not found - known, f"meta-RL classes missing from jmeta.rl.ALGORITHMS: {found - known}"
    rl_test = PKG.parent / "tests" / "rl" / "test_rl_conformance.py"
    factories = next(node.value for node in ast.parse(rl_test.read_text()).body
                     if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "FACTORIES")
    covered = {ast.literal_eval(k).partition("[")[0] for k in factories.keys}
    assert set(RL_ALGORITHMS) <= covered, f"no tiny instance in {rl_test}: {set(RL_ALGORITHMS) - covered}"


def test_protocol(case):
    assert isinstance(case.algo, MetaLearner)
    for method in ("init", "task_loss", "adapt", "predict", "evaluate"):
        want = inspect.signature(getattr(MetaLearner, method))
        got = inspect.signature(getattr(type(case.algo), method))
        shape = lambda sig: [(p.name, p.kind, p.default) for p in sig.parameters.values()]  # noqa: E731
        assert shape(got) == shape(want), f"{case.name}.{method}{got} differs from MetaLearner.{method}{want}"


def test_init(case):
    mp = case.meta_params
    assert isinstance(mp, dict) and "params" in mp
    assert jax.tree.structure(mp["params"]) == jax.tree.structure(case.params)
    for leaf in jax.tree.leaves(mp):
        assert leaf.dtype == jnp.float32, (case.name, leaf.dtype)


def test_task_loss_shapes(case):
    obj, aux, _, _, _ = case.per_task[0]
    assert obj.shape == () and obj.dtype == jnp.float32
    assert set(aux) == {"metrics", "model_state"}
    assert "loss" in aux["metrics"]
    for name, m in aux["metrics"].items():
        assert m.shape == (), (name, m.shape)
    assert jax.tree.structure(aux["model_state"]) == jax.tree.structure(case.state)
    assert np.isfinite(float(obj))


def test_adapt_predict_shapes(case):
    _, _, _, out, _ = case.per_task[0]
    assert out.shape == (N_WAY * QUERY, N_WAY) and out.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(out)))


def test_evaluate_shapes(case):
    """``{metric: [N+1]}`` after ``0..N`` adaptation steps (``N`` = the evaluation steps, 0 without steps)."""
    n = case.eval_steps()
    curves = case.per_task[0][4]
    assert "loss" in curves
    for name, c in curves.items():
        assert c.shape == (n + 1,) and c.dtype == jnp.float32, (name, c.shape, c.dtype)
        assert np.all(np.isfinite(np.asarray(c))), (name, c)


def test_vmap_over_tasks_equals_loop(case):
    """``meta_grad`` (vmapped) == the mean over a Python loop of per-task ``task_loss`` gradients, with one key
    split inside == the same per-task keys given explicitly."""
    keys = jax.random.split(case.key, B)
    (obj, grads, aux), (obj2, grads2, _) = case.meta_grad(case.meta_params, case.tasks, case.key, keys)
    per = case.per_task
    want_obj = np.mean([float(p[0]) for p in per])
    want_grads = jax.tree.map(lambda *g: np.mean(np.stack(g), axis=0), *[p[2] for p in per])
    want_loss = np.mean([float(p[1]["metrics"]["loss"]) for p in per])
    np.testing.assert_allclose(float(obj), want_obj, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(aux["metrics"]["loss"]), want_loss, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-6), grads, want_grads)
    assert jax.tree.structure(grads) == jax.tree.structure(case.meta_params)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
    assert float(obj2) == float(obj)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), grads, grads2)


def test_meta_step_compiles_once(case):
    traces = []

    def counted(key, n):
        # the case's fixed task batch: random sampling inside the step (threefry) would add ~1.3 s CPU of
        # compile per case and nothing to the check (the step still folds the key in and splits per-task keys)
        traces.append(1)
        assert n == B
        return case.tasks

    opt = optax.adam(1e-2)
    state = jmeta.init_train_state(case.algo, case.params, case.state, opt, key=jax.random.key(1))
    step = jmeta.make_meta_step(case.algo, counted, opt, meta_batch_size=B)
    losses = []
    for i in range(3):
        state, metrics = step(state, jax.random.key(5))
        losses.append(float(metrics["loss"]))
    assert len(traces) == 1, f"{case.name}: the meta-step was traced {len(traces)} times in 3 iterations"
    assert int(state.step) == 3 and np.all(np.isfinite(losses))


def test_bad_inputs(case):
    with pytest.raises(ValueError, match="needs a batch of tasks"):
        jmeta.meta_grad(case.algo, case.meta_params, one_task(case.tasks), case.key)
    with pytest.raises(ValueError, match=rf"one jax.random.key .* or {B} per-task keys"):
        jmeta.meta_grad(case.algo, case.meta_params, case.tasks, jax.random.split(case.key, B + 1))
    with pytest.raises(TypeError, match="key must be a jax.random.key"):
        jmeta.meta_grad(case.algo, case.meta_params, case.tasks, 0)
    with pytest.raises(ValueError, match="one key per task"):
        jmeta.train.batched_loss_and_grad(case.algo, case.meta_params, case.state, case.tasks, case.key, 0)
