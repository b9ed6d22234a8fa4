"""The sharded meta-step: 1 device vs 8 simulated devices, one compilation, mesh helpers."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import _multidevice  # noqa: E402


@pytest.fixture(scope="module")
def eight_devices():
    # the suite's XLA:CPU flags (conftest) are inherited; the helper adds the device count to them
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("JAX_PLATFORMS", "cpu")
    proc = subprocess.run([sys.executable, str(HERE / "_multidevice.py"), "8"], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def one_device():
    assert jax.device_count() == 1, "the rest of the suite must keep one device"
    return _multidevice.run_step(mesh=None)


def _close(a, b, what):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5, err_msg=f"{what}: loss")
    np.testing.assert_allclose(a["objective"], b["objective"], rtol=1e-5, err_msg=f"{what}: objective")
    np.testing.assert_allclose(a["model_state"], b["model_state"], rtol=1e-5, atol=1e-7,
                               err_msg=f"{what}: model state")
    assert len(a["grads"]) == len(b["grads"])
    for i, (ga, gb) in enumerate(zip(a["grads"], b["grads"])):
        np.testing.assert_allclose(ga, gb, rtol=1e-4, atol=1e-6, err_msg=f"{what}: meta-gradient leaf {i}")


def test_eight_devices_match_one_device(eight_devices, one_device):
    assert eight_devices["device_count"] == 8
    _close(eight_devices["mesh1"], one_device, "1-device mesh vs no mesh")
    _close(eight_devices["mesh8"], one_device, "8 devices vs 1 device")
    _close(eight_devices["mesh8_explicit_map"], one_device, "8 devices (Explicit axis, chunks of 1) vs 1 device")
    # the meta-gradient is not trivially zero
    assert one_device["grad_norm"] > 1e-3


def test_compiles_once(eight_devices, one_device):
    assert one_device["traces"] == 1
    for name in ("mesh1", "mesh8", "mesh8_explicit_map"):
        assert eight_devices[name]["traces"] == 1, name
        assert eight_devices[name]["steps"] == 3, name


def test_mesh_errors():
    import optax

    from jmeta.train import distributed
    from jmeta.train.step import make_meta_step

    alg, _, tasks, _ = _multidevice.build()
    mesh = distributed.task_mesh()
    opt = optax.sgd(0.1)
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        make_meta_step(alg, tasks.sample, opt, meta_batch_size=4, mesh="gpu")
    with pytest.raises(ValueError, match="task_axis must name axes"):
        make_meta_step(alg, tasks.sample, opt, meta_batch_size=4, mesh=mesh, task_axis="batch")
    with pytest.raises(ValueError, match="task_axis is only meaningful"):
        make_meta_step(alg, tasks.sample, opt, meta_batch_size=4, task_axis="tasks")
    with pytest.raises(ValueError, match="num_devices"):
        distributed.task_mesh(jax.device_count() + 1)
    with pytest.raises(TypeError, match="seed"):
        distributed.shared_key(1.5)


def test_single_process_helpers():
    from jmeta.train import distributed

    info = distributed.initialize()  # no cluster in the environment: a no-op
    assert info["process_count"] == 1 and info["global_devices"] == jax.device_count()
    k = distributed.shared_key(3)
    distributed.assert_same_across_hosts(k)
    assert jax.random.key_data(distributed.process_key(k)).tolist() == \
        jax.random.key_data(jax.random.fold_in(k, 0)).tolist()
    mesh = distributed.task_mesh(1, axis_name="t")
    x = distributed.replicate({"a": np.ones(3)}, mesh)["a"]
    assert x.sharding.is_fully_replicated


def test_sharded_step_with_a_prng_key_in_the_model_state(eight_devices):
    """An nnx.Dropout keeps its key in the model state: the cross-device reduction crashed on typed keys
    (lax.pmax); on 4 devices the step now gives one device's loss and key (``_multidevice.run_dropout``, in the
    8-device subprocess: a 4-device mesh of its first 4 devices)."""
    res = eight_devices["dropout"]
    assert res["one"]["keys"] and res["four"]["keys"] == res["one"]["keys"]
    np.testing.assert_allclose(res["four"]["loss"], res["one"]["loss"], rtol=1e-5)
