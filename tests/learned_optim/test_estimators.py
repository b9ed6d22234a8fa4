"""Meta-gradient estimators: finite differences, truncation, ES/PES sanity, smoke."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmeta.learned_optim import (
    ES,
    PES,
    LSTMOptimizer,
    QuadraticFamily,
    TruncatedBPTT,
    init_meta_train,
    make_optimizer_meta_step,
)

SMALL_LOPT = LSTMOptimizer(hidden_size=6)


@functools.lru_cache(maxsize=None)
def jitted_grad(est):
    """One compiled ``est.grad`` per (hashable) estimator config, shared across tests."""
    return jax.jit(est.grad)


@pytest.fixture
def x64():
    """float64 for the duration of a test (restored afterwards)."""
    with jax.enable_x64(True):
        yield


def _close(a, b, rtol, atol=0.0):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


# ---------------------------------------------------------------------------
# Gradient correctness
# ---------------------------------------------------------------------------


def test_bptt_gradient_matches_central_finite_differences(x64):
    fam = QuadraticFamily(dim=3, init_scale=0.5)
    est = TruncatedBPTT(
        SMALL_LOPT, fam, num_tasks=2, horizon=6, truncation_length=3, second_order=True, stagger=False
    )
    theta = SMALL_LOPT.init(jax.random.key(0))
    assert theta["out"]["w"].dtype == jnp.float64
    ws = est.init_worker_state(theta, jax.random.key(1))
    grad = jax.jit(est.grad)  # one program: the meta-loss comes back in the metrics
    _, ws, _ = grad(theta, ws, jax.random.key(2))  # mid-horizon: non-zero LSTM state
    key = jax.random.key(3)
    loss = lambda th: grad(th, ws, key)[2]["meta_loss"]  # noqa: E731
    g, _, _ = grad(theta, ws, key)
    leaves, treedef = jax.tree.flatten(theta)
    h = 1e-6
    for i in range(3):  # directions and perturbations in float64 NumPy: no eager device op compiles
        rng = np.random.default_rng(100 + i)
        v = treedef.unflatten([rng.normal(size=x.shape) for x in leaves])
        plus = jax.tree.map(lambda t, d: np.asarray(t) + h * d, theta, v)
        minus = jax.tree.map(lambda t, d: np.asarray(t) - h * d, theta, v)
        fd = (float(loss(plus)) - float(loss(minus))) / (2 * h)
        ad = sum(float(np.vdot(np.asarray(a), b)) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(v)))
        np.testing.assert_allclose(ad, fd, rtol=1e-6, atol=1e-9)


def _reference_full_unroll(lopt, theta, ws, horizon, second_order):
    """Hand-written Python-loop unroll of the whole horizon for every worker."""
    total = 0.0
    n = ws.step.shape[0]
    for i in range(n):
        task = jax.tree.map(lambda x: x[i], ws.task)
        params = ws.params[i]
        opt = lopt.opt_fn(theta)
        state = opt.init(params)
        losses = []
        for _ in range(horizon):
            g = jax.grad(task.loss)(params)
            if not second_order:
                g = jax.lax.stop_gradient(g)
            u, state = opt.update(g, state, params)
            params = params + u
            losses.append(task.loss(params))
        total = total + jnp.mean(jnp.stack(losses))
    return total / n


@pytest.mark.parametrize("second_order", [False, True])
def test_truncation_covering_horizon_equals_full_gradient(second_order):
    fam = QuadraticFamily(dim=4, init_scale=0.3)
    horizon = 5
    est = TruncatedBPTT(
        SMALL_LOPT, fam, num_tasks=2, horizon=horizon, truncation_length=horizon,
        second_order=second_order, stagger=False,
    )
    theta = SMALL_LOPT.init(jax.random.key(0))
    ws = est.init_worker_state(theta, jax.random.key(1))
    g, _, metrics = jitted_grad(est)(theta, ws, jax.random.key(2))
    ref_loss, ref_g = jax.value_and_grad(_reference_full_unroll, argnums=1)(
        SMALL_LOPT, theta, ws, horizon, second_order
    )
    np.testing.assert_allclose(metrics["meta_loss"], ref_loss, rtol=1e-5)
    _close(g, ref_g, rtol=2e-4, atol=1e-6)


def test_truncations_carry_state_and_reset_at_horizon():
    fam = QuadraticFamily(dim=3)
    est = TruncatedBPTT(SMALL_LOPT, fam, num_tasks=4, horizon=4, truncation_length=2, stagger=False)
    full = dataclasses.replace(est, truncation_length=4)
    theta = SMALL_LOPT.init(jax.random.key(0))
    ws0 = est.init_worker_state(theta, jax.random.key(1))
    grad = jitted_grad(est)
    _, ws1, _ = grad(theta, ws0, jax.random.key(2))
    _, ws2, _ = grad(theta, ws1, jax.random.key(3))
    np.testing.assert_array_equal(ws2.step, [4] * 4)
    # Two truncations of 2 land where one truncation of 4 lands (quadratics ignore data keys).
    _, ws_full, _ = jitted_grad(full)(theta, ws0, jax.random.key(4))
    _close(ws2.params, ws_full.params, rtol=1e-5, atol=1e-6)
    _close(ws2.opt_state, ws_full.opt_state, rtol=1e-5, atol=1e-6)
    # The next call resets: new task, 2 steps into it.
    _, ws3, _ = grad(theta, ws2, jax.random.key(5))
    np.testing.assert_array_equal(ws3.step, [2] * 4)
    assert not np.allclose(ws3.task.w, ws2.task.w)


def test_staggered_workers_start_at_truncation_multiples():
    est = TruncatedBPTT(SMALL_LOPT, QuadraticFamily(), num_tasks=64, horizon=100, truncation_length=20)
    ws = est.init_worker_state(SMALL_LOPT.init(jax.random.key(0)), jax.random.key(1))
    steps = np.asarray(ws.step)
    assert set(steps.tolist()) <= {0, 20, 40, 60, 80} and len(set(steps.tolist())) > 1


# ---------------------------------------------------------------------------
# ES / PES
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _PerCoordinateLR:
    """A learned optimizer ``u = -lr * g`` with a learned lr per coordinate."""

    dim: int

    def init(self, key):
        del key
        return {"lr": jnp.linspace(0.01, 0.04, self.dim)}

    def opt_fn(self, theta):
        def update(g, state, params=None):
            return -theta["lr"] * g, state

        return optax.GradientTransformation(lambda p: optax.EmptyState(), update)


@dataclasses.dataclass(frozen=True)
class _OneQuadratic:
    """A family with a single fixed quadratic."""

    dim: int

    def sample(self, key):
        del key
        return QuadraticFamily(self.dim, init_scale=0.0).sample(jax.random.key(42))


def test_es_is_unbiased_on_a_quadratic_meta_loss():
    """One step of ``-lr * g`` on a quadratic: the meta-loss is quadratic in ``lr``.

    For a quadratic L, the Gaussian-smoothed gradient equals the true one and
    ``L(phi + s e) - L(phi - s e) = 2 s e . grad L(phi)``; so the antithetic ES
    estimate is ``mean_i e_i e_i^T grad``, with relative error about
    ``sqrt((dim + 1) / N)`` (3.5% here). The 15% tolerance fails for a wrong
    scale, sign or a biased estimator.
    """
    dim, n = 4, 4096
    lopt, fam = _PerCoordinateLR(dim), _OneQuadratic(dim)
    theta = lopt.init(None)
    kw = dict(num_tasks=n, horizon=1, truncation_length=1, stagger=False)
    bptt = TruncatedBPTT(lopt, fam, second_order=True, **kw)
    es = ES(lopt, fam, std=0.3, **kw)
    ws = bptt.init_worker_state(theta, jax.random.key(0))
    true_g, _, _ = jitted_grad(bptt)(theta, ws, jax.random.key(1))
    es_grad = jitted_grad(es)
    es_g, _, _ = es_grad(theta, ws, jax.random.key(2))
    t, e = np.asarray(true_g["lr"]), np.asarray(es_g["lr"])
    assert np.linalg.norm(t) > 1.0
    assert np.linalg.norm(e - t) / np.linalg.norm(t) < 0.15, (e, t)
    # Other seeds, other estimates; their average is closer still.
    many = np.mean(
        [np.asarray(es_grad(theta, ws, jax.random.key(k))[0]["lr"]) for k in range(3, 7)] + [e],
        axis=0,
    )
    assert np.linalg.norm(many - t) / np.linalg.norm(t) < 0.08, (many, t)


def test_pes_equals_es_on_first_truncation_and_accumulates_noise():
    fam = QuadraticFamily(dim=3)
    kw = dict(num_tasks=4, horizon=4, truncation_length=2, stagger=False)
    es, pes = ES(SMALL_LOPT, fam, std=0.05, **kw), PES(SMALL_LOPT, fam, std=0.05, **kw)
    theta = SMALL_LOPT.init(jax.random.key(0))
    ws_es = es.init_worker_state(theta, jax.random.key(1))
    ws_pes = pes.init_worker_state(theta, jax.random.key(1))
    k1, k2 = jax.random.key(2), jax.random.key(3)
    pes_grad = jitted_grad(pes)
    g_es, _, _ = jitted_grad(es)(theta, ws_es, k1)
    g_pes, ws_pes, _ = pes_grad(theta, ws_pes, k1)
    _close(g_es, g_pes, rtol=1e-4, atol=1e-6)
    eps1 = pes._sample_noise(theta, jax.random.split(k1)[0])
    eps2 = pes._sample_noise(theta, jax.random.split(k2)[0])
    _, ws_pes2, _ = pes_grad(theta, ws_pes, k2)
    _close(ws_pes2.accum, jax.tree.map(jnp.add, eps1, eps2), rtol=1e-5, atol=1e-6)
    # At the horizon the accumulated noise restarts.
    _, ws_pes3, _ = pes_grad(theta, ws_pes2, k1)
    _close(ws_pes3.accum, eps1, rtol=1e-5, atol=1e-6)
    assert not np.allclose(ws_pes2.pos.params, ws_pes2.neg.params)


# ---------------------------------------------------------------------------
# One smoke test every estimator passes
# ---------------------------------------------------------------------------


class _CountingEstimator:
    def __init__(self, est):
        self.est, self.learned_opt, self.traces = est, est.learned_opt, 0

    def init_worker_state(self, theta, key):
        return self.est.init_worker_state(theta, key)

    def grad(self, theta, worker_state, key):
        self.traces += 1
        return self.est.grad(theta, worker_state, key)


@pytest.mark.parametrize("cls", [TruncatedBPTT, ES, PES])
def test_estimator_smoke(cls):
    est = cls(SMALL_LOPT, QuadraticFamily(dim=3), num_tasks=4, horizon=4, truncation_length=2)
    counting = _CountingEstimator(est)
    state = init_meta_train(counting, jax.random.key(0))
    step = make_optimizer_meta_step(counting)
    theta0 = state.theta
    for i in range(3):
        state, metrics = step(state, jax.random.key(10 + i))
    assert counting.traces == 1  # no recompilation across meta-steps
    assert int(state.step) == 3
    assert jax.tree.structure(state.theta) == jax.tree.structure(theta0)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert float(metrics["grad_norm"]) > 0
    assert not np.allclose(state.theta["out"]["w"], theta0["out"]["w"])


def test_bad_estimator_config_raises():
    with pytest.raises(ValueError, match="truncation_length"):
        TruncatedBPTT(SMALL_LOPT, QuadraticFamily(), horizon=10, truncation_length=3)
    with pytest.raises(ValueError, match="meta_loss"):
        TruncatedBPTT(SMALL_LOPT, QuadraticFamily(), meta_loss="max")
    with pytest.raises(ValueError, match="num_tasks"):
        ES(SMALL_LOPT, QuadraticFamily(), num_tasks=0)
    with pytest.raises(ValueError, match="std"):
        PES(SMALL_LOPT, QuadraticFamily(), std=-1.0)
    with pytest.raises(ValueError, match="task_family"):
        TruncatedBPTT(SMALL_LOPT, object())
