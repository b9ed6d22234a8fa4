"""Meta-LSTM learner (Ravi & Larochelle 2017): hand-computed updates, meta-gradients, a short Omniglot run."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from jmeta.learned_optim.meta_lstm import MetaLSTM
from jmeta.tasks.base import TaskBatch


def _linear_apply(params, state, x, *, train=True):
    del train
    return x @ params["w"] + params["b"], state


def _tiny(dtype=np.float64, m=6, d=3, out=1, seed=0):
    rng = np.random.default_rng(seed)
    params = {"w": rng.normal(size=(d, out)).astype(dtype) * 0.5, "b": rng.normal(size=(out,)).astype(dtype) * 0.1}
    xs, xq = rng.normal(size=(m, d)).astype(dtype), rng.normal(size=(m, d)).astype(dtype)
    ys, yq = rng.normal(size=(m, out)).astype(dtype), rng.normal(size=(m, out)).astype(dtype)
    return params, TaskBatch(jnp.asarray(xs), jnp.asarray(ys), jnp.asarray(xq), jnp.asarray(yq))


# -- a hand-written NumPy reference of one episode ---------------------------------------------------------------
def _np_rho(v, p=10.0):
    v = np.asarray(v, np.float64)
    big = np.abs(v) >= math.exp(-p)
    first = np.where(big, np.log(np.where(big, np.abs(v), 1.0)) / p, -1.0)
    second = np.where(big, np.sign(v), math.exp(p) * v)
    return np.stack([first, second], axis=-1)


def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def _np_episode(meta, x, y, steps):
    """theta_T of the linear model ``x @ w + b`` under MSE, every quantity written out by hand."""
    w = np.asarray(meta["params"]["w"], np.float64)
    b = np.asarray(meta["params"]["b"], np.float64)
    lw = {k: np.asarray(v, np.float64) for k, v in meta["lstm"].items()}
    gw = {k: np.asarray(v, np.float64) for k, v in meta["gates"].items()}
    hs = lw["w_h"].shape[0]
    # ravel_pytree flattens dict leaves in sorted key order: b, then w (row-major)
    c = np.concatenate([b.ravel(), w.ravel()])
    n = c.size
    f = np.zeros(n)
    i = np.zeros(n)
    h = np.zeros((n, hs))
    cell = np.zeros((n, hs))
    for _ in range(steps):
        bb, ww = c[: b.size], c[b.size:].reshape(w.shape)
        r = x @ ww + bb - y
        loss = np.mean(r ** 2)
        gw_ = 2.0 / r.size * x.T @ r
        gb_ = 2.0 / r.size * r.sum(axis=0)
        g = np.concatenate([gb_.ravel(), gw_.ravel()])
        inp = np.concatenate([_np_rho(g), np.broadcast_to(_np_rho(loss), (n, 2))], axis=1)   # [n, 4]
        z = inp @ lw["w_x"] + h @ lw["w_h"] + lw["b"]
        zi, zf, zg, zo = z[:, :hs], z[:, hs:2 * hs], z[:, 2 * hs:3 * hs], z[:, 3 * hs:]
        cell = _sig(zf) * cell + _sig(zi) * np.tanh(zg)
        h = _sig(zo) * np.tanh(cell)
        f_new = _sig(h @ gw["w_f"][:hs] + c * gw["w_f"][hs] + f * gw["w_f"][hs + 1] + gw["b_f"])
        i_new = _sig(h @ gw["w_i"][:hs] + c * gw["w_i"][hs] + i * gw["w_i"][hs + 1] + gw["b_i"])
        c = f_new * c - i_new * g
        f, i = f_new, i_new
    return c


def _perturbed_meta(algo, params, seed, scale=0.3):
    """Meta-parameters away from the initialisation (gates not saturated), so every term matters.

    The perturbation is drawn with NumPy (eager ``jax.random`` compiled one program per leaf shape)."""
    meta = jax.jit(algo.init)(params, key=jax.random.key(seed))
    rng = np.random.default_rng(seed)
    meta = jax.tree.map(lambda l: np.asarray(l) + scale * rng.normal(size=l.shape).astype(l.dtype), meta)
    meta["gates"]["b_f"] = meta["gates"]["b_f"] * 0 + 1.0
    meta["gates"]["b_i"] = meta["gates"]["b_i"] * 0 - 1.0
    return meta


def test_adapted_learner_equals_hand_computed_updates(x64):
    params, task = _tiny()
    algo = MetaLSTM(_linear_apply, loss="mse", num_steps=3, hidden_size=4)
    meta = _perturbed_meta(algo, params, 3)
    got = np.asarray(algo.adapt(meta, {}, task.support_x, task.support_y))
    want = _np_episode(meta, np.asarray(task.support_x), np.asarray(task.support_y), 3)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # zero steps: the learned initialisation itself (the cell state c_0)
    c0 = np.asarray(algo.adapt(meta, {}, task.support_x, task.support_y, num_steps=0))
    np.testing.assert_allclose(c0, np.asarray(ravel_pytree(meta["params"])[0]))
    # predict accepts the flat vector or the pytree
    tree = algo.unravel(meta, jnp.asarray(got))
    np.testing.assert_allclose(np.asarray(algo.predict(meta, jnp.asarray(got), {}, task.query_x)),
                               np.asarray(algo.predict(meta, tree, {}, task.query_x)))


def test_paper_initialisation_makes_the_first_update_sgd_like(x64):
    """With b_F ~ U(4, 6) and b_I ~ U(-5, -4) the first update is theta - i * grad with i about 0.01, f about 1."""
    params, task = _tiny()
    algo = MetaLSTM(_linear_apply, loss="mse", num_steps=1)
    meta = algo.init(params, key=jax.random.key(0))
    assert 4 <= float(meta["gates"]["b_f"]) <= 6 and -5 <= float(meta["gates"]["b_i"]) <= -4
    c0 = ravel_pytree(meta["params"])[0]
    g = jax.grad(lambda c: jnp.mean((_linear_apply(algo.unravel(meta, c), {}, task.support_x)[0]
                                     - task.support_y) ** 2))(c0)
    step = algo.adapt(meta, {}, task.support_x, task.support_y) - c0
    ratio = np.asarray(-step / g)
    assert np.all((ratio > 0.003) & (ratio < 0.03)), ratio


def _directional_fd(f, meta, direction, eps=1e-6):
    plus = jax.tree.map(lambda a, d: np.asarray(a) + eps * d, meta, direction)
    minus = jax.tree.map(lambda a, d: np.asarray(a) - eps * d, meta, direction)
    return (float(f(plus)) - float(f(minus))) / (2 * eps)


def _random_direction(meta, seed):
    """A NumPy random direction like ``meta`` (no eager device ops: the finite differences run compiled)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda l: rng.normal(size=np.shape(l)).astype(np.asarray(l).dtype), meta)


