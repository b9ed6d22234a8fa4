"""MAML++ per-step BatchNorm (``bn_mode="per_step"``) against a hand-unrolled reference and a second route."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta.algorithms import MAML, GradientLearner
from jmeta.losses import cross_entropy
from jmeta.models.conv import conv4
from jmeta.tasks import TaskBatch

K = 3
LR = 0.3


def _model(per_step):
    return conv4(3, input_shape=(8, 8, 1), hidden=4, num_blocks=2, conv_impl="lax",
                 per_step_bn=per_step, key=jax.random.key(0))


def _task():
    kx, kq = jax.random.split(jax.random.key(1))
    return TaskBatch(support_x=jax.random.normal(kx, (6, 8, 8, 1)), support_y=jnp.array([0, 0, 1, 1, 2, 2]),
                     query_x=jax.random.normal(kq, (6, 8, 8, 1)), query_y=jnp.array([0, 1, 2, 0, 1, 2]))


def _perturb_rows(params, key):
    """Make the per-step rows differ, so a wrong row index changes the result."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    out = [a + 0.3 * jax.random.normal(k, a.shape) if a.ndim >= 1 and a.shape[0] == K and a.ndim == 2 else a
           for a, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, out)


def _reference_objective(apply, params, state, task):
    """Hand-unrolled: step i's support forward uses row i, the final query uses row K-1."""
    p = params
    for i in range(K):
        g = jax.grad(lambda q: cross_entropy(apply(q, state, task.support_x, train=True, step=i)[0],
                                             task.support_y))(p)
        p = jax.tree.map(lambda a, b: a - LR * b, p, g)
    out, _ = apply(p, state, task.query_x, train=True, step=K - 1)
    return cross_entropy(out, task.query_y)


