"""RL^2 on Bernoulli bandits (Duan et al. 2016's n=10 pulls, k=5 arms) against exact and classical baselines.

Trains ``jmeta.rl.RL2`` (GRU policy, PPO-clip) for ``--iterations`` x ``--meta-batch-size`` trials per seed,
evaluates the average return per pull over ``--eval-tasks`` held-out tasks, and prints JSON next to:

* the uniform random policy (n/2),
* Thompson sampling with Beta(1, 1) priors (simulated on 200,000 tasks, NumPy),
* the Bayes-optimal policy for the U[0, 1] prior, computed exactly by dynamic programming over the Beta
  posteriors (the upper bound of any policy on this task distribution; the Gittins index policy of the
  paper approximates it),
* the oracle that knows ``p`` (n E[max_i p_i] = n k / (k + 1)).

Run:
    python benchmarks/rl2_bandit.py --seeds 0,1,2 --iterations 300 --out results/rl2_bandit.json
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import platform
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def bayes_optimal_return(k: int, n: int) -> float:
    """Exact Bayes-optimal expected return of ``n`` pulls, ``k`` arms, independent U[0, 1] (Beta(1, 1)) arms."""

    @functools.lru_cache(maxsize=None)
    def value(state):  # sorted tuple of (successes, failures) per arm (arms are exchangeable)
        if sum(s + f for s, f in state) == n:
            return 0.0
        best = 0.0
        for s, f in set(state):
            p = (s + 1) / (s + f + 2)
            arms = list(state)
            j = arms.index((s, f))
            win, lose = arms.copy(), arms.copy()
            win[j], lose[j] = (s + 1, f), (s, f + 1)
            best = max(best, p * (1 + value(tuple(sorted(win)))) + (1 - p) * value(tuple(sorted(lose))))
        return best

    return value(tuple([(0, 0)] * k))


def thompson_return(k: int, n: int, num_tasks: int = 200_000, seed: int = 0) -> tuple[float, float]:
    """Mean and 95% CI half-width of Thompson sampling's return (Beta(1, 1) priors), simulated."""
    rng = np.random.default_rng(seed)
    p = rng.random((num_tasks, k))
    s, f, total, rows = np.zeros((num_tasks, k)), np.zeros((num_tasks, k)), np.zeros(num_tasks), np.arange(num_tasks)
    for _ in range(n):
        a = np.argmax(rng.beta(s + 1, f + 1), axis=1)
        r = rng.random(num_tasks) < p[rows, a]
        s[rows, a] += r
        f[rows, a] += ~r
        total += r
    return float(total.mean()), float(1.96 * total.std(ddof=1) / np.sqrt(num_tasks))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arms", type=int, default=5)
    ap.add_argument("--pulls", type=int, default=10, help="episodes (single pulls) per trial")
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--meta-batch-size", type=int, default=128)
    ap.add_argument("--hidden-size", type=int, default=32)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--eval-tasks", type=int, default=2000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import jax

    from jmeta.rl import RL2, gru_policy, rl2_input_size
    from jmeta.rl.envs import BernoulliBandit

    k, n = args.arms, args.pulls
    env = BernoulliBandit(num_arms=k)
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        policy = gru_policy(rl2_input_size(env), k, hidden_size=args.hidden_size, key=jax.random.key(seed))
        rl2 = RL2(env, policy, num_episodes=n, meta_batch_size=args.meta_batch_size)
        state = rl2.init(jax.random.key(1000 + seed))
        step = rl2.make_step()
        t0 = time.perf_counter()
        state, _ = step(state)
        jax.block_until_ready(state)
        t1 = time.perf_counter()
        for _ in range(args.iterations - 1):
            state, _ = step(state)
        jax.block_until_ready(state)
        t2 = time.perf_counter()
        report = rl2.evaluate(state.params, jax.random.key(99), args.eval_tasks)
        s = report["summary"]
        runs.append({"seed": seed, "compile_and_first_step_s": t1 - t0, "train_s": t2 - t1,
                     "trial_return": s["trial return"], "trial_return_ci95": s["trial return ci95"],
                     "per_episode_mean": report["per_episode"]["mean"],
                     "per_episode_ci95": report["per_episode"]["ci95"]})
        print(json.dumps(runs[-1]), flush=True)
    ts, ts_ci = thompson_return(k, n)
    result = {"setting": {**vars(args), "device": jax.devices()[0].device_kind, "platform": platform.platform()},
              "rl2": runs, "random": n / 2, "thompson": ts, "thompson_ci95": ts_ci,
              "bayes_optimal": bayes_optimal_return(k, n), "oracle": n * k / (k + 1)}
    print(json.dumps({key: v for key, v in result.items() if key != "rl2"}, indent=1))
    if args.out:
        from jmeta.run.logs import atomic_write_json

        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
