"""nav2d MAML-TRPO with the published protocol: jmeta's MAMLRL against the plain-JAX reference, side by side.

Protocol (Finn et al. 2017, Sec. 5.3, and MAML-RL's ``maml_trpo_point.py``): :class:`jmeta.rl.envs.Nav2D`
(goal uniform in [-0.5, 0.5]^2, horizon 100), a Gaussian MLP policy 2-100-100-2 (ReLU), 20 tasks x 20 episodes
per meta-batch, one inner policy-gradient step of 0.1 (MAML-RL's surrogate, ``estimator="reinforce"``, linear
feature baseline, normalised advantages), TRPO outer step (``max_kl=0.01``, 10 CG iterations, 15 backtracks).

Both learners run the same number of meta-iterations, hence the same number of environment steps
(``2 x 20 x 20 x 100 = 80,000`` per iteration): ``jmeta`` is :class:`jmeta.rl.MAMLRL`; ``plain`` is the
from-scratch MAML-TRPO of ``benchmarks/rl_throughput.py`` (plain JAX, no jmeta). Every ``--eval-every``
iterations each is evaluated on the same held-out goals (``--eval-tasks`` goals, 20 episodes per goal and
step): the mean undiscounted return per task after 0 and 1 inner steps, summarised over the tasks (mean,
95% CI = 1.96 standard errors) with :func:`jmeta.train.evaluate.task_statistics`. jmeta is evaluated by
:meth:`MAMLRL.evaluate`, the reference by the same algorithm written in plain JAX below (its own rollouts,
baseline and inner step); the two policies start from their own initialisations (Flax NNX MLP vs normal/sqrt(fan_in)).

The JSON (written atomically after every evaluation, so an interrupted run keeps what it has) holds the
protocol, the machine, the command, the host load averages, per-iteration wall time and training-batch
returns of both, and the evaluation curve.

Run:
    python benchmarks/nav2d_protocol.py --iterations 1 --eval-every 1      # time one iteration
    nice -n 5 python benchmarks/nav2d_protocol.py --iterations 100 --eval-every 10 \\
        --out results/cpu/nav2d_protocol.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _common import device_info  # noqa: E402
from rl_throughput import (EPISODES, GAMMA, HIDDEN, HORIZON, INNER_LR, MAX_KL, plain_adapt,  # noqa: E402
                           plain_advantages, plain_init, plain_rollout, plain_step)

from jmeta.rl import MAMLRL, envs, gaussian_mlp_policy  # noqa: E402
from jmeta.train.evaluate import task_statistics  # noqa: E402

TASKS = 20


def plain_evaluate(p, goals, key):
    """``[goals, 2]``: mean return per goal before and after one inner step of the plain-JAX reference."""

    def one(goal, k):
        k1, k2 = jax.random.split(k)
        o, a, r = plain_rollout(p, goal, k1)
        q = plain_adapt(p, o, a, plain_advantages(o, r))
        r2 = plain_rollout(q, goal, k2)[2]
        return jnp.stack([r.sum(-1).mean(), r2.sum(-1).mean()])

    return jax.vmap(one)(goals, jax.random.split(key, goals.shape[0]))


def _summary(rets) -> dict:
    stats = task_statistics(np.asarray(rets), higher_is_better=True)
    return {f"return after {k} step(s)": {m: stats[m][k] for m in ("mean", "ci95")} for k in range(2)}


def _write(path: pathlib.Path, out: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=100, help="meta-iterations of each learner")
    ap.add_argument("--eval-every", type=int, default=10, help="evaluate every this many meta-iterations")
    ap.add_argument("--eval-tasks", type=int, default=40, help="held-out goals per evaluation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", default="", help="e.g. 'reduced' when fewer iterations than the paper's were run")
    ap.add_argument("--out", default="results/cpu/nav2d_protocol.json")
    args = ap.parse_args(argv)
    if args.iterations < 1 or args.eval_every < 1 or args.eval_tasks < 2:
        raise SystemExit("--iterations and --eval-every must be >= 1 and --eval-tasks >= 2")

    env = envs.Nav2D(horizon=HORIZON)
    algo = MAMLRL(env, gaussian_mlp_policy(2, 2, HIDDEN, key=jax.random.key(args.seed)), num_tasks=TASKS,
                  num_episodes=EPISODES, estimator="reinforce", inner_lr=INNER_LR, gamma=GAMMA, max_kl=MAX_KL)
    goals = env.sample_tasks(jax.random.key(10_000 + args.seed), args.eval_tasks)
    eval_key = jax.random.key(20_000 + args.seed)

    t0 = time.perf_counter()
    j_step = jax.jit(algo.meta_step)
    p_step = jax.jit(lambda p, k: plain_step(p, k, TASKS))
    p_eval = jax.jit(plain_evaluate)
    state, p = algo.init(), plain_init(jax.random.key(args.seed))
    out = {"benchmark": "nav2d_protocol", "label": args.label or "full-protocol batch, iterations as given",
           "command": "python " + " ".join([pathlib.Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
           "device": device_info(), "cpu_count": os.cpu_count(), "load_average_start": os.getloadavg(),
           "protocol": {"env": "Nav2D (goal U[-0.5, 0.5]^2, horizon 100)", "policy": "Gaussian MLP 2-100-100-2 ReLU",
                        "tasks": TASKS, "episodes": EPISODES, "inner_lr": INNER_LR, "inner_steps": 1,
                        "estimator": "reinforce (MAML-RL's surrogate)", "baseline": "linear feature",
                        "outer": f"TRPO max_kl={MAX_KL}, 10 CG iterations, 15 backtracks, ratio 0.8",
                        "env_steps_per_iteration": 2 * TASKS * EPISODES * HORIZON, "iterations": args.iterations,
                        "eval_every": args.eval_every, "eval_tasks": args.eval_tasks, "eval_episodes": EPISODES,
                        "seed": args.seed},
           "train": {"jmeta": [], "plain": []}, "eval": []}
    path = pathlib.Path(args.out)

    def evaluate(it):
        rep = algo.evaluate(state.params, eval_key, tasks=goals, num_steps=1, num_episodes=EPISODES)["summary"]
        ref = _summary(p_eval(p, goals["goal"], eval_key))
        row = {"iteration": it, "env_steps": it * out["protocol"]["env_steps_per_iteration"],
               "jmeta": {k: {m: v[m] for m in ("mean", "ci95")} for k, v in rep.items()}, "plain": ref,
               "wall_s": time.perf_counter() - t0, "load_average": os.getloadavg()}
        out["eval"].append(row)
        out["load_average_end"] = os.getloadavg()
        _write(path, out)
        f = lambda d, k: f"{d[f'return after {k} step(s)']['mean']:.2f}"  # noqa: E731
        print(f"[{row['wall_s']:7.1f} s] it {it:4d}: jmeta {f(row['jmeta'], 0)} -> {f(row['jmeta'], 1)} | "
              f"plain {f(ref, 0)} -> {f(ref, 1)}", flush=True)

    evaluate(0)
    for it in range(1, args.iterations + 1):
        key = jax.random.fold_in(jax.random.key(args.seed), it)
        t1 = time.perf_counter()
        state, m = j_step(state, key)
        jax.block_until_ready(state)
        t2 = time.perf_counter()
        p, (r0, r1) = p_step(p, key)
        jax.block_until_ready(p)
        t3 = time.perf_counter()
        out["train"]["jmeta"].append({"iteration": it, "wall_s": t2 - t1, "return_pre": float(m["return_pre"]),
                                      "return_post": float(m["return_post"]), "accepted": bool(m["accepted"])})
        out["train"]["plain"].append({"iteration": it, "wall_s": t3 - t2, "return_pre": float(r0),
                                      "return_post": float(r1)})
        print(f"  it {it:4d}: jmeta {t2 - t1:6.2f} s {float(m['return_pre']):8.2f} -> {float(m['return_post']):8.2f}"
              f" | plain {t3 - t2:6.2f} s {float(r0):8.2f} -> {float(r1):8.2f}", flush=True)
        if it % args.eval_every == 0 or it == args.iterations:
            evaluate(it)
    out["done"] = True
    _write(path, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
