"""MetaWorld ML1 (``reach-v3``) MAML-TRPO through jmeta's host adapter, at a REDUCED budget that fits a CPU.

Runs in its own environment (``metaworld`` pins ``mujoco==3.3.0``, which ``jmeta[mjx]`` cannot share), e.g.::

    python -m venv /work/venv-mw && /work/venv-mw/bin/pip install -e ".[metaworld]"   # as scripts/test_metaworld.sh
    nice -n 10 /work/venv-mw/bin/python benchmarks/metaworld_reduced.py --iterations 20 \\
        --out results/cpu/metaworld_ml1_reach_reduced.json
    /work/venv-mw/bin/python benchmarks/metaworld_reduced.py --quick --out /tmp/mw.json      # toy size, seconds

Algorithm: :class:`jmeta.rl.MAMLRL` with MAML-RL's settings (as ``benchmarks/locomotion_reduced.py``: Gaussian
MLP 39-100-100-4 ReLU, one inner step of 0.1 with MAML-RL's surrogate, linear feature baseline, normalised
advantages, gamma 0.99, TRPO with max KL 0.01), the settings the MetaWorld paper (Yu et al. 2019, App.) lists
for its MAML baseline being the same family (TRPO outer, one inner step). The environment steps run on the host
(:class:`jmeta.rl.envs.metaworld.MetaWorldML1`, all episodes of a batch in lock step, the policy jitted), and
the rest of the meta-iteration is jitted: :class:`jmeta.rl.host.HostMAMLRL` (per-task baseline/advantages and the
inner step, vmapped over tasks), then :meth:`MAMLRL.meta_step_from_samples` (the same TRPO step as
:meth:`MAMLRL.meta_step`) on the pre-/post-adaptation samples: the code ``jmeta train --config
metaworld-ml1-reach-maml-trpo`` runs. So one meta-iteration is the one of ``meta_step`` with the rollouts taken
out.

Protocol (ML1, ``metaworld.ML1("reach-v3", seed)``): meta-training draws ``--tasks`` of the 50 train goals per
meta-batch; evaluation uses ML1's held-out test goals (``--eval-tasks`` of the 50; all 50 for the full
protocol): ``--eval-episodes`` episodes with the meta-parameters (before adaptation; also the adaptation data),
one inner step, ``--eval-episodes`` episodes with the adapted parameters (after). An episode succeeds if
MetaWorld reports ``info["success"]`` at any step (what ``metaworld.evaluation`` counts); the success rate per
task is the fraction of its episodes that succeed, reported as mean +- 95% CI (1.96 standard errors) over the
test tasks, alongside the mean undiscounted return. The goal is hidden (``partially_observable``, ML1's setting).

Budget: ML1's episodes are 500 steps (``max_path_length``); the reduced run uses ``--horizon`` (e.g. 100) and
a few tasks x episodes per meta-batch for ``--iterations`` meta-iterations; the JSON records the budget and labels
every number reduced. The MetaWorld paper trains MAML on ML1 for millions of environment steps.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _common import train_and_evaluate, write_json  # noqa: E402

from jmeta.rl import MAMLRL, gaussian_mlp_policy  # noqa: E402
from jmeta.rl.envs.metaworld import MetaWorldML1  # noqa: E402
from jmeta.rl.host import HostEnvShapes, HostMAMLRL  # noqa: E402
from jmeta.train.evaluation import task_statistics  # noqa: E402

INNER_LR, MAX_KL, GAMMA, HIDDEN = 0.1, 0.01, 0.99, (100, 100)


def _eager(fn):
    """``fn`` run op by op (``jax.disable_jit``): the ``--eager-outer`` option."""

    def run(*args):
        with jax.disable_jit():
            return fn(*args)

    return run


def _stats(result) -> dict:
    """Per-task success rate and mean return before/after adaptation (:meth:`HostMAMLRL.evaluate`), summarised
    over tasks."""
    out = {}
    for name, key in (("success rate", "success"), ("return", "return")):
        s = task_statistics(result[key], higher_is_better=True)
        for k in range(result[key].shape[1]):
            out[f"{name} after {k} step(s)"] = {"mean": s["mean"][k], "ci95": s["ci95"][k]}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env-name", default="reach-v3", help="ML1 task family")
    ap.add_argument("--tasks", type=int, default=10, help="train goals per meta-batch")
    ap.add_argument("--episodes", type=int, default=5, help="episodes per task and step")
    ap.add_argument("--horizon", type=int, default=100, help="steps per episode (ML1: 500)")
    ap.add_argument("--iterations", type=int, default=20, help="meta-iterations")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--eval-tasks", type=int, default=50, help="ML1 test goals evaluated (of 50)")
    ap.add_argument("--eval-episodes", type=int, default=5, help="episodes per test goal before and after")
    ap.add_argument("--seed", type=int, default=0, help="ML1's seed (goal positions) and the policy's")
    ap.add_argument("--eager-outer", action="store_true",
                    help="run the TRPO outer step op by op instead of jitted (a former attempt at the jax 0.10.x CPU "
                         "deadlock, which benchmarks/lapack_deadlock.py explains; not needed since the linear baseline "
                         "solves one matrix per LAPACK call)")
    ap.add_argument("--quick", action="store_true", help="toy size (2 tasks x 2 episodes x horizon 5, 2 iterations)")
    ap.add_argument("--out", default="results/cpu/metaworld_ml1_reach_reduced.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.tasks, args.episodes, args.horizon, args.iterations = 2, 2, 5, 2
        args.eval_every, args.eval_tasks, args.eval_episodes = 1, 2, 2
    for name in ("tasks", "episodes", "horizon", "iterations", "eval_every", "eval_episodes"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if not 2 <= args.eval_tasks <= 50 or args.tasks > 50:
        raise SystemExit(f"--eval-tasks must be in [2, 50] and --tasks <= 50; got {args.eval_tasks}, {args.tasks}")

    import metaworld
    ml1 = MetaWorldML1(args.env_name, seed=args.seed, horizon=args.horizon)
    policy = gaussian_mlp_policy(ml1.obs_size, ml1.action_size, HIDDEN, key=jax.random.key(args.seed))
    algo = MAMLRL(HostEnvShapes(ml1), policy, num_tasks=args.tasks, num_episodes=args.episodes,
                  estimator="reinforce", inner_lr=INNER_LR, gamma=GAMMA, max_kl=MAX_KL, outer="trpo",
                  baseline="linear")
    host = HostMAMLRL(algo, ml1)
    outer = _eager(algo.meta_step_from_samples) if args.eager_outer else jax.jit(algo.meta_step_from_samples)
    state = algo.init()
    rng = np.random.default_rng(args.seed)
    test = ml1.test_tasks[:args.eval_tasks]
    eval_key = jax.random.key(20_000 + args.seed)
    path = pathlib.Path(args.out)
    steps_per_it = 2 * args.tasks * args.episodes * args.horizon
    t0 = time.perf_counter()
    out = {"benchmark": "metaworld_reduced", "env": f"ML1 {args.env_name}",
           "label": "quick (toy size, not a result)" if args.quick else "reduced (CPU budget; not the full protocol)",
           "command": "python " + " ".join([pathlib.Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
           "device": {"platform": jax.devices()[0].platform, "jax": jax.__version__,
                      "python": platform.python_version(), "metaworld": getattr(metaworld, "__version__", None)},
           "cpu_count": os.cpu_count(), "load_average_start": os.getloadavg(),
           "protocol": {"benchmark": f"metaworld.ML1({args.env_name!r}, seed={args.seed}); goal hidden",
                        "policy": f"Gaussian MLP {ml1.obs_size}-100-100-{ml1.action_size} ReLU",
                        "tasks": args.tasks, "episodes": args.episodes, "horizon": args.horizon,
                        "ml1_max_path_length": 500, "inner_lr": INNER_LR, "inner_steps": 1, "gamma": GAMMA,
                        "estimator": "reinforce (MAML-RL's surrogate)", "baseline": "linear feature",
                        "outer": f"TRPO max_kl={MAX_KL}, 10 CG iterations, 15 backtracks, ratio 0.8",
                        "eval": "ML1 test goals: episodes with theta (before; adaptation data), one inner step, "
                                "episodes with the adapted parameters (after); success = info['success'] at any "
                                "step; per-task rate, mean +- 95% CI over tasks",
                        "eval_tasks": args.eval_tasks, "eval_episodes": args.eval_episodes, "seed": args.seed,
                        "outer_step": "eager (op by op)" if args.eager_outer else "jitted"},
           "budget": {"iterations": args.iterations, "env_steps_per_iteration": steps_per_it,
                      "env_steps_total": steps_per_it * args.iterations},
           "train": [], "eval": []}

    def evaluate(it):
        t1 = time.perf_counter()
        result = host.evaluate(state.params, test, eval_key, num_steps=1, episodes=args.eval_episodes)
        row = {"iteration": it, "env_steps": it * steps_per_it, **_stats(result),
               "eval_wall_s": time.perf_counter() - t1, "wall_s": time.perf_counter() - t0,
               "load_average": os.getloadavg()}
        out["eval"].append(row)
        out["load_average_end"] = os.getloadavg()
        write_json(path, out)

        def f(n, k):
            stat = row[f"{n} after {k} step(s)"]
            return f"{stat['mean']:.3f} +- {stat['ci95']:.3f}"

        print(f"[{row['wall_s']:7.1f} s] eval it {it:3d}: success {f('success rate', 0)} -> "
              f"{f('success rate', 1)} | return {f('return', 0)} -> {f('return', 1)}", flush=True)

    def train(it):
        nonlocal state
        idx = rng.choice(50, size=args.tasks, replace=False)
        tasks = [ml1.train_tasks[i] for i in idx]
        batch = host.batch(state.params, tasks, jax.random.fold_in(jax.random.key(args.seed), it))
        state, m = outer(state, batch["samples"])
        jax.block_until_ready(state)
        return {"return_pre": float(m["return_pre"]), "return_post": float(m["return_post"]),
                "success_pre": float(batch["success_pre"]), "success_post": float(batch["success_post"]),
                "accepted": bool(m["accepted"]), "kl": float(m["kl"])}

    train_and_evaluate(args.iterations, args.eval_every, train, evaluate, path, out, t0)


if __name__ == "__main__":
    main()
