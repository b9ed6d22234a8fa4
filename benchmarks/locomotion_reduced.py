"""HalfCheetah direction / velocity MAML-TRPO on MuJoCo MJX at a REDUCED budget that fits a shared CPU.

Settings are those of MAML-RL's ``maml_examples/maml_trpo_cheetah.py`` / ``maml_trpo_cheetahdirec.py``
(github.com/cbfinn/maml_rl; Finn et al. 2017, Sec. 5.3 and App. A.2): Gaussian MLP policy obs-100-100-act
(ReLU), one inner policy-gradient step of ``fast_lr = 0.1`` (MAML-RL's surrogate, ``estimator="reinforce"``),
linear feature baseline, normalised advantages, ``discount = 0.99``, TRPO outer step ``step_size`` (max KL)
``= 0.01`` (10 CG iterations, 15 backtracks of 0.8), horizon ``max_path_length = 200``. The full protocol is
``meta_batch_size = 40`` tasks x ``fast_batch_size = 20`` episodes x horizon 200 (``2 x 40 x 20 x 200 =
320,000`` env steps per meta-iteration, pre- and post-adaptation) for hundreds of meta-iterations (the MAML
paper's locomotion curves run to ~500). This program runs the same algorithm with ``--tasks`` x
``--episodes`` x ``--horizon`` per meta-batch for ``--iterations`` meta-iterations and records the ratio of its
environment steps to the full protocol's (``budget.fraction_of_full``, taken against 500 iterations): every
number it writes is a reduced-budget number, labelled so in the JSON.

Evaluation (``--eval-every``, plus iteration 0 and the last): the same ``--eval-tasks`` held-out tasks
(drawn once with a key apart from training), ``--eval-episodes`` episodes per task and step, mean undiscounted
return per task before adaptation and after one inner step, summarised over the tasks with
:meth:`jmeta.rl.MAMLRL.evaluate_returns` and :func:`jmeta.train.evaluation.task_statistics` (mean, 95% CI =
1.96 standard errors over tasks).

The JSON (written atomically after every evaluation: an interrupted run keeps what it has) holds the
protocol, the budget and its ratio to the full protocol, the machine, the command, host load averages, the
per-iteration wall time and training-batch returns, and the evaluation curve.

Run:
    python benchmarks/locomotion_reduced.py --env cheetah-dir --iterations 1 --time-only   # time one iteration
    nice -n 10 python benchmarks/locomotion_reduced.py --env cheetah-dir --tasks 10 --episodes 10 \\
        --horizon 100 --iterations 40 --eval-every 10 --out results/cpu/cheetah_dir_reduced.json
    python benchmarks/locomotion_reduced.py --quick --out /tmp/x.json                  # toy size, seconds
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _common import device_info, train_and_evaluate, write_json  # noqa: E402

from jmeta.rl import MAMLRL, gaussian_mlp_policy  # noqa: E402
from jmeta.rl.envs import locomotion  # noqa: E402
from jmeta.rl.rollout import episode_returns  # noqa: E402
from jmeta.train.evaluation import task_statistics  # noqa: E402

ENVS = {"cheetah-dir": "HalfCheetahDirection", "cheetah-vel": "HalfCheetahVelocity"}
# MAML-RL maml_trpo_cheetah*.py: fast_lr, one grad step, step_size (max KL), discount, hidden sizes.
INNER_LR, MAX_KL, GAMMA, HIDDEN = 0.1, 0.01, 0.99, (100, 100)
# XLA:CPU's elemental emitters rather than its fusion emitters: a third less compile time (measured on an MJX rollout)
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
                 "xla_cpu_use_fusion_emitters": False}
FULL = {"tasks": 40, "episodes": 20, "horizon": 200, "iterations": 500}


def build(env_name: str, tasks: int, episodes: int, horizon: int, seed: int) -> MAMLRL:
    """MAML-TRPO with MAML-RL's cheetah settings on ``env_name`` at the given meta-batch size."""
    env = getattr(locomotion, ENVS[env_name])(horizon=horizon)
    policy = gaussian_mlp_policy(env.obs_size, env.action_size, HIDDEN, key=jax.random.key(seed))
    return MAMLRL(env, policy, num_tasks=tasks, num_episodes=episodes, estimator="reinforce", inner_lr=INNER_LR,
                  gamma=GAMMA, max_kl=MAX_KL, outer="trpo", baseline="linear")


