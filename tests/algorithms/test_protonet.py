"""ProtoNet: prototypes and distances against numpy, the meta-gradient against finite differences
(float64), the shared contract, validation and BatchNorm modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta.algorithms.protonet import ProtoNet, prototypes, squared_distances
from jmeta.models import from_apply
from jmeta.tasks.base import TaskBatch


def _tiny_embedding(dtype=jnp.float32, d_in=4, d_out=3):
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"w": jax.random.normal(k1, (d_in, d_out), dtype), "b": jax.random.normal(k2, (d_out,), dtype) * 0.1}
    return from_apply(lambda p, x: jnp.tanh(x @ p["w"] + p["b"]), params, stateless=True)


def _task(n_way=3, k=2, q=3, d=4, dtype=jnp.float32, seed=0, shuffle=True):
    rng = np.random.default_rng(seed)
    sy = np.repeat(np.arange(n_way), k)
    qy = np.repeat(np.arange(n_way), q)
    if shuffle:
        sy, qy = rng.permutation(sy), rng.permutation(qy)
    centers = rng.normal(size=(n_way, d))
    sx = centers[sy] + 0.5 * rng.normal(size=(len(sy), d))
    qx = centers[qy] + 0.5 * rng.normal(size=(len(qy), d))
    return TaskBatch(jnp.asarray(sx, dtype), jnp.asarray(sy, jnp.int32), jnp.asarray(qx, dtype), jnp.asarray(qy, jnp.int32))


def test_prototypes_match_numpy():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(12, 5)).astype(np.float32)
    y = rng.permutation(np.repeat(np.arange(4), 3))
    ref = np.stack([z[y == c].mean(0) for c in range(4)])
    np.testing.assert_allclose(prototypes(jnp.asarray(z), jnp.asarray(y), 4), ref, rtol=1e-6, atol=1e-6)


def test_squared_distances_match_numpy():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(6, 5)), rng.normal(size=(4, 5))
    ref = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(squared_distances(jnp.asarray(a), jnp.asarray(b)), ref, rtol=1e-5, atol=1e-5)
    assert float(squared_distances(jnp.asarray(a), jnp.asarray(a)).min()) >= 0.0


def test_task_loss_matches_numpy_reference():
    m = _tiny_embedding()
    algo = ProtoNet(m.apply, n_way=3)
    task = _task()
    loss, aux = algo.task_loss(algo.init(m.params), m.state, task)
    p = {k: np.asarray(v, np.float64) for k, v in m.params.items()}
    f = lambda x: np.tanh(np.asarray(x, np.float64) @ p["w"] + p["b"])  # noqa: E731
    zs, zq = f(task.support_x), f(task.query_x)
    sy, qy = np.asarray(task.support_y), np.asarray(task.query_y)
    c = np.stack([zs[sy == k].mean(0) for k in range(3)])
    logits = -((zq[:, None] - c[None]) ** 2).sum(-1)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(float(loss), -logp[np.arange(len(qy)), qy].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(aux["metrics"]["accuracy"]), (logits.argmax(-1) == qy).mean())


def test_meta_gradient_matches_finite_differences_float64(x64):
    m = _tiny_embedding(jnp.float64)
    algo = ProtoNet(m.apply, n_way=3)
    task = _task(dtype=jnp.float64)
    f = jax.jit(lambda mp: algo.task_loss(mp, m.state, task)[0])
    mp = algo.init(m.params)
    g = jax.grad(f)(mp)
    rng = np.random.default_rng(3)
    for _ in range(3):
        v = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), mp)
        eps = 1e-6
        fd = (f(jax.tree.map(lambda a, b: a + eps * b, mp, v)) - f(jax.tree.map(lambda a, b: a - eps * b, mp, v))) / (2 * eps)
        an = sum(jnp.sum(a * b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(v)))
        np.testing.assert_allclose(float(an), float(fd), rtol=1e-7, atol=1e-10)


def test_contract_adapt_predict_evaluate():
    m = _tiny_embedding()
    algo = ProtoNet(m.apply, n_way=3)
    task = _task()
    mp = algo.init(m.params)
    assert set(mp) == {"params"}
    protos = algo.adapt(mp, m.state, task.support_x, task.support_y)
    assert protos.shape == (3, 3)
    logits = algo.predict(mp, protos, m.state, task.query_x)
    assert logits.shape == (9, 3)
    ev = algo.evaluate(mp, m.state, task)
    assert ev["loss"].shape == (1,) and ev["accuracy"].shape == (1,)
    loss, aux = algo.task_loss(mp, m.state, task)
    np.testing.assert_allclose(ev["loss"][0], loss, rtol=1e-6)
    np.testing.assert_allclose(ev["accuracy"][0], jnp.mean(jnp.argmax(logits, -1) == task.query_y))
    # batched over tasks, as the trainer and evaluator do
    tasks = jax.tree.map(lambda *a: jnp.stack(a), task, _task(seed=5))
    out = jax.vmap(lambda t: algo.evaluate(mp, m.state, t))(tasks)
    assert out["accuracy"].shape == (2, 1)


def test_validation():
    m = _tiny_embedding()
    with pytest.raises(ValueError, match="n_way"):
        ProtoNet(m.apply, n_way=1)
    with pytest.raises(ValueError, match="bn_mode"):
        ProtoNet(m.apply, n_way=3, bn_mode="running")
    with pytest.raises(TypeError, match="apply"):
        ProtoNet(None, n_way=3)
    algo = ProtoNet(m.apply, n_way=4)
    with pytest.raises(ValueError, match="multiple of n_way=4"):
        algo.task_loss(algo.init(m.params), m.state, _task(n_way=3, k=2))
    bad = _task()._replace(support_y=jnp.zeros((6, 1), jnp.int32))
    with pytest.raises(ValueError, match="shape"):
        ProtoNet(m.apply, n_way=3).task_loss(algo.init(m.params), m.state, bad)


def test_bn_modes_with_conv4_embedding():
    """train_only: batch statistics (and a state update) in task_loss, running statistics in
    evaluate; frozen: running statistics and no update; batch: batch statistics everywhere."""
    from jmeta.models.conv import conv4

    m = conv4(None, hidden=8, conv_impl="lax")
    rng = np.random.default_rng(0)
    task = TaskBatch(jnp.asarray(rng.random((3, 28, 28, 1)), jnp.float32), jnp.arange(3),
                     jnp.asarray(rng.random((6, 28, 28, 1)), jnp.float32), jnp.repeat(jnp.arange(3), 2))
    mp = {"params": m.params}
    moved = lambda a, b: not all(np.allclose(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))  # noqa
    _, aux = ProtoNet(m.apply, n_way=3).task_loss(mp, m.state, task)
    assert moved(aux["model_state"], m.state)
    _, aux = ProtoNet(m.apply, n_way=3, bn_mode="frozen").task_loss(mp, m.state, task)
    assert not moved(aux["model_state"], m.state)
    ev_train_only = ProtoNet(m.apply, n_way=3).evaluate(mp, m.state, task)
    ev_frozen = ProtoNet(m.apply, n_way=3, bn_mode="frozen").evaluate(mp, m.state, task)
    ev_batch = ProtoNet(m.apply, n_way=3, bn_mode="batch").evaluate(mp, m.state, task)
    np.testing.assert_allclose(ev_train_only["loss"], ev_frozen["loss"], rtol=1e-6)
    assert not np.allclose(ev_batch["loss"], ev_frozen["loss"])