def _vdot(grad, direction):
    return sum(float(np.vdot(np.asarray(g), v)) for g, v in zip(jax.tree.leaves(grad), jax.tree.leaves(direction)))


def test_second_order_meta_gradient_matches_finite_differences(x64):
    params, task = _tiny()
    algo = MetaLSTM(_linear_apply, loss="mse", num_steps=3, hidden_size=5, second_order=True)
    meta = _perturbed_meta(algo, params, 1)
    f = jax.jit(lambda mp: algo.task_loss(mp, {}, task)[0])  # one program for all the finite differences
    grad = jax.jit(jax.grad(f))(meta)
    for s in range(3):
        d = _random_direction(meta, 10 + s)
        np.testing.assert_allclose(_vdot(grad, d), _directional_fd(f, meta, d), rtol=1e-6, atol=1e-9)


def test_first_order_meta_gradient_treats_learner_gradients_as_constants(x64):
    """The paper's default: the learner's (gradient, loss) inputs are data. Checked against finite differences
    of an independent replay that feeds the recorded gradients and losses of the unperturbed episode."""
    params, task = _tiny(seed=2)
    steps = 3
    algo = MetaLSTM(_linear_apply, loss="mse", num_steps=steps, hidden_size=5, second_order=False)
    meta = _perturbed_meta(algo, params, 2)

    # record the episode's inputs
    def support_loss(c, mp):
        return jnp.mean((_linear_apply(algo.unravel(mp, c), {}, task.support_x)[0] - task.support_y) ** 2)

    carry = algo.initial_carry(meta)
    recorded = []
    for _ in range(steps):
        loss, g = jax.value_and_grad(support_loss)(carry.c, meta)
        recorded.append((loss, g))
        carry = algo.update(meta, carry, g, loss)

    def replay(mp):
        c = algo.initial_carry(mp)
        for loss, g in recorded:
            c = algo.update(mp, c, g, loss)
        out = _linear_apply(algo.unravel(mp, c.c), {}, task.query_x)[0]
        return jnp.mean((out - task.query_y) ** 2)

    f = lambda mp: algo.task_loss(mp, {}, task)[0]  # noqa: E731
    np.testing.assert_allclose(float(f(meta)), float(replay(meta)), rtol=1e-12)
    grad = jax.grad(f)(meta)
    for s in range(2):
        d = _random_direction(meta, 20 + s)
        np.testing.assert_allclose(_vdot(grad, d), _directional_fd(replay, meta, d), rtol=1e-6, atol=1e-9)
    # and it really differs from the full (second-order) gradient
    full = jax.grad(lambda mp: MetaLSTM(_linear_apply, loss="mse", num_steps=steps, hidden_size=5,
                                        second_order=True).task_loss(mp, {}, task)[0])(meta)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(full)))
    assert diff > 1e-6


