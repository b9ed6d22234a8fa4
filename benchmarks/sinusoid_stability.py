"""Why some sinusoid tasks blow up under ten plain gradient steps from a MAML initialisation.

Takes a trained sinusoid run folder (``jmeta train ...``), samples held-out tasks, runs
``--steps`` steps of plain gradient descent with the run's inner learning rate ``alpha`` on
each task's ``--shots`` support points (as the evaluation does), and measures at every
iterate the largest eigenvalue ``lambda_max`` of the Hessian of the support loss (power
iteration on Hessian-vector products). Gradient descent on a quadratic is stable iff
``alpha * lambda_max < 2``; the output says how well that edge separates the tasks whose
loss explodes from the others, and how ``lambda_max`` depends on the task's amplitude.

    python benchmarks/sinusoid_stability.py runs/sin/k5_s0 --out runs/bench/sinusoid_stability.json

Writes JSON (per-task records and a summary); CPU-friendly (a minute for 2,000 tasks).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from jmeta.run import config as C  # noqa: E402
from jmeta.run.experiment import load_run  # noqa: E402
from jmeta.tasks import Sinusoid  # noqa: E402
from jmeta.train.evaluation import eval_batch_keys, task_statistics  # noqa: E402
from jmeta.run.runner import run_keys  # noqa: E402


def top_eigenvalue(loss_fn, params, key, iters: int):
    """Largest-magnitude Hessian eigenvalue of ``loss_fn`` at ``params`` (power iteration on HVPs)."""
    flat, unravel = ravel_pytree(params)

    def hvp(v):
        g = lambda p: ravel_pytree(jax.grad(loss_fn)(unravel(p)))[0]  # noqa: E731
        return jax.jvp(g, (flat,), (v,))[1]

    v = jax.random.normal(key, flat.shape, flat.dtype)
    v = v / jnp.linalg.norm(v)

    def body(v, _):
        w = hvp(v)
        return w / (jnp.linalg.norm(w) + 1e-30), None

    v, _ = jax.lax.scan(body, v, None, length=iters)
    return jnp.vdot(v, hvp(v))  # Rayleigh quotient (signed)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a sinusoid run folder (config.json + checkpoints/)")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--tasks", choices=("eval", "fresh"), default="eval",
                   help="'eval': the run's own held-out evaluation tasks (cfg.eval.num_tasks, same keys as jmeta "
                        "eval); 'fresh': --num-tasks new tasks from --seed with 100 query points")
    p.add_argument("--num-tasks", type=int, default=2000)
    p.add_argument("--power-iters", type=int, default=50)
    p.add_argument("--seed", type=int, default=123)
    args = p.parse_args(argv)
    if args.shots < 1 or args.steps < 1 or args.num_tasks < 1:
        p.error("--shots, --steps and --num-tasks must be >= 1")

    run = pathlib.Path(args.run_dir)
    if not (run / "config.json").is_file():
        p.error(f"{run}: no config.json there (not a jmeta run folder)")
    cfg = C.load(str(run))
    if cfg.task.family != "sinusoid":
        p.error(f"{run}: task.family is {cfg.task.family!r}, this diagnostic needs 'sinusoid'")
    if cfg.algorithm.inner_optimizer != "sgd" or cfg.algorithm.learn_lr is not None:
        p.error("this diagnostic assumes a fixed inner SGD learning rate (algorithm.inner_optimizer='sgd', "
                "algorithm.learn_lr=null)")
    cfg, exp, state = load_run(run, cfg=cfg)
    params0 = state.meta_params["params"]
    model_state = state.model_state
    apply = exp.model.apply
    alpha = float(cfg.algorithm.inner_lr)

    def mse(params, x, y):
        return jnp.mean((apply(params, model_state, x, train=False)[0] - y) ** 2)

    @jax.jit
    def one_task(xs, ys, xq, yq, ke):
        loss_s = lambda p: mse(p, xs, ys)  # noqa: E731

        def step(p, k):
            lam = top_eigenvalue(loss_s, p, k, args.power_iters)
            out = (lam, mse(p, xq, yq))
            g = jax.grad(loss_s)(p)
            return jax.tree.map(lambda a, b: a - alpha * b, p, g), out

        p_end, (lams, lq) = jax.lax.scan(step, params0, jax.random.split(ke, args.steps))
        return lams, jnp.append(lq, mse(p_end, xq, yq))

    if args.tasks == "eval":
        # exactly the tasks `jmeta train` / `jmeta eval` evaluated (jmeta.run.runner.evaluate_run)
        if args.shots not in exp.eval_samples:
            p.error(f"--shots {args.shots}: the run evaluated shots {sorted(exp.eval_samples)} (eval.shots)")
        fam = exp.eval_samples[args.shots].__self__  # the run's Sinusoid evaluation family
        _, k_eval, _ = run_keys(cfg.train.seed)
        n = cfg.eval.num_tasks
        drawn = [fam.sample_with_params(ks, min(cfg.eval.batch_size, n))
                 for ks, _ in eval_batch_keys(jax.random.fold_in(k_eval, args.shots), n, cfg.eval.batch_size)]
        tasks, amp, phase = jax.tree.map(lambda *a: jnp.concatenate(a)[:n], *drawn)
    else:
        n = args.num_tasks
        tasks, amp, phase = Sinusoid(args.shots, 100).sample_with_params(jax.random.key(args.seed), n)
    eig_keys = jax.random.split(jax.random.key(7), n)
    t0 = time.perf_counter()
    lams, lq = jax.block_until_ready(jax.lax.map(
        lambda a: one_task(*a), (tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y, eig_keys)))
    wall = time.perf_counter() - t0
    xmax = np.max(np.abs(np.asarray(tasks.support_x)), axis=(1, 2))
    lams, lq, amp = map(np.asarray, (lams, lq, amp))

    final, first = lq[:, -1], lq[:, 0]
    final_stats = task_statistics(final)  # as eval.json: the median ranks a NaN/inf task worst
    exploded = ~np.isfinite(final) | (final > 10 * np.maximum(first, 1e-3))
    edge = alpha * np.nanmax(np.abs(lams), axis=1)  # max over the trajectory of alpha * |lambda_max|
    edge0 = alpha * np.abs(lams[:, 0])
    over = edge > 2
    summary = {
        "num_tasks": int(n),
        "alpha": alpha,
        "exploded": int(exploded.sum()),
        "exploded_fraction": float(exploded.mean()),
        "alpha_lambda_at_init": {"median": float(np.median(edge0)), "p99": float(np.quantile(edge0, 0.99)),
                                 "max": float(edge0.max())},
        "tasks_over_edge_anywhere": int(over.sum()),
        "exploded_and_over_edge": int((exploded & over).sum()),
        "exploded_but_never_over_edge": int((exploded & ~over).sum()),
        "over_edge_but_not_exploded": int((over & ~exploded).sum()),
        "alpha_lambda_by_step_median_stable": np.median(alpha * lams[~exploded], axis=0).tolist(),
        "alpha_lambda_by_step_median_exploded": (np.median(alpha * lams[exploded], axis=0).tolist()
                                                 if exploded.any() else None),
        "alpha_lambda_after_first_step": {"median_stable": float(np.median(alpha * np.abs(lams[~exploded, 1:]))),
                                          "max_stable": float(np.max(alpha * np.abs(lams[~exploded, 1:])))}
        if args.steps > 1 and (~exploded).any() else None,
        "spearman_amplitude_vs_lambda0": float(
            np.corrcoef(np.argsort(np.argsort(amp)), np.argsort(np.argsort(edge0)))[0, 1]),
        "amplitude_of_exploded": sorted(float(a) for a in amp[exploded]),
        "query_mse_after_steps_mean_all": final_stats["mean"][0],
        "query_mse_after_steps_mean_without_exploded": float(np.mean(final[~exploded])) if (~exploded).any() else None,
        "query_mse_after_steps_median": final_stats["median"][0],
        "query_mse_after_steps_nonfinite": final_stats["nonfinite"][0],
    }
    res = {
        "run": str(run), "config_name": cfg.name, "train_seed": cfg.train.seed, "step": int(state.step),
        "shots": args.shots, "steps": args.steps, "task_seed": args.seed, "power_iters": args.power_iters,
        "wall_s": round(wall, 2),
        "machine": {"platform": platform.platform(), "jax": jax.__version__, "backend": jax.default_backend()},
        "command": " ".join([pathlib.Path(sys.argv[0]).name] + (sys.argv[1:] if argv is None else list(argv))),
        "summary": summary,
        "tasks": [{"amplitude": float(a), "phase": float(ph), "max_abs_x": float(xm),
                   "alpha_lambda_max": [float(alpha * v) for v in lam], "query_mse": [float(v) for v in q]}
                  for a, ph, xm, lam, q in zip(amp, np.asarray(phase), xmax, lams, lq)],
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(res, indent=1, allow_nan=True))
    tmp.replace(out)
    print(json.dumps({k: v for k, v in summary.items() if k != "amplitude_of_exploded"}, indent=1))
    print(f"exploded tasks' amplitudes: {summary['amplitude_of_exploded']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
