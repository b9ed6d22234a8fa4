"""benchmarks/sinusoid_stability.py: its Hessian eigenvalue against a dense eigensolver, and its
reconstruction of a run's evaluation tasks against the run's own eval.json (a second route)."""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta.run.cli import main as jmeta_main

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stability():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import sinusoid_stability as mod  # noqa: PLC0415

    return mod


def test_top_eigenvalue_matches_dense_hessian(stability, x64):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = {"w1": jax.random.normal(k1, (1, 6)), "w2": jax.random.normal(k2, (6, 1))}
    x = jax.random.uniform(k3, (5, 1), minval=-5.0, maxval=5.0)
    y = 2.0 * jnp.sin(x)

    def loss(p):
        return jnp.mean((jnp.tanh(x @ p["w1"]) @ p["w2"] - y) ** 2)

    flat, unravel = jax.flatten_util.ravel_pytree(params)
    eig = np.linalg.eigvalsh(np.asarray(jax.hessian(lambda f: loss(unravel(f)))(flat)))
    want = eig[np.argmax(np.abs(eig))]
    got = float(stability.top_eigenvalue(loss, params, jax.random.key(1), 300))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_eval_tasks_reproduce_the_runs_evaluation(stability, tmp_path):
    run = tmp_path / "run"
    assert jmeta_main(["train", "--out", str(run), "--no-progress", "--no-plots", "--steps", "20",
                       "--set", "train.log_every=10", "--set", "train.checkpoint_every=10",
                       "--set", "train.meta_batch_size=5", "--set", "eval.num_tasks=10", "--set", "eval.shots=[5]",
                       "--set", "eval.report_steps=[1,3]", "--set", "eval.steps=3",
                       "--set", "eval.batch_size=4"]) == 0
    out = tmp_path / "stab.json"
    stability.main([str(run), "--out", str(out), "--shots", "5", "--steps", "3", "--power-iters", "5"])
    res = json.loads(out.read_text())
    ev = json.loads((run / "eval.json").read_text())
    q = np.array([t["query_mse"] for t in res["tasks"]])
    assert q.shape == (10, 4)
    # same tasks (three batches of 4, the last cut to 2), same plain-SGD steps => same query losses
    np.testing.assert_allclose(q.mean(axis=0), ev["results"]["K=5"]["loss"]["mean"], rtol=2e-5)
    assert res["summary"]["num_tasks"] == 10 and res["summary"]["alpha"] == 0.01


def test_rejects_a_non_sinusoid_folder(stability, tmp_path):
    with pytest.raises(SystemExit):
        stability.main([str(tmp_path), "--out", str(tmp_path / "x.json")])
