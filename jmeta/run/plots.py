"""PNG plots of a run: learning curves, adaptation curves with CIs, sinusoid fits.

Needs matplotlib (``pip install 'jmeta[plots]'``); imported lazily, Agg backend.
"""

from __future__ import annotations

import contextlib
import json
import pathlib

import numpy as np

from jmeta._io import naming


def pyplot():
    """``matplotlib.pyplot`` with the Agg backend, or an ``ImportError`` saying how to install it."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install 'jmeta[plots]'") from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def learning_curves(metrics: list[dict], path, *, title: str = "") -> pathlib.Path:
    """Training metrics against meta-step (one panel per metric)."""
    plt = pyplot()
    keys = [k for k in ("loss", "accuracy", "support_loss", "objective", "grad_norm") if any(k in r for r in metrics)]
    if not keys:
        raise ValueError("no metrics to plot")
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, k in zip(axes[0], keys):
        rs = [r for r in metrics if isinstance(r.get(k), (int, float))]
        ax.plot([r["step"] for r in rs], [r[k] for r in rs], lw=1)
        ax.set_xlabel("meta-step")
        ax.set_title(k)
        if k in ("loss", "support_loss", "objective", "grad_norm") and all(r[k] > 0 for r in rs):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, plt, path)


def adaptation_curves(eval_result: dict, path, *, metric: str = "loss", title: str = "",
                      xlabel: str = "adaptation steps", ylabel: str | None = None, x0: int = 0) -> pathlib.Path:
    """Query metric (mean and 95% CI) after 0..N adaptation steps, one line per shot count (``x0``: the first
    x value, 1 for RL^2's episodes)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, res in eval_result.items():
        if not isinstance(res, dict) or metric not in res:
            continue
        # null (a mean over diverged tasks, or a CI of one task) in eval.json is NaN here: a gap in the curve
        m = np.asarray(res[metric]["mean"], dtype=float)
        c = np.asarray(res[metric]["ci95"], dtype=float)
        xs = np.arange(len(m)) + x0
        ax.plot(xs, m, marker="o", ms=3, label=name)
        ax.fill_between(xs, m - c, m + c, alpha=0.25)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"query {metric}" if ylabel is None else ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, plt, path)


#: Pairs of meta-RL training metrics drawn against each other: (before, after, their labels).
RL_RETURN_PAIRS = (("return_pre", "return_post", "before adaptation", "after adaptation"),
                   ("return_first_episode", "return_last_episode", "first episode of a trial",
                    "last episode of a trial"))


def rl_returns(metrics: list[dict], path, *, title: str = "") -> pathlib.Path:
    """Mean training return before and after adaptation against meta-step (MAML-RL/ProMP's ``return_pre`` and
    ``return_post``; RL^2's first and last episode of a trial), from the records of ``metrics.jsonl``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    drawn = False
    for pre, post, lpre, lpost in RL_RETURN_PAIRS:
        rs = [r for r in metrics if isinstance(r.get(pre), (int, float)) and isinstance(r.get(post), (int, float))]
        if not rs:
            continue
        steps = [r["step"] for r in rs]
        ax.plot(steps, [r[pre] for r in rs], "--", color="tab:gray", marker="o", ms=3, lw=1, label=lpre)
        ax.plot(steps, [r[post] for r in rs], "-", color="tab:red", marker="o", ms=3, lw=1.5, label=lpost)
        drawn = True
    if not drawn:
        plt.close(fig)
        raise ValueError("no meta-RL returns in the metrics (return_pre/return_post or "
                         "return_first_episode/return_last_episode)")
    ax.set_xlabel("meta-step")
    ax.set_ylabel("mean episode return (training tasks)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, plt, path)


def nav2d_paths(paths: list[dict], path, *, title: str = "") -> pathlib.Path:
    """2D navigation: one panel of a few held-out tasks, each its goal (a star), an episode before adaptation
    (dashed) and one after (solid), in the task's colour, from the start at the origin.

    ``paths``: dicts with ``goal`` [2], ``pre`` and ``post`` (positions ``[T, 2]``) and ``steps``.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, p in enumerate(paths):
        c = colors[i % len(colors)]
        pre, post = np.asarray(p["pre"]), np.asarray(p["post"])
        ax.plot(pre[:, 0], pre[:, 1], "--", color=c, lw=0.8, alpha=0.6)
        ax.plot(post[:, 0], post[:, 1], "-", color=c, lw=1.6)
        ax.plot(*np.asarray(p["goal"]), marker="*", color=c, ms=16, mec="k", ls="none", zorder=5)
    ax.plot([0], [0], "ko", ms=4)
    steps = paths[0]["steps"] if paths else 1
    ax.plot([], [], "k--", lw=0.8, label="before adaptation")
    ax.plot([], [], "k-", lw=1.6, label=f"after {steps} step(s)")
    ax.plot([], [], "k*", ms=10, ls="none", label="goal")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, plt, path)


