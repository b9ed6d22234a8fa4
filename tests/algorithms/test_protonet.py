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
    loss, aux = jax.jit(lambda mp, t: algo.task_loss(mp, m.state, t))(algo.init(m.params), task)
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
    vg = jax.jit(jax.value_and_grad(f))
    mp = algo.init(m.params)
    g = jax.tree.map(np.asarray, vg(mp)[1])
    x = jax.tree.map(np.asarray, mp)
    rng = np.random.default_rng(3)
    for _ in range(3):
        v = jax.tree.map(lambda a: rng.normal(size=a.shape), x)
        eps = 1e-6
        fd = (float(vg(jax.tree.map(lambda a, b: a + eps * b, x, v))[0])
              - float(vg(jax.tree.map(lambda a, b: a - eps * b, x, v))[0])) / (2 * eps)
        an = sum(np.sum(a * b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(v)))
        np.testing.assert_allclose(float(an), float(fd), rtol=1e-7, atol=1e-10)


def test_contract_adapt_predict_evaluate():
    m = _tiny_embedding()
    algo = ProtoNet(m.apply, n_way=3)
    task = _task()
    mp = algo.init(m.params)
    assert set(mp) == {"params"}
    tasks = jax.tree.map(lambda *a: jnp.stack(a), task, _task(seed=5))

    @jax.jit  # one compiled program for the whole contract (no op-by-op compiles)
    def run(mp, task, tasks):
        protos = algo.adapt(mp, m.state, task.support_x, task.support_y)
        logits = algo.predict(mp, protos, m.state, task.query_x)
        acc = jnp.mean(jnp.argmax(logits, -1) == task.query_y)
        # batched over tasks, as the trainer and evaluator do
        batched = jax.vmap(lambda t: algo.evaluate(mp, m.state, t))(tasks)
        return protos, logits, acc, algo.evaluate(mp, m.state, task), algo.task_loss(mp, m.state, task), batched

    protos, logits, acc, ev, (loss, aux), out = run(mp, task, tasks)
    assert protos.means.shape == (3, 3) and protos.counts.tolist() == [2.0, 2.0, 2.0]
    assert logits.shape == (9, 3)
    assert ev["loss"].shape == (1,) and ev["accuracy"].shape == (1,)
    np.testing.assert_allclose(ev["loss"][0], loss, rtol=1e-6)
    np.testing.assert_allclose(ev["accuracy"][0], acc)
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

    @jax.jit  # the five Conv4 calls in one compiled program (no op-by-op convolutions)
    def run(mp, state, task):
        train_only, frozen, batch = (ProtoNet(m.apply, n_way=3, bn_mode=b) for b in ("train_only", "frozen", "batch"))
        return (train_only.task_loss(mp, state, task)[1], frozen.task_loss(mp, state, task)[1],
                train_only.evaluate(mp, state, task), frozen.evaluate(mp, state, task), batch.evaluate(mp, state, task))

    aux_train_only, aux_frozen, ev_train_only, ev_frozen, ev_batch = run(mp, m.state, task)
    assert moved(aux_train_only["model_state"], m.state)
    assert not moved(aux_frozen["model_state"], m.state)
    np.testing.assert_allclose(ev_train_only["loss"], ev_frozen["loss"], rtol=1e-6)
    assert not np.allclose(ev_batch["loss"], ev_frozen["loss"])


