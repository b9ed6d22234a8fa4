"""Meta-RL throughput: vmapped nav2d rollouts (env-steps/s) and MAML-TRPO meta-iterations, against plain JAX.

Measures, on the default JAX device:

* ``rollouts``: environment steps per second of :func:`jmeta.rl.rollout_tasks` on :class:`jmeta.rl.envs.Nav2D`
  (horizon 100) with MAML-RL's Gaussian MLP policy (2-100-100-2 ReLU), at several batch sizes
  (tasks x episodes), one compiled program per size; compile time apart; median of repeated samples after
  warm-up with ``block_until_ready``.
* ``meta_step``: time per MAML-RL meta-iteration (sampling ``tasks x 20`` episodes, one inner policy-gradient
  step, post-adaptation rollouts, TRPO outer step with conjugate gradient and line search) at several
  meta-batch sizes, for jmeta's :class:`jmeta.rl.MAMLRL` (``estimator="reinforce"``, MAML-RL's original
  surrogate) and for ``plain``: the same algorithm written from scratch below in plain JAX (no jmeta, no optax,
  no flax), timed in interleaved rounds in the same process.

Run:
    python benchmarks/rl_throughput.py --out results/rl_throughput.json
    python benchmarks/rl_throughput.py --quick   # small sizes, few repeats (smoke test)
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _common import device_info, median_iqr, time_calls  # noqa: E402

from jmeta.rl import MAMLRL, envs, gaussian_mlp_policy, rollout_tasks  # noqa: E402

HORIZON, EPISODES, HIDDEN, INNER_LR, GAMMA, MAX_KL = 100, 20, (100, 100), 0.1, 0.99, 0.01


# ---------------------------------------------------------------- the plain-JAX reference MAML-TRPO on nav2d
def plain_init(key):
    sizes = [(2, HIDDEN[0]), (HIDDEN[0], HIDDEN[1]), (HIDDEN[1], 2)]
    ks = jax.random.split(key, len(sizes))
    layers = [(jax.random.normal(k, (i, o)) / jnp.sqrt(i), jnp.zeros((o,))) for k, (i, o) in zip(ks, sizes)]
    return {"layers": layers, "log_std": jnp.zeros((2,))}


def plain_mean(p, x):
    for i, (w, b) in enumerate(p["layers"]):
        x = x @ w + b
        if i < len(p["layers"]) - 1:
            x = jax.nn.relu(x)
    return x


def plain_logp(p, obs, act):
    z = (act - plain_mean(p, obs)) * jnp.exp(-p["log_std"])
    return jnp.sum(-0.5 * z * z - p["log_std"] - 0.5 * jnp.log(2 * jnp.pi), -1)


def plain_rollout(p, goal, key):
    """[EPISODES, HORIZON] episodes of one goal: (obs, act, rew, logp); done-masking omitted (the goal
    tolerance of 0.01 is essentially never met; see the ``mask`` of jmeta's rollouts)."""
    def episode(k):
        def body(pos, kt):
            mu = plain_mean(p, pos)
            a = mu + jnp.exp(p["log_std"]) * jax.random.normal(kt, (2,))
            new = pos + jnp.clip(0.1 * a, -0.1, 0.1)
            return new, (pos, a, -jnp.linalg.norm(new - goal))
        _, (o, a, r) = jax.lax.scan(body, jnp.zeros(2), jax.random.split(k, HORIZON))
        return o, a, r
    return jax.vmap(episode)(jax.random.split(key, EPISODES))


def plain_advantages(obs, rew):
    def disc(r):
        return jax.lax.scan(lambda g, x: (x + GAMMA * g, x + GAMMA * g), 0.0, r, reverse=True)[1]
    ret = jax.vmap(disc)(rew)
    o = jnp.clip(obs, -10, 10)
    t = jnp.broadcast_to((jnp.arange(HORIZON) / 100.0)[None, :, None], (*obs.shape[:2], 1))
    f = jnp.concatenate([o, o * o, t, t ** 2, t ** 3, jnp.ones_like(t)], -1).reshape(-1, 8)
    c = jnp.linalg.solve(f.T @ f + 1e-5 * jnp.eye(8), f.T @ ret.reshape(-1))
    adv = ret - (f @ c).reshape(ret.shape)
    return (adv - adv.mean()) / (adv.std() + 1e-8)


def plain_adapt(p, obs, act, adv):
    g = jax.grad(lambda q: jnp.mean(plain_logp(q, obs, act) * adv))(p)
    return jax.tree.map(lambda a, b: a + INNER_LR * b, p, g)


def plain_step(p, key, n):
    kg, kr = jax.random.split(key)
    goals = jax.random.uniform(kg, (n, 2), minval=-0.5, maxval=0.5)
    k1, k2 = jax.random.split(kr)

    def sample(goal, ka, kb):
        o, a, r = plain_rollout(p, goal, ka)
        adv = plain_advantages(o, r)
        q = plain_adapt(p, o, a, adv)
        o2, a2, r2 = plain_rollout(q, goal, kb)
        return (o, a, adv), (o2, a2, plain_advantages(o2, r2), plain_logp(q, o2, a2), q), r.sum(-1).mean(), \
            r2.sum(-1).mean()

    pre, post, ret0, ret1 = jax.vmap(sample)(goals, jax.random.split(k1, n), jax.random.split(k2, n))
    pre, post = jax.lax.stop_gradient((pre, post))
    flat0, unravel = ravel_pytree(p)

    def terms(f):
        q0 = unravel(f)

        def task(pr, po):
            q = plain_adapt(q0, *pr)
            o2, a2, adv2, lp_old, q_old = po
            surr = jnp.mean(jnp.exp(plain_logp(q, o2, a2) - lp_old) * adv2)
            m0, m1 = plain_mean(q_old, o2), plain_mean(q, o2)
            s0, s1 = q_old["log_std"], q["log_std"]
            kl = jnp.sum(s1 - s0 + (jnp.exp(2 * s0) + (m0 - m1) ** 2) / (2 * jnp.exp(2 * s1)) - 0.5, -1)
            return surr, jnp.mean(kl)
        s, k = jax.vmap(task)(pre, post)
        return s.mean(), k.mean()

    s0, g = jax.value_and_grad(lambda f: terms(f)[0])(flat0)
    kg_ = jax.grad(lambda f: terms(f)[1])

    def fvp(v):
        return jax.jvp(kg_, (flat0,), (v,))[1] + 1e-5 * v

    def cg_body(_, c):
        x, r, d, rr = c
        ad = fvp(d)
        al = rr / jnp.vdot(d, ad)
        x, r = x + al * d, r - al * ad
        rr2 = jnp.vdot(r, r)
        return x, r, r + rr2 / rr * d, rr2

    x = jax.lax.fori_loop(0, 10, cg_body, (jnp.zeros_like(g), g, g, jnp.vdot(g, g)))[0]
    full = jnp.sqrt(2 * MAX_KL / (jnp.vdot(x, fvp(x)) + 1e-8)) * x

    def ls_cond(c):
        return (c[0] < 15) & ~c[1]

    def ls_body(c):
        f = flat0 + 0.8 ** c[0] * full
        s, k = terms(f)
        return c[0] + 1, (s > s0) & (k <= MAX_KL), f

    _, ok, f = jax.lax.while_loop(ls_cond, ls_body, (0, jnp.array(False), flat0))
    return unravel(jnp.where(ok, f, flat0)), (ret0.mean(), ret1.mean())


# ---------------------------------------------------------------- measurements
def bench_rollouts(sizes, repeats):
    env = envs.Nav2D(horizon=HORIZON)
    policy = gaussian_mlp_policy(2, 2, HIDDEN)
    params = policy.init()
    out = []
    for n_tasks, n_eps in sizes:
        tasks = env.sample_tasks(jax.random.key(0), n_tasks)
        f = jax.jit(lambda p, t, k, e=n_eps: rollout_tasks(env, policy, p, t, k, num_episodes=e).rewards)
        t0 = time.perf_counter()
        comp = f.lower(params, tasks, jax.random.key(1)).compile()
        compile_s = time.perf_counter() - t0
        keys = iter(jax.random.split(jax.random.key(2), 10_000))
        tm = time_calls(lambda: comp(params, tasks, next(keys)), warmup=2, repeats=repeats)
        steps = n_tasks * n_eps * HORIZON
        out.append({"tasks": n_tasks, "episodes": n_eps, "horizon": HORIZON, "env_steps": steps,
                    "compile_s": compile_s, **{k: v for k, v in tm.items() if k != "samples_s"},
                    "env_steps_per_s": steps / tm["median_s"]})
        print(f"rollouts {n_tasks}x{n_eps}x{HORIZON}: {steps / tm['median_s']:.3g} env-steps/s "
              f"(compile {compile_s:.1f} s)", flush=True)
    return out


def bench_meta_step(task_counts, rounds):
    env = envs.Nav2D(horizon=HORIZON)
    out = []
    for n in task_counts:
        algo = MAMLRL(env, gaussian_mlp_policy(2, 2, HIDDEN), num_tasks=n, num_episodes=EPISODES,
                      estimator="reinforce", inner_lr=INNER_LR, gamma=GAMMA, max_kl=MAX_KL)
        state = algo.init()
        p0 = plain_init(jax.random.key(0))
        row = {"tasks": n, "episodes": EPISODES, "horizon": HORIZON,
               "env_steps_per_iteration": 2 * n * EPISODES * HORIZON}
        fns = {}
        plain = lambda p, k, n=n: plain_step(p, k, n)  # noqa: E731 (a new function per size: no jit cache hit)
        for name, fn, arg in (("jmeta", algo.meta_step, state), ("plain", plain, p0)):
            t0 = time.perf_counter()
            comp = jax.jit(fn).lower(arg, jax.random.key(0)).compile()
            row[f"{name}_compile_s"] = time.perf_counter() - t0
            jax.block_until_ready(comp(arg, jax.random.key(1)))  # warm-up
            fns[name] = (comp, arg)
        samples = {"jmeta": [], "plain": []}
        for r in range(rounds):  # interleaved rounds
            for name, (comp, arg) in fns.items():
                t0 = time.perf_counter()
                jax.block_until_ready(comp(arg, jax.random.key(100 + r)))
                samples[name].append(time.perf_counter() - t0)
        for name, s in samples.items():
            med, q1, q3 = median_iqr(s)
            row[f"{name}_median_s"], row[f"{name}_iqr_s"] = med, q3 - q1
        row["jmeta_over_plain"] = row["jmeta_median_s"] / row["plain_median_s"]
        out.append(row)
        print(f"meta-step {n} tasks: jmeta {row['jmeta_median_s']:.3f} s, plain {row['plain_median_s']:.3f} s "
              f"(compile {row['jmeta_compile_s']:.1f} / {row['plain_compile_s']:.1f} s)", flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/rl_throughput.json")
    ap.add_argument("--quick", action="store_true", help="small sizes and few repeats (smoke test)")
    ap.add_argument("--rollout-sizes", default=None,
                    help="comma-separated TASKSxEPISODES (default 20x20,40x20,200x50,1000x100)")
    ap.add_argument("--meta-tasks", default=None, help="comma-separated meta-batch sizes (default 10,20,40)")
    ap.add_argument("--rounds", type=int, default=7, help="timed meta-steps per implementation")
    args = ap.parse_args(argv)
    if args.rollout_sizes:
        sizes = [tuple(int(v) for v in s.split("x")) for s in args.rollout_sizes.split(",")]
    else:
        sizes = [(4, 5), (20, 20)] if args.quick else [(20, 20), (40, 20), (200, 50), (1000, 100)]
    if args.meta_tasks:
        tasks = [int(v) for v in args.meta_tasks.split(",")]
    else:
        tasks = [2] if args.quick else [10, 20, 40]
    rounds = 2 if args.quick else args.rounds
    out = {"benchmark": "rl_throughput", "device": device_info(), "protocol": {
        "env": "Nav2D (MAML-RL 2D navigation)", "horizon": HORIZON, "policy_hidden": HIDDEN,
        "episodes_per_task": EPISODES, "inner_lr": INNER_LR, "outer": "TRPO max_kl=0.01, 10 CG iters, 15 backtracks",
        "estimator": "reinforce (MAML-RL's original inner surrogate)"},
        "rollouts": bench_rollouts(sizes, 3 if args.quick else 7),
        "meta_step": bench_meta_step(tasks, rounds)}
    p = pathlib.Path(args.out)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(p)
    print(f"wrote {p}")


if __name__ == "__main__":
    main()