@functools.lru_cache(maxsize=4)
def programs(env_name: str, tasks: int, episodes: int, horizon: int, seed: int, eval_episodes: int, quick: bool):
    """``(algo, step, eval_fn)``: :func:`build`'s algorithm, its jitted ``meta_step`` and its jitted evaluation
    (return per held-out task before and after one inner step), made once per process for a setting, so a caller
    in the same process (tests/rl/test_locomotion_reduced.py) reuses the compiled programs of :func:`main`.
    ``quick`` compiles with XLA's backend optimisation off: the MJX programs then compile in seconds instead of a
    minute; the real runs use XLA's defaults."""
    algo = build(env_name, tasks, episodes, horizon, seed)
    opts = _FAST_COMPILE if quick else None
    step = jax.jit(algo.meta_step, compiler_options=opts)
    eval_fn = jax.jit(lambda p, t, k: algo.evaluate_returns(p, t, k, num_steps=1, num_episodes=eval_episodes),
                      compiler_options=opts)
    return algo, step, eval_fn


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", choices=sorted(ENVS), default="cheetah-dir")
    ap.add_argument("--tasks", type=int, default=10, help="tasks per meta-batch (full protocol: 40)")
    ap.add_argument("--episodes", type=int, default=10, help="episodes per task and step (full: 20)")
    ap.add_argument("--horizon", type=int, default=100, help="steps per episode (full: 200)")
    ap.add_argument("--iterations", type=int, default=40, help="meta-iterations")
    ap.add_argument("--eval-every", type=int, default=10, help="evaluate every this many meta-iterations")
    ap.add_argument("--eval-tasks", type=int, default=20, help="held-out tasks per evaluation")
    ap.add_argument("--eval-episodes", type=int, default=10, help="episodes per held-out task and step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-only", action="store_true", help="time the compile and --iterations steps; no eval")
    ap.add_argument("--eager-outer", action="store_true",
                    help="jit the sampling (rollouts, inner step) but run the TRPO step op by op (a former attempt at "
                         "the jax 0.10.x CPU deadlock, which benchmarks/lapack_deadlock.py explains; not needed since "
                         "the linear baseline solves one matrix per LAPACK call)")
    ap.add_argument("--quick", action="store_true", help="toy size (2 tasks x 2 episodes x horizon 5, 2 "
                    "iterations, 2 eval tasks): checks the program end to end in seconds")
    ap.add_argument("--out", default=None, help="JSON path (default results/cpu/<env>_reduced.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.tasks, args.episodes, args.horizon, args.iterations = 2, 2, 5, 2
        args.eval_every, args.eval_tasks, args.eval_episodes = 1, 2, 2
    for name in ("tasks", "episodes", "horizon", "iterations", "eval_every", "eval_episodes"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if args.eval_tasks < 2:
        raise SystemExit(f"--eval-tasks must be >= 2 (a CI needs two tasks); got {args.eval_tasks}")
    path = pathlib.Path(args.out or f"results/cpu/{args.env.replace('-', '_')}_reduced.json")

    algo, step, eval_fn = programs(args.env, args.tasks, args.episodes, args.horizon, args.seed, args.eval_episodes,
                                   args.quick)
    t0 = time.perf_counter()
    if args.eager_outer:
        sample = jax.jit(algo.sample, compiler_options=_FAST_COMPILE if args.quick else None)

        def step(state, key):
            """``meta_step`` with the sampling jitted and the TRPO step op by op (``--eager-outer``)."""
            data, old, _ = sample(state.params, key)
            pre, (post_traj, _) = data
            m = {"return_pre": jnp.mean(episode_returns(pre[0][0])),
                 "return_post": jnp.mean(episode_returns(post_traj))}
            with jax.disable_jit():
                params, mt = algo._trpo(state.params, data, old)
            return state._replace(params=params, step=state.step + 1), {**m, **mt}
    state = algo.init()

    if args.time_only:
        for it in range(args.iterations + 1):
            t1 = time.perf_counter()
            state, m = step(state, jax.random.fold_in(jax.random.key(args.seed), it + 1))
            jax.block_until_ready(state)
            print(f"{'compile+step' if it == 0 else 'step'} {time.perf_counter() - t1:7.2f} s  "
                  f"return {float(m['return_pre']):8.2f} -> {float(m['return_post']):8.2f}", flush=True)
        return

    steps_per_it = 2 * args.tasks * args.episodes * args.horizon
    full_steps_per_it = 2 * FULL["tasks"] * FULL["episodes"] * FULL["horizon"]
    tasks_eval = algo.env.sample_tasks(jax.random.key(10_000 + args.seed), args.eval_tasks)
    eval_key = jax.random.key(20_000 + args.seed)
    out = {"benchmark": "locomotion_reduced", "env": args.env,
           "label": "quick (toy size, not a result)" if args.quick else "reduced (CPU budget; not the full protocol)",
           "command": "python " + " ".join([pathlib.Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
           "device": device_info(), "cpu_count": os.cpu_count(), "load_average_start": os.getloadavg(),
           "protocol": {"env": f"{ENVS[args.env]} (MJX, gym half_cheetah.xml, frame_skip 5)",
                        "policy": f"Gaussian MLP {algo.env.obs_size}-100-100-{algo.env.action_size} ReLU",
                        "source": "MAML-RL maml_trpo_cheetah*.py: fast_lr 0.1, 1 grad step, step_size 0.01, "
                                  "discount 0.99, LinearFeatureBaseline",
                        "tasks": args.tasks, "episodes": args.episodes, "horizon": args.horizon,
                        "inner_lr": INNER_LR, "inner_steps": 1, "gamma": GAMMA,
                        "estimator": "reinforce (MAML-RL's surrogate)", "baseline": "linear feature",
                        "outer": f"TRPO max_kl={MAX_KL}, 10 CG iterations, 15 backtracks, ratio 0.8",
                        "eval_tasks": args.eval_tasks, "eval_episodes": args.eval_episodes,
                        "eval_every": args.eval_every, "seed": args.seed,
                        "outer_step": "eager (op by op)" if args.eager_outer else "jitted with the sampling"},
           "budget": {"iterations": args.iterations, "env_steps_per_iteration": steps_per_it,
                      "env_steps_total": steps_per_it * args.iterations, "full_protocol": FULL,
                      "full_env_steps_per_iteration": full_steps_per_it,
                      "fraction_of_full_per_iteration": steps_per_it / full_steps_per_it,
                      "fraction_of_full": steps_per_it * args.iterations / (full_steps_per_it * FULL["iterations"])},
           "train": [], "eval": []}

    def evaluate(it):
        stats = task_statistics(np.asarray(eval_fn(state.params, tasks_eval, eval_key)), higher_is_better=True)
        row = {"iteration": it, "env_steps": it * steps_per_it,
               **{f"return after {k} step(s)": {m: stats[m][k] for m in ("mean", "ci95")} for k in range(2)},
               "wall_s": time.perf_counter() - t0, "load_average": os.getloadavg()}
        out["eval"].append(row)
        out["load_average_end"] = os.getloadavg()
        write_json(path, out)

        def s(k):
            stat = row[f"return after {k} step(s)"]
            return f"{stat['mean']:.2f} +- {stat['ci95']:.2f}"

        print(f"[{row['wall_s']:7.1f} s] eval it {it:4d}: before {s(0)} | after 1 step {s(1)}", flush=True)

    def train(it):
        nonlocal state
        state, m = step(state, jax.random.fold_in(jax.random.key(args.seed), it))
        jax.block_until_ready(state)
        return {"return_pre": float(m["return_pre"]), "return_post": float(m["return_post"]),
                "accepted": bool(m["accepted"]), "kl": float(m["kl"])}

    train_and_evaluate(args.iterations, args.eval_every, train, evaluate, path, out, t0)


if __name__ == "__main__":
    main()
