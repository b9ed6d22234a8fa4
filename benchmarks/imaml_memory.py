"""iMAML vs MAML: peak memory and step time of the meta-gradient at 5 / 50 / 100 inner steps.

Command (repo root; about 1-2 minutes on 2 CPU cores):

    python benchmarks/imaml_memory.py --out runs/bench/imaml_memory.json

For each algorithm (second-order MAML; iMAML with 5 CG steps) and inner-step count ``K``, the
program ``jax.value_and_grad`` of the mean task objective over a ``vmap``-ed meta-batch is
lowered and compiled once; the JSON holds:

* ``compile_s``: lower + compile time;
* ``memory``: XLA's ``memory_analysis()`` of that compiled program (``temp``, ``argument``,
  ``output`` bytes and ``peak_bytes = temp + argument + output``);
* ``flops``: XLA's ``cost_analysis()`` count (while-loop bodies counted once: iMAML's inner loop
  and CG are while/scan loops, so treat its FLOPs as per-iteration, not total);
* ``step_median_s``: the median of ``--reps`` timed calls after one warm-up (``block_until_ready``).

Model (default ``--model mlp``): an MLP 784-256-128-64-5 on 5-way 1-shot tasks with 15
queries per class, Omniglot-shaped random inputs (memory and time do not depend on the data).
``--model conv4`` uses Conv4-64 on 28x28x1 (per-task conv weights under ``vmap``: very slow on
XLA:CPU, meant for GPU). Only ratios measured in the same run are meaningful on a shared CPU.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp


def _model(name, n_way, key):
    if name == "mlp":
        from jmeta.models import mlp

        model = mlp(28 * 28, (256, 128, 64), n_way, key=key)
        return model, lambda x: x.reshape(x.shape[0], -1)
    if name == "conv4":
        from jmeta.models.conv import conv4

        return conv4(n_way, key=key), lambda x: x
    raise ValueError(f"--model must be 'mlp' or 'conv4', got {name!r}")


def _tasks(key, num_tasks, n_way, k_shot, q_query):
    from jmeta.tasks import TaskBatch

    ks = jax.random.split(key, 2)
    sy = jnp.tile(jnp.arange(n_way, dtype=jnp.int32), k_shot)
    qy = jnp.tile(jnp.arange(n_way, dtype=jnp.int32), q_query)
    sx = jax.random.uniform(ks[0], (num_tasks, sy.size, 28, 28, 1))
    qx = jax.random.uniform(ks[1], (num_tasks, qy.size, 28, 28, 1))
    return TaskBatch(sx, jnp.broadcast_to(sy, (num_tasks, sy.size)), qx, jnp.broadcast_to(qy, (num_tasks, qy.size)))


def measure(algo, meta_params, model_state, tasks, reps):
    def objective(mp):
        obj, _ = jax.vmap(lambda t: algo.task_loss(mp, model_state, t))(tasks)
        return jnp.mean(obj)

    fn = jax.jit(jax.value_and_grad(objective))
    t0 = time.perf_counter()
    compiled = fn.lower(meta_params).compile()
    compile_s = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    jax.block_until_ready(compiled(meta_params))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(meta_params))
        times.append(time.perf_counter() - t0)
    mem = {"temp": int(ma.temp_size_in_bytes), "argument": int(ma.argument_size_in_bytes),
           "output": int(ma.output_size_in_bytes)}
    mem["peak_bytes"] = mem["temp"] + mem["argument"] + mem["output"]
    return {"compile_s": compile_s, "step_median_s": statistics.median(times), "step_times_s": times,
            "memory": mem, "flops": float(cost.get("flops", float("nan"))) if cost else None}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mlp", choices=("mlp", "conv4"))
    p.add_argument("--steps", default="5,50,100", help="comma-separated inner-step counts")
    p.add_argument("--meta-batch", type=int, default=16)
    p.add_argument("--n-way", type=int, default=5)
    p.add_argument("--k-shot", type=int, default=1)
    p.add_argument("--q-query", type=int, default=15)
    p.add_argument("--inner-lr", type=float, default=0.1)
    p.add_argument("--reg-lambda", type=float, default=2.0)
    p.add_argument("--cg-steps", type=int, default=5)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default="runs/bench/imaml_memory.json")
    args = p.parse_args(argv)

    from jmeta.algorithms import MAML
    from jmeta.algorithms.imaml import IMAML
    from jmeta.models.bridge import Model

    key = jax.random.key(0)
    base, prep = _model(args.model, args.n_way, key)

    def apply(p, s, x, *, train):
        return base.apply(p, s, prep(x), train=train)

    model = Model(apply, base.params, base.state)
    tasks = _tasks(jax.random.key(1), args.meta_batch, args.n_way, args.k_shot, args.q_query)
    results = []
    for k in [int(s) for s in args.steps.split(",")]:
        algos = {
            "maml": MAML(model.apply, loss="cross_entropy", inner_lr=args.inner_lr, num_steps=k),
            "imaml": IMAML(model.apply, loss="cross_entropy", inner_lr=args.inner_lr, num_steps=k,
                           reg_lambda=args.reg_lambda, cg_steps=args.cg_steps),
        }
        for name, algo in algos.items():
            r = measure(algo, algo.init(model.params), model.state, tasks, args.reps)
            r.update(algorithm=name, inner_steps=k)
            results.append(r)
            print(f"{name:6s} K={k:4d} peak={r['memory']['peak_bytes'] / 2**20:8.2f} MiB "
                  f"step={r['step_median_s'] * 1e3:8.2f} ms compile={r['compile_s']:.2f} s", flush=True)

    def get(name, k):
        return next(r for r in results if r["algorithm"] == name and r["inner_steps"] == k)

    ks = [int(s) for s in args.steps.split(",")]
    summary = {
        f"{name}_peak_growth_{ks[0]}_to_{ks[-1]}": get(name, ks[-1])["memory"]["peak_bytes"]
        / get(name, ks[0])["memory"]["peak_bytes"] for name in ("maml", "imaml")}
    summary.update({f"maml_over_imaml_peak_K{k}": get("maml", k)["memory"]["peak_bytes"]
                    / get("imaml", k)["memory"]["peak_bytes"] for k in ks})
    summary.update({f"imaml_over_maml_step_time_K{k}": get("imaml", k)["step_median_s"]
                    / get("maml", k)["step_median_s"] for k in ks})
    out = {"config": vars(args), "device": str(jax.devices()[0]), "backend": jax.default_backend(),
           "jax": jax.__version__, "platform": platform.platform(), "results": results, "summary": summary}
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
