"""Sinusoid meta-step: jmeta's algorithms against a plain, minimal JAX MAML.

Measures, for each algorithm, the compile time and the median time of one
meta-step (sample 25 sinusoid tasks with K=10, MLP 1-40-40-1, one inner step,
Adam), after warm-up, with ``block_until_ready``; and the same for a MAML
written from scratch in plain JAX inside this file (no jmeta, no optax, no
flax). jmeta's MAML and the reference are timed in interleaved rounds in the
same process, so the reported overhead ratio is measured side by side.

Run:
    python benchmarks/sinusoid_step.py --out results/sinusoid_step.json
    python benchmarks/sinusoid_step.py --quick   # fewer rounds (smoke test)
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from jmeta.algorithms import ANIL, FOMAML, MAML, MAMLPlusPlus, MetaSGD, Reptile  # noqa: E402
from jmeta.models import mlp  # noqa: E402
from jmeta.tasks import Sinusoid  # noqa: E402
from jmeta.train import init_train_state, make_meta_step  # noqa: E402

B, K, LR, META_LR = 25, 10, 0.01, 1e-3


# ---------------------------------------------------------------- the plain-JAX reference
def plain_init(key):
    ks = jax.random.split(key, 3)
    sizes = [(1, 40), (40, 40), (40, 1)]
    params = []
    for k, (i, o) in zip(ks, sizes):
        bound = 1.0 / jnp.sqrt(i)
        params.append((jax.random.uniform(k, (i, o), minval=-bound, maxval=bound), jnp.zeros((o,))))
    return params


def plain_forward(params, x):
    for i, (w, b) in enumerate(params):
        x = x @ w + b
        if i < len(params) - 1:
            x = jax.nn.relu(x)
    return x


def plain_mse(params, x, y):
    return jnp.mean((plain_forward(params, x) - y) ** 2)


def plain_task_loss(params, sx, sy, qx, qy):
    g = jax.grad(plain_mse)(params, sx, sy)
    fast = jax.tree.map(lambda p, gg: p - LR * gg, params, g)
    return plain_mse(fast, qx, qy)


def plain_sample(key):
    ka, kp, kx = jax.random.split(key, 3)
    amp = jax.random.uniform(ka, (B,), minval=0.1, maxval=5.0)
    ph = jax.random.uniform(kp, (B,), minval=0.0, maxval=jnp.pi)
    x = jax.random.uniform(kx, (B, 2 * K, 1), minval=-5.0, maxval=5.0)
    y = amp[:, None, None] * jnp.sin(x - ph[:, None, None])
    return x[:, :K], y[:, :K], x[:, K:], y[:, K:]


@jax.jit
def plain_step(params, m, v, t, key):
    sx, sy, qx, qy = plain_sample(jax.random.fold_in(key, t))

    def meta_loss(p):
        return jnp.mean(jax.vmap(plain_task_loss, in_axes=(None, 0, 0, 0, 0))(p, sx, sy, qx, qy))

    loss, g = jax.value_and_grad(meta_loss)(params)
    t = t + 1
    m = jax.tree.map(lambda a, b: 0.9 * a + 0.1 * b, m, g)
    v = jax.tree.map(lambda a, b: 0.999 * a + 0.001 * b * b, v, g)
    c1, c2 = 1 - 0.9 ** t, 1 - 0.999 ** t
    params = jax.tree.map(lambda p, a, b: p - META_LR * (a / c1) / (jnp.sqrt(b / c2) + 1e-8), params, m, v)
    return params, m, v, t, loss


# ---------------------------------------------------------------- measuring
def _time_calls(fn, n):
    """Wall time per call of ``fn`` over ``n`` back-to-back calls (result blocked at the end)."""
    t0 = time.perf_counter()
    out = None
    for _ in range(n):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / n


def make_jmeta(algo_factory):
    model = mlp()
    algo = algo_factory(model)
    opt = optax.adam(META_LR)
    state = init_train_state(algo, model.params, model.state, opt)
    step = make_meta_step(algo, Sinusoid(K, K).sample, opt, meta_batch_size=B)
    key = jax.random.key(0)
    t0 = time.perf_counter()
    compiled = step.lower(state, key).compile()
    compile_s = time.perf_counter() - t0
    box = {"s": state}

    def call():
        box["s"], m = compiled(box["s"], key)
        return m["loss"]

    flops = (compiled.cost_analysis() or {})
    if isinstance(flops, list):
        flops = flops[0] if flops else {}
    return call, compile_s, float(flops.get("flops", float("nan")))


def make_plain():
    params = plain_init(jax.random.key(0))
    zeros = jax.tree.map(jnp.zeros_like, params)
    args = (params, zeros, zeros, jnp.zeros((), jnp.int32), jax.random.key(0))
    t0 = time.perf_counter()
    compiled = plain_step.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    box = {"a": args}

    def call():
        p, m, v, t, loss = compiled(*box["a"])
        box["a"] = (p, m, v, t, box["a"][4])
        return loss

    flops = (compiled.cost_analysis() or {})
    if isinstance(flops, list):
        flops = flops[0] if flops else {}
    return call, compile_s, float(flops.get("flops", float("nan")))


ALGOS = {
    "maml": lambda m: MAML(m.apply, inner_lr=LR, num_steps=1),
    "fomaml": lambda m: FOMAML(m.apply, inner_lr=LR, num_steps=1),
    "metasgd": lambda m: MetaSGD(m.apply, inner_lr=LR, num_steps=1),
    "anil": lambda m: ANIL(m.apply, inner_lr=LR, num_steps=1, adapt_params="layers_2"),
    "reptile": lambda m: Reptile(m.apply, inner_lr=LR, num_steps=1),
    "mamlpp": lambda m: MAMLPlusPlus(m.apply, inner_lr=LR, num_steps=1),
    "maml_learned_lr": lambda m: MAML(m.apply, inner_lr=LR, num_steps=1, learn_lr="scalar"),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/sinusoid_step.json")
    ap.add_argument("--rounds", type=int, default=15, help="timing rounds (median over rounds)")
    ap.add_argument("--calls", type=int, default=200, help="meta-steps per round")
    ap.add_argument("--quick", action="store_true", help="3 rounds of 20 calls")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.calls = 3, 20

    plain_call, plain_compile, plain_flops = make_plain()
    results = {"reference_plain_jax": {"compile_s": plain_compile, "flops_per_step": plain_flops}}
    runners = {"reference_plain_jax": plain_call}
    for name, factory in ALGOS.items():
        call, c, f = make_jmeta(factory)
        runners[name] = call
        results[name] = {"compile_s": c, "flops_per_step": f}
    # Warm-up, then interleaved rounds: every runner is timed in every round.
    for call in runners.values():
        _time_calls(call, max(args.calls // 4, 5))
    samples = {n: [] for n in runners}
    for _ in range(args.rounds):
        for n, call in runners.items():
            samples[n].append(_time_calls(call, args.calls))
    for n, s in samples.items():
        q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0]] * 3
        results[n].update(step_median_s=statistics.median(s), step_q1_s=q[0], step_q3_s=q[2], rounds=len(s),
                          calls_per_round=args.calls)
    # The overhead ratio: per-round ratio of jmeta MAML to the reference, median over rounds.
    ratios = [a / b for a, b in zip(samples["maml"], samples["reference_plain_jax"])]
    out = {
        "benchmark": "sinusoid_step",
        "workload": {"meta_batch": B, "k_support": K, "k_query": K, "model": "MLP 1-40-40-1 ReLU",
                     "inner_steps": 1, "inner_lr": LR, "meta_optimizer": "adam"},
        "device": jax.devices()[0].device_kind, "platform": jax.default_backend(),
        "jax": jax.__version__, "python": platform.python_version(), "cpu_count": __import__("os").cpu_count(),
        "maml_over_plain_jax_ratio_median": statistics.median(ratios),
        "maml_over_plain_jax_ratio_per_round": ratios,
        "results": results,
    }
    p = pathlib.Path(args.out)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(out, indent=2) + "\n")
    w = max(len(n) for n in results)
    print(f"{'algorithm':{w}s}  compile(s)  step median (ms)")
    for n, r in results.items():
        print(f"{n:{w}s}  {r['compile_s']:10.2f}  {r['step_median_s'] * 1e3:8.3f}")
    print(f"jmeta MAML / plain JAX MAML (median of per-round ratios): {out['maml_over_plain_jax_ratio_median']:.3f}")
    print(f"wrote {p}")
    return out


if __name__ == "__main__":
    main()
