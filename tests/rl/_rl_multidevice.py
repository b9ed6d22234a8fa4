"""Helper for ``test_rl_sharding.py``: the meta-RL meta-steps on N simulated CPU devices, in their own process.

Run as ``python tests/rl/_rl_multidevice.py N`` (the device count must be set before JAX initialises its
backend, hence a separate process); prints one ``RESULT {json}`` line: for each algorithm the new parameters
after one meta-step without a mesh (one device) and on an N-device task mesh, the trace counts, and how the
task-axis arrays were laid out.
"""

from __future__ import annotations

import json
import os
import sys
import time

NUM_TASKS = 8


def build():
    """Tiny MAML-RL (TRPO), ProMP and RL^2 with 8 tasks per meta-batch."""
    import jax

    from jmeta.rl import MAMLRL, RL2, PPOConfig, ProMP, envs, gaussian_mlp_policy, gru_policy, rl2_input_size

    nav = envs.Nav2D(horizon=5)
    pol = gaussian_mlp_policy(2, 2, (8,), key=jax.random.key(0))
    bandit = envs.BernoulliBandit(num_arms=3)
    return {
        # a damped Fisher: CG's solution (and TRPO's step) is then well conditioned in float32
        "MAMLRL": MAMLRL(nav, pol, num_tasks=NUM_TASKS, num_episodes=3, cg_damping=0.1, max_backtracks=5),
        "ProMP": ProMP(nav, pol, num_tasks=NUM_TASKS, num_episodes=3, ppo_epochs=2),
        "RL2": RL2(bandit, gru_policy(rl2_input_size(bandit), 3, hidden_size=8, key=jax.random.key(1)),
                   num_episodes=3, meta_batch_size=NUM_TASKS, ppo=PPOConfig(epochs=1, num_minibatches=2)),
    }


def flat(tree):
    import jax
    import numpy as np

    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)]).tolist()


def run(n):
    import jax
    import numpy as np

    from jmeta.rl import make_rl_meta_step
    from jmeta.train import distributed

    assert jax.device_count() == n, jax.devices()
    mesh = distributed.task_mesh(n)
    out = {"device_count": jax.device_count()}
    key = jax.random.key(7)
    for name, algo in build().items():
        t0 = time.perf_counter()
        res = {}
        state = algo.init(jax.random.key(3))
        one = make_rl_meta_step(algo)
        compiled1 = one.lower(state, key).compile()
        new1, m1 = compiled1(state, key)
        sharded = make_rl_meta_step(algo, mesh=mesh)
        rep = distributed.replicate(state, mesh)
        compiled = sharded.lower(rep, key).compile()
        new8, m8 = compiled(rep, key)
        new8b, _ = compiled(new8, key)  # the output state is laid out as the compiled step's input
        res["one"], res["mesh"] = flat(new1.params), flat(new8.params)
        res["start"] = flat(state.params)
        res["metrics_one"] = {k: np.asarray(v).tolist() for k, v in m1.items()}
        res["metrics_mesh"] = {k: np.asarray(v).tolist() for k, v in m8.items()}
        res["traces"] = [one.num_traces, sharded.num_traces]
        res["params_replicated"] = all(x.sharding.is_fully_replicated for x in jax.tree.leaves(new8b.params))
        hlo = compiled.as_text()
        res["step_collectives"] = {op: hlo.count(op + "(") for op in ("all-reduce", "all-gather")}
        res["step_flops"] = [compiled1.cost_analysis()["flops"], compiled.cost_analysis()["flops"]]
        # the task-axis arrays of the sampled meta-batch: their layout, and the work per device
        # (the one-device sampling program only for RL^2, whose meta-step flops are dominated by PPO)
        meshes = (None, mesh) if name == "RL2" else (mesh,)
        compiled_sample = {m: jax.jit(lambda p, k, m=m: algo.sample(p, k, mesh=m)).lower(
            rep.params if m is not None else state.params, key).compile() for m in meshes}
        samples = compiled_sample[mesh](rep.params, key)
        leaves = [x for x in jax.tree.leaves(samples[0]) if x.ndim and x.shape[0] == NUM_TASKS]
        res["sample_specs"] = sorted({str(x.sharding.spec) for x in leaves})
        res["sample_shards"] = sorted({x.addressable_shards[0].data.shape[0] for x in leaves})
        res["sample_flops"] = [compiled_sample[m].cost_analysis()["flops"] for m in meshes]
        res["seconds"] = time.perf_counter() - t0
        out[name] = res
    # a meta-batch the devices do not divide: one clear error
    algo = build()["MAMLRL"]
    try:
        make_rl_meta_step(type(algo)(algo.env, algo.policy, num_tasks=NUM_TASKS + 2), mesh=mesh)
        out["indivisible_error"] = None
    except ValueError as e:
        out["indivisible_error"] = str(e)
    return out


if __name__ == "__main__":
    n = int(sys.argv[1])
    # LLVM at -O0 without its expensive passes, and the suite's XLA:CPU flags (tests/conftest.py: the elemental
    # emitters instead of the fusion emitters), inherited from the test run: every program here is compiled, run
    # once or twice on tiny inputs and compared with another program compiled the same way, so the backend's
    # optimisation buys nothing; what the tests assert (8 devices == 1, the shardings, the HLO collectives and
    # flops) is decided before LLVM. Measured on the 2-core machine: the subprocess 72 -> 37 CPU s with -O0, and
    # 43 -> 23 CPU s with the emitter and pass flags (all of it compiles); the 8-vs-1 differences the same size
    # (MAML-RL 5.4e-3 of the update with the elemental emitters, 2.7e-3 with the fusion emitters).
    os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n} "
                               "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    print("RESULT " + json.dumps(run(n)))