def test_per_step_bn_matches_hand_unrolled_reference():
    model = _model(K)
    params = _perturb_rows(model.params, jax.random.key(2))
    algo = MAML(model.apply, loss="cross_entropy", inner_lr=LR, num_steps=K, bn_mode="per_step")
    task = _task()
    mp = algo.init(params)

    def ours(p):
        return algo.task_loss({**mp, "params": p}, model.state, task)[0]

    ref = lambda p: _reference_objective(model.apply, p, model.state, task)  # noqa: E731
    # value and gradient of each route in one compiled program (op by op, the second-order gradients through
    # the convolutions dispatch thousands of small programs: ~40% more CPU time for the same numbers)
    l_ours, g_ours = jax.jit(jax.value_and_grad(ours))(params)
    l_ref, g_ref = jax.jit(jax.value_and_grad(ref))(params)
    np.testing.assert_allclose(l_ours, l_ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # a wrong row would be visible: the rows differ, so using row 0 everywhere gives another value
    wrong = MAML(lambda p, s, x, *, train, step=0: model.apply(p, s, x, train=train, step=0), loss="cross_entropy",
                 inner_lr=LR, num_steps=K, bn_mode="per_step")
    assert abs(float(wrong.task_loss(mp, model.state, task)[0]) - float(l_ours)) > 1e-4


def test_identical_rows_equal_shared_batchnorm():
    """At initialisation every row is the same; with the BatchNorm weights not adapted in the inner loop
    (so the rows stay equal), per-step BN equals ordinary batch-statistics BN."""
    per_step, shared = _model(K), _model(None)
    task = _task()
    not_bn = lambda path: "/bn/" not in f"/{path}"  # noqa: E731
    a = MAML(per_step.apply, loss="cross_entropy", inner_lr=LR, num_steps=K, bn_mode="per_step",
             adapt_params=not_bn)
    b = MAML(shared.apply, loss="cross_entropy", inner_lr=LR, num_steps=K, bn_mode="batch", adapt_params=not_bn)
    la, aux_a = a.task_loss(a.init(per_step.params), per_step.state, task)
    lb, _ = b.task_loss(b.init(shared.params), shared.state, task)
    np.testing.assert_allclose(la, lb, rtol=1e-5, atol=1e-6)
    ea = a.evaluate(a.init(per_step.params), per_step.state, task, num_steps=K + 2)
    eb = b.evaluate(b.init(shared.params), shared.state, task, num_steps=K + 2)
    np.testing.assert_allclose(ea["loss"], eb["loss"], rtol=1e-4, atol=1e-5)
    # the running statistics are written into the last step's row only
    mean_rows = jax.tree.leaves(jax.tree.map(lambda new, old: jnp.abs(new - old).reshape(K, -1).sum(1)
                                             if new.ndim == 2 and new.shape[0] == K else None,
                                             aux_a["model_state"], per_step.state))
    changed = np.stack([np.asarray(r) > 0 for r in mean_rows])
    assert changed[:, K - 1].all() and not changed[:, : K - 1].any()


def test_per_step_needs_a_step_argument():
    with pytest.raises(ValueError, match="bn_mode"):
        GradientLearner(_model(None).apply, bn_mode="per-step")


def test_adapt_then_predict_uses_the_row_of_the_steps_taken():
    """predict(num_steps=k) after adapt(num_steps=k) equals evaluate's curve at k, for k below the training K
    too; the exported program does the same."""
    from jmeta.run.export import predict_fn

    model = _model(K)
    params = _perturb_rows(model.params, jax.random.key(2))
    algo = MAML(model.apply, loss="cross_entropy", inner_lr=LR, num_steps=K, bn_mode="per_step")
    mp, task = algo.init(params), _task()
    curve = algo.evaluate(mp, model.state, task, num_steps=K + 1)["loss"]
    for k in range(K + 2):
        adapted = algo.adapt(mp, model.state, task.support_x, task.support_y, num_steps=k)
        out = algo.predict(mp, adapted, model.state, task.query_x, num_steps=k)
        np.testing.assert_allclose(cross_entropy(out, task.query_y), curve[k], rtol=1e-5, atol=1e-6)
        exported = predict_fn(algo, k)(mp, model.state, task.support_x, task.support_y, task.query_x)
        np.testing.assert_allclose(exported, out, rtol=1e-5, atol=1e-6)


def test_reptile_per_step_adapts_with_every_row():
    """Reptile's update uses the same per-step rows as its evaluation: theta - phi with phi = adapt(theta),
    and (adapting on the support set only) its logged query loss is evaluate's loss after K steps."""
    from jmeta.algorithms import Reptile

    model = _model(K)
    params = _perturb_rows(model.params, jax.random.key(2))
    algo = Reptile(model.apply, loss="cross_entropy", inner_lr=LR, num_steps=K, bn_mode="per_step",
                   train_on_query=False)
    mp, task = algo.init(params), _task()
    g, aux = jax.grad(lambda p: algo.task_loss({**mp, "params": p}, model.state, task), has_aux=True)(params)
    phi = algo.adapt(mp, model.state, task.support_x, task.support_y)
    for a, p, f in zip(jax.tree.leaves(g), jax.tree.leaves(params), jax.tree.leaves(phi)):
        np.testing.assert_allclose(a, p - f, rtol=1e-5, atol=1e-6)
    curve = algo.evaluate(mp, model.state, task, num_steps=K)["loss"]
    np.testing.assert_allclose(aux["metrics"]["loss"], curve[K], rtol=1e-5, atol=1e-6)
    # every row of a per-step BatchNorm table moves (each inner step used its own row)
    rows = [np.abs(np.asarray(a)).sum(1) for a in jax.tree.leaves(g) if a.ndim == 2 and a.shape[0] == K]
    assert rows and all((r > 0).all() for r in rows)


def test_reptile_refuses_partial_adaptation():
    from jmeta.algorithms import Reptile

    with pytest.raises(ValueError, match="ANIL"):
        Reptile(_model(None).apply, adapt_params="head")
