"""Helper for ``test_distributed.py``: the meta-step on N simulated CPU devices, in its own process.

Run as ``python tests/train/_multidevice.py N`` (the device count must be set
before JAX initialises its backend, hence a separate process); prints one JSON
object. The parent test imports :func:`build` and :func:`run_step` to compute
the single-device reference in its own one-device process.
"""

from __future__ import annotations

import json
import os
import sys

META_BATCH = 16


def build():
    """A tiny MAML problem with a float model state (a running input mean) to check state averaging."""
    from _problems import record_grads, tiny_model

    from jmeta.algorithms import MAML
    from jmeta.tasks import Sinusoid

    model = tiny_model()
    alg = MAML(model.apply, inner_lr=0.05, num_steps=2)
    return alg, model, Sinusoid(k_support=5, k_query=5), record_grads()


def run_step(mesh=None, task_parallel="vmap", num_steps=3):
    """Runs ``num_steps`` steps; returns the first step's numbers and the trace count."""
    import jax
    import numpy as np

    from jmeta.train import distributed
    from jmeta.train.step import init_train_state, make_meta_step

    alg, model, tasks, record = build()
    traces = []

    def sample(key, n, data=None):
        traces.append(1)  # runs once per trace of the step
        return tasks.sample(key, n)

    step = make_meta_step(alg, sample, record, meta_batch_size=META_BATCH, mesh=mesh, task_parallel=task_parallel)
    state = init_train_state(alg, model.params, model.state, record)
    if mesh is not None:
        state = distributed.replicate(state, mesh)
    key = jax.random.key(42)
    first = None
    for _ in range(num_steps):
        new_state, metrics = step(state, key)
        if first is None:
            first = (new_state, metrics)
        state = new_state._replace(model_state=state.model_state)  # same model state every step
    new_state, metrics = first
    leaves = [np.asarray(x, np.float64).ravel().tolist() for x in jax.tree.leaves(new_state.opt_state)]
    return {"loss": float(metrics["loss"]), "objective": float(metrics["objective"]),
            "grad_norm": float(metrics["grad_norm"]), "grads": leaves,
            "model_state": float(new_state.model_state["mean"]), "traces": len(traces),
            "steps": int(state.step)}


def run_dropout(num_devices: int = 4) -> dict:
    """An nnx.Dropout model (its key lives in the model state): one meta-step without a mesh and on a
    ``num_devices`` task mesh, the loss and the state's keys of each."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from jmeta.algorithms import MAML
    from jmeta.models import from_nnx
    from jmeta.tasks import Sinusoid
    from jmeta.train.distributed import replicate, task_mesh
    from jmeta.train.step import init_train_state, make_meta_step

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l1, self.d = nnx.Linear(1, 16, rngs=rngs), nnx.Dropout(0.1, rngs=rngs)
            self.l2 = nnx.Linear(16, 1, rngs=rngs)

        def __call__(self, x):
            return self.l2(self.d(jnp.tanh(self.l1(x))))

    model = from_nnx(Net(nnx.Rngs(0, dropout=1)))
    alg, opt, out = MAML(model.apply, inner_lr=0.05, num_steps=1), optax.sgd(1e-3), {}
    for name, mesh in (("one", None), ("four", task_mesh(num_devices))):
        step = make_meta_step(alg, Sinusoid().sample, opt, meta_batch_size=8, mesh=mesh)
        st = init_train_state(alg, model.params, model.state, opt)
        st = replicate(st, mesh) if mesh is not None else st
        new, m = step(st, jax.random.key(0))
        keys = [np.asarray(jax.random.key_data(x)).tolist() for x in jax.tree.leaves(new.model_state)
                if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)]
        out[name] = {"loss": float(m["loss"]), "keys": keys}
    return out


def main(n: int) -> None:
    # The suite's XLA:CPU flags (inherited) plus LLVM at -O0 without its expensive passes: the programs here run
    # once or a few times on tiny inputs. Measured on the 2-core machine: test_distributed.py 16.8 -> 12.2 CPU s;
    # 8 devices vs the parent's one-device step (the suite's flags, -O2): loss 1.3e-7 relative, meta-gradients
    # within 6% of their tolerance.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}"
                               " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true").strip()
    import jax

    jax.config.update("jax_num_cpu_devices", n)
    from jmeta.train.distributed import task_mesh

    assert jax.device_count() == n, jax.devices()
    out = {"device_count": jax.device_count(),
           "mesh1": run_step(task_mesh(1)),
           f"mesh{n}": run_step(task_mesh(n)),
           f"mesh{n}_explicit_map": run_step(task_mesh(n, explicit=True), task_parallel=1),
           "dropout": run_dropout(4)}
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    main(int(sys.argv[1]))