def sinusoid_fits(curves: list[dict], path, *, title: str = "") -> pathlib.Path:
    """Adapted predictions next to the ground truth for a few held-out sinusoid tasks.

    ``curves``: dicts with ``x``, ``truth``, ``pre``, ``post`` (lists), ``support_x``,
    ``support_y`` and ``steps``.
    """
    plt = pyplot()
    n = len(curves)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3), squeeze=False)
    for ax, c in zip(axes[0], curves):
        ax.plot(c["x"], c["truth"], "k-", lw=1.5, label="ground truth")
        ax.plot(c["x"], c["pre"], "--", color="tab:gray", lw=1, label="before adaptation")
        ax.plot(c["x"], c["post"], "-", color="tab:red", lw=1.5, label=f"after {c['steps']} step(s)")
        ax.plot(c["support_x"], c["support_y"], "^", color="tab:purple", ms=5, label=f"support (K={len(c['support_x'])})")
        ax.set_xlim(-5, 5)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, plt, path)


def save_figure(fig, plt, path) -> pathlib.Path:
    """Writes ``fig`` to ``path`` as a PNG atomically (a temporary file, then a rename) and closes it."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    try:
        with naming(path):  # a full disk or read-only folder names the PNG
            fig.savefig(tmp, dpi=110)
            tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    finally:
        plt.close(fig)
    return path


def plot_run(run_dir) -> list[pathlib.Path]:
    """(Re)draws the PNGs of a run folder from ``metrics.jsonl`` and ``eval.json``.

    A run of 0 meta-steps (an evaluation of the initialisation) has no
    learning curves: only the evaluation's plots are drawn.
    """
    from jmeta.run.logs import MetricsLog

    run_dir = pathlib.Path(run_dir)
    out = []
    m = run_dir / "metrics.jsonl"
    if not m.exists():
        raise FileNotFoundError(f"{m} not found: is {run_dir} a jmeta run folder?")
    name = run_dir.name
    cfg = run_dir / "config.json"
    if cfg.exists():
        name = json.loads(cfg.read_text()).get("name", name)
    records = MetricsLog.read(m)
    if records:
        out.append(learning_curves(records, run_dir / "learning_curves.png", title=name))
        if any(pre in r for pre, *_ in RL_RETURN_PAIRS for r in records):  # meta-RL
            out.append(rl_returns(records, run_dir / "rl_returns.png", title=name))
    e = run_dir / "eval.json"
    if e.exists():
        ev = json.loads(e.read_text())
        res = ev.get("results", {})
        if "return" in res:  # meta-RL: return after 0..N inner steps (RL^2: per episode of a trial)
            rl2 = "num_steps" not in res
            out.append(adaptation_curves({name: res}, run_dir / "adaptation_curves.png", metric="return",
                                         ylabel="mean episode return (held-out tasks)", title=name,
                                         xlabel="episode of the trial" if rl2 else "inner steps", x0=int(rl2)))
            return out
        out.append(adaptation_curves(res, run_dir / "adaptation_curves.png", title=name))
        if any("accuracy" in r for r in res.values() if isinstance(r, dict)):
            out.append(adaptation_curves(res, run_dir / "accuracy_curves.png", metric="accuracy", title=name))
    return out