def test_fewer_ways_or_uneven_shots_equal_the_episode_s_own_n_way():
    """An episode of 3 ways run with n_way=5 (two classes without support examples, e.g. padded
    variable-way episodes) gives exactly the 3-way result: empty classes are masked, not zero prototypes.
    Uneven shots work (prototypes are per-class means); the meta-gradient stays finite."""
    m = _tiny_embedding()
    task = _task(n_way=3, k=2)
    mp = ProtoNet(m.apply, n_way=3).init(m.params)
    uneven = task._replace(support_y=jnp.asarray([0, 0, 0, 1, 2, 2], jnp.int32))

    @jax.jit  # every call of the test in one compiled program (no op-by-op compiles)
    def run(mp, task, uneven):
        out = {}
        for n_way in (3, 4, 5):
            algo = ProtoNet(m.apply, n_way=n_way)
            out[n_way] = dict(
                task_loss=algo.task_loss(mp, m.state, task), evaluate=algo.evaluate(mp, m.state, task),
                logits=algo.predict(mp, algo.adapt(mp, m.state, task.support_x, task.support_y), m.state, task.query_x),
                grad=jax.grad(lambda p: algo.task_loss(p, m.state, task)[0])(mp))
        return out, ProtoNet(m.apply, n_way=3).task_loss(mp, m.state, uneven)[0]

    out, loss = run(mp, task, uneven)
    for n_way in (4, 5):
        for method in ("task_loss", "evaluate"):
            want, got = out[3][method], out[n_way][method]
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                np.testing.assert_allclose(a, b, rtol=1e-6)
        logits = out[n_way]["logits"]
        assert logits.shape == (9, n_way) and np.all(np.isneginf(np.asarray(logits)[:, 3:]))
        g = out[n_way]["grad"]
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(g))
    # Uneven shots (3, 1, 2): 6 support examples, classes of different sizes.
    z = np.tanh(np.asarray(uneven.support_x) @ np.asarray(m.params["w"]) + np.asarray(m.params["b"]))
    c = np.stack([z[:3].mean(0), z[3], z[4:].mean(0)])
    zq = np.tanh(np.asarray(task.query_x) @ np.asarray(m.params["w"]) + np.asarray(m.params["b"]))
    logits = -((zq[:, None] - c[None]) ** 2).sum(-1)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(float(loss), -logp[np.arange(9), np.asarray(task.query_y)].mean(), rtol=1e-5)
    # Odd support sizes are no longer refused.
    odd = task._replace(support_x=task.support_x[:5], support_y=jnp.asarray([0, 0, 1, 2, 2], jnp.int32))
    assert np.isfinite(float(jax.jit(lambda mp, t: ProtoNet(m.apply, n_way=3).task_loss(mp, m.state, t)[0])(mp, odd)))


def test_bfloat16_distances_and_meta_gradient_match_float32():
    """Mixed precision: Conv4-sized ReLU features (1600-d, ||z||^2 ~ 400) in bfloat16. The distance
    expansion ||a||^2 - 2ab + ||b||^2 is computed in float32 (in bfloat16 the meta-gradient was 61% off)."""
    from jmeta.train.precision import mixed_precision_task_loss

    rng = np.random.default_rng(0)
    nway, shot, q, din, d = 5, 5, 15, 64, 1600
    w = jnp.asarray(rng.normal(size=(din, d)) / np.sqrt(din), jnp.float32)
    m = from_apply(lambda p, x: jax.nn.relu(0.1 * (x @ p["w"]) + 0.5), {"w": w}, stateless=True)
    mu = rng.normal(size=(nway, din)) * 0.4
    sl, ql = np.tile(np.arange(nway), shot), np.tile(np.arange(nway), q)
    task = TaskBatch(jnp.asarray(mu[sl] + rng.normal(size=(sl.size, din)), jnp.float32), jnp.asarray(sl, jnp.int32),
                     jnp.asarray(mu[ql] + rng.normal(size=(ql.size, din)), jnp.float32), jnp.asarray(ql, jnp.int32))
    algo = ProtoNet(m.apply, n_way=nway)
    mp = algo.init(m.params)

    def vg(dtype):
        f = mixed_precision_task_loss(algo, dtype)
        return jax.jit(jax.value_and_grad(lambda p: f(p, m.state, task)[0]))(mp)

    (l16, g16), (l32, g32) = vg(jnp.bfloat16), vg(jnp.float32)
    np.testing.assert_allclose(float(l16), float(l32), rtol=0.02)
    a, b = g16["params"]["w"], g32["params"]["w"]
    assert float(jnp.linalg.norm(a - b)) <= 0.05 * float(jnp.linalg.norm(b))
    z16 = jax.ShapeDtypeStruct((4, 8), jnp.bfloat16)  # dtypes only: traced, not run op by op
    dist, protos = jax.eval_shape(lambda z: (squared_distances(z, z), prototypes(z, jnp.arange(4), 4)), z16)
    assert dist.dtype == jnp.float32 and protos.dtype == jnp.float32