def test_meta_step_vmap_equals_map_and_jit_evaluate_curve():
    from jmeta.models import mlp
    from jmeta.train.step import init_train_state, make_meta_step

    model = mlp(4, (16,), 3, key=jax.random.key(0))
    algo = MetaLSTM(model.apply, num_steps=2)

    def normal(key, shape):  # jax.random.normal(key, shape) drawn flat: the same numbers, a cheaper compile
        return jax.random.normal(key, (math.prod(shape),)).reshape(shape)

    def sample(key, n, data=None):
        k1, k2, k3 = jax.random.split(key, 3)
        w = normal(k1, (n, 4, 3))
        xs, xq = normal(k2, (n, 9, 4)), normal(k3, (n, 9, 4))
        return TaskBatch(xs, jnp.argmax(jnp.einsum("nmd,ndk->nmk", xs, w), -1),
                         xq, jnp.argmax(jnp.einsum("nmd,ndk->nmk", xq, w), -1))

    opt = optax.chain(optax.clip_by_global_norm(0.25), optax.adam(1e-3))
    state = init_train_state(algo, model.params, model.state, opt, key=jax.random.key(1))
    out = {}
    for tp in ("vmap", "map"):
        step = make_meta_step(algo, sample, opt, meta_batch_size=4, task_parallel=tp)
        new, metrics = step(state, jax.random.key(2))
        out[tp] = (new.meta_params, float(metrics["loss"]))
    assert out["vmap"][1] == pytest.approx(out["map"][1], rel=1e-5)
    for a, b in zip(jax.tree.leaves(out["vmap"][0]), jax.tree.leaves(out["map"][0])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    task = jax.tree.map(lambda a: a[0], sample(jax.random.key(5), 1))
    ev = jax.jit(lambda mp, t: algo.evaluate(mp, model.state, t, num_steps=3))(state.meta_params, task)
    assert ev["accuracy"].shape == (4,) and ev["loss"].shape == (4,)


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="num_steps"):
        MetaLSTM(_linear_apply, num_steps=0)
    with pytest.raises(ValueError, match="bn_mode"):
        MetaLSTM(_linear_apply, bn_mode="per_step")
    with pytest.raises(ValueError, match="forget_bias_init"):
        MetaLSTM(_linear_apply, forget_bias_init=(6, 4))
    with pytest.raises(ValueError, match="apply"):
        MetaLSTM(None)
    algo = MetaLSTM(_linear_apply, hidden_size=3)
    params, task = _tiny()
    with pytest.raises(ValueError, match="hidden_size"):
        MetaLSTM(_linear_apply, hidden_size=4).adapt(algo.init(params), {}, task.support_x, task.support_y)
    with pytest.raises(ValueError, match="meta_params"):
        algo.adapt({"params": params}, {}, task.support_x, task.support_y)


def test_config_maps_onto_the_meta_lstm():
    from jmeta.run import config as C
    from jmeta.run.config import ConfigError
    from jmeta.run.experiment import build_algorithm, build_meta_optimizer

    cfg = C.load("miniimagenet-5w5s-meta-lstm")
    assert (cfg.algorithm.inner_steps, cfg.train.meta_batch_size, cfg.train.grad_clip, cfg.task.k_query,
            cfg.model.filters) == (8, 1, 0.25, 15, 32)
    algo = build_algorithm(cfg, _linear_apply, loss="cross_entropy")
    assert isinstance(algo, MetaLSTM) and algo.num_steps == 8 and algo.eval_steps == 8 and not algo.second_order
    assert C.load("miniimagenet-5w1s-meta-lstm").algorithm.inner_steps == 12
    # the clip is applied before Adam: a huge gradient moves each parameter by about lr
    opt = build_meta_optimizer(cfg)
    g = {"a": jnp.full((4,), 1e6)}
    upd, _ = opt.update(g, opt.init(g), g)
    assert float(jnp.max(jnp.abs(upd["a"]))) == pytest.approx(1e-3, rel=1e-2)
    with pytest.raises(ConfigError, match="bn_mode"):
        C.apply_overrides(cfg, ["algorithm.bn_mode=per_step"])
    with pytest.raises(ConfigError, match="grad_clip"):
        C.apply_overrides(cfg, ["train.grad_clip=-1"])


def test_short_omniglot_run_learns_above_chance(tmp_path, data_dir):
    """40 meta-steps of the Omniglot preset (one episode each) beat 5-way chance (20%) by 20 points."""
    from jmeta.run import config as C
    from jmeta.run.runner import train

    cfg = C.apply_overrides(C.load("omniglot-5w1s-meta-lstm"),
                            ["train.steps=40", "train.log_every=10", "train.checkpoint_every=0",
                             "eval.num_tasks=60", "eval.batch_size=20", "task.k_query=5", "eval.k_query=5"])
    summary = train(cfg, tmp_path, progress=False, data_dir=data_dir, tensorboard=False, plots=False)
    ev = summary["eval"]["summary"]
    before = ev["K=1 accuracy after 0 step(s)"]["mean"]
    after = ev["K=1 accuracy after 5 step(s)"]
    assert after["mean"] >= 0.40, ev
    assert after["mean"] > before + 0.1, ev
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [10, 20, 30, 40]
