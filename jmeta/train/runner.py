"""A whole run: meta-train, checkpoint, evaluate, plot — into one run folder.

The run folder (the contract other tools build on)::

    RUN_DIR/
      config.json            resolved config (``jmeta train --config RUN_DIR`` re-runs it)
      metrics.jsonl          one record per logging step
      eval.json              final evaluation, mean and 95% CI per shot count and step
      learning_curves.png    training metrics
      adaptation_curves.png  query loss after 0..N steps, with CIs
      predictions.png        (sinusoid) adapted fits on held-out tasks
      checkpoints/<step>/    orbax checkpoints (the last few)

Determinism: the meta-step's key is ``fold_in(key(seed), step)``, so the data
stream and every random draw are functions of the seed and the step; a run
resumed from a checkpoint (``resume=True``) continues bit-identically.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.config import Config
from jmeta.train.logging import MetricsLog, Progress, atomic_write_json

PyTree = Any


class NonFiniteError(RuntimeError):
    """The loss or meta-gradient became NaN or Inf (``train.on_nan='stop'``)."""


OOM_HINT = ("the device ran out of memory. Options that reduce memory: a smaller meta-batch "
            "(--set train.meta_batch_size=N), chunked task batches (--set train.task_parallel=CHUNK, e.g. 8), "
            "rematerialised inner steps (--set algorithm.remat=full), fewer inner steps, or first-order "
            "gradients (--set algorithm.first_order=true).")


def _guarded_steps(step_fn, on_nan: str):
    """``n`` meta-steps in one compiled call, guarded against non-finite values.

    Returns ``run(state, bad, skipped, key, data, n) -> (state, bad, skipped,
    metrics)`` (``n`` static; ``metrics`` averaged over the ``n`` steps). Carries
    ``bad``: the first step whose objective or gradient norm was not finite
    (-1 while none). ``"stop"``: from that step on, updates are not applied
    (the host stops at the end of the call, naming that step). ``"skip"``: that
    update is dropped, the step counter moves on, and ``skipped`` counts them.
    Running many steps per call keeps Python dispatch off the hot path.
    """

    def one(carry, _):
        state, bad, skipped, key, data = carry
        new, metrics = step_fn(state, key, data)
        ok = jnp.isfinite(metrics["objective"]) & jnp.isfinite(metrics["grad_norm"])
        if on_nan == "stop":
            take = ok & (bad < 0)
            bad = jnp.where((bad < 0) & ~ok, state.step, bad)
            new = jax.tree.map(lambda a, b: jnp.where(take, a, b), new, state)
        else:
            kept = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, state)
            new = kept._replace(step=state.step + 1)
            skipped = skipped + (~ok).astype(jnp.int32)
        return (new, bad, skipped, key, data), metrics

    def run(state, bad, skipped, key, data, n):
        (state, bad, skipped, _, _), metrics = jax.lax.scan(one, (state, bad, skipped, key, data), None, length=n)
        return state, bad, skipped, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)

    donate = () if jax.default_backend() == "cpu" else (0,)
    return jax.jit(run, static_argnums=(5,), donate_argnums=donate)


def train(cfg: Config, out_dir, *, resume: bool = False, progress: bool = True, data_dir=None,
          sinks=(), evaluate_at_end: bool = True, stop_after: int | None = None) -> dict:
    """Runs (or resumes) the experiment ``cfg`` into ``out_dir``.

    Args:
      cfg: the experiment config.
      out_dir: the run folder.
      resume: continue from the latest checkpoint in ``out_dir`` (the config
        is read from ``out_dir/config.json`` by the caller).
      progress: show a progress bar on stderr.
      data_dir: root of the datasets (image families).
      sinks: extra metric sinks (``write(step, record)``, ``close()``).
      evaluate_at_end: run the final evaluation and write ``eval.json``.
      stop_after: stop (with a checkpoint) after this many meta-steps of this
        call, without the final evaluation (to test resuming).

    Returns:
      A summary dict (``steps``, ``wall_time``, ``eval``).
    """
    from jmeta.config import validate
    from jmeta.experiment import build
    from jmeta.train.checkpoint import Checkpointer
    from jmeta.train.step import init_train_state, make_meta_step

    validate(cfg)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", cfg.to_dict())
    exp = build(cfg, data_dir=data_dir)
    t = cfg.train
    key = jax.random.key(t.seed)
    k_train, k_eval, k_init = jax.random.split(key, 3)
    state = init_train_state(exp.algorithm, exp.model.params, exp.model.state, exp.meta_optimizer, key=k_init)
    ckpt = Checkpointer(out / "checkpoints", keep=t.keep_checkpoints)
    start = 0
    if resume:
        latest = ckpt.latest_step()
        if latest is not None:
            state = ckpt.restore(latest, state)
            start = int(state.step)
        MetricsLog.truncate_after(out / "metrics.jsonl", start)
    elif (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()
    log = MetricsLog(out / "metrics.jsonl", sinks)
    task_parallel = t.task_parallel if t.task_parallel != "auto" else "vmap"
    step_fn = make_meta_step(exp.algorithm, exp.train_sample, exp.meta_optimizer,
                             meta_batch_size=t.meta_batch_size, task_parallel=task_parallel, jit=False)
    guarded = _guarded_steps(step_fn, t.on_nan)
    bad = jnp.asarray(-1, jnp.int32)
    skipped = jnp.asarray(0, jnp.int32)
    total = t.steps if stop_after is None else min(t.steps, start + stop_after)
    bar = Progress(t.steps, start=start, desc=cfg.name, enabled=progress)
    t0 = time.perf_counter()
    last_ckpt = start
    s = start
    metrics = None
    try:
        while s < total:
            # Run up to the next logging / checkpoint / final step in one call.
            nxt = min(total, (s // t.log_every + 1) * t.log_every)
            if t.checkpoint_every:
                nxt = min(nxt, (s // t.checkpoint_every + 1) * t.checkpoint_every)
            state, bad, skipped, metrics = guarded(state, bad, skipped, k_train, exp.train_data, nxt - s)
            s = nxt
            if s % t.log_every == 0 or s == total:
                host = jax.device_get(metrics)
                b = int(bad)
                if b >= 0:
                    last = ckpt.latest_step()
                    raise NonFiniteError(
                        f"non-finite loss or meta-gradient at meta-step {b}; the run stopped without applying "
                        f"it. Last good checkpoint: "
                        f"{'step ' + str(last) + ' in ' + str(ckpt.directory) if last is not None else 'none'}. "
                        f"Resume with `jmeta train --resume {out}` after lowering train.meta_lr or "
                        f"algorithm.inner_lr (edit {out / 'config.json'}), or use --set train.on_nan=skip "
                        f"to drop such updates.")
                rec = {k: float(v) for k, v in host.items()}
                if t.on_nan == "skip":
                    rec["skipped_updates"] = int(skipped)
                rec["time"] = round(time.perf_counter() - t0, 3)
                log.write(s, rec)
                bar.update(s, postfix=f"loss {rec.get('loss', float('nan')):.4f}")
            if t.checkpoint_every and s % t.checkpoint_every == 0 and s < total:
                ckpt.save(s, state)
                last_ckpt = s
        if s != last_ckpt or s == 0:
            ckpt.save(s, state)
    except Exception as e:
        if _is_oom(e):
            raise MemoryError(OOM_HINT + f" (original error: {str(e).splitlines()[0][:300]})") from e
        raise
    finally:
        bar.close()
        log.close()
        ckpt.close()
    wall = time.perf_counter() - t0
    summary: dict = {"steps": s, "wall_time_s": round(wall, 2), "steps_run": s - start}
    if stop_after is not None and s < t.steps:
        return summary
    if evaluate_at_end:
        summary["eval"] = evaluate_run(cfg, exp, state, k_eval, out)
    try:
        from jmeta.plots import plot_run

        plot_run(out)
        if exp.task_kind == "regression" and cfg.task.family == "sinusoid":
            _sinusoid_predictions(cfg, exp, state, k_eval, out)
    except ImportError as e:  # matplotlib is optional
        print(f"jmeta: plots skipped ({e})")
    return summary


def _is_oom(e: Exception) -> bool:
    msg = str(e)
    return "RESOURCE_EXHAUSTED" in msg or "Out of memory" in msg or "out of memory" in msg


def evaluate_run(cfg: Config, exp, state, key, out=None) -> dict:
    """Final evaluation: each shot count of ``cfg.eval`` over ``cfg.eval.num_tasks`` held-out tasks."""
    from jmeta.train.evaluate import evaluate

    results = {}
    for shots, sample in exp.eval_samples.items():
        t0 = time.perf_counter()
        r = evaluate(exp.algorithm, state.meta_params, state.model_state, sample,
                     jax.random.fold_in(key, shots), num_tasks=cfg.eval.num_tasks, num_steps=cfg.eval.steps,
                     batch_size=cfg.eval.batch_size, data=exp.eval_data)
        r["wall_time_s"] = round(time.perf_counter() - t0, 2)
        results[f"K={shots}"] = r
    summary = {}
    for name, r in results.items():
        for metric in ("loss", "accuracy"):
            if metric not in r:
                continue
            for k in cfg.eval.report_steps:
                if k < len(r[metric]["mean"]):
                    summary[f"{name} {metric} after {k} step(s)"] = {
                        "mean": r[metric]["mean"][k], "ci95": r[metric]["ci95"][k]}
    ev = {"name": cfg.name, "step": int(state.step), "num_tasks": cfg.eval.num_tasks,
          "device": jax.devices()[0].device_kind, "platform": jax.default_backend(),
          "summary": summary, "results": results}
    if out is not None:
        atomic_write_json(pathlib.Path(out) / "eval.json", ev)
    return ev


def _sinusoid_predictions(cfg, exp, state, key, out) -> None:
    from jmeta.plots import sinusoid_fits
    from jmeta.tasks import Sinusoid

    k = cfg.task.k_support
    fam = Sinusoid(k, 1)
    ka, kx = jax.random.split(jax.random.fold_in(key, 10_000))
    amp, phase = fam.sample_params(ka, 3)
    xs = jax.random.uniform(kx, (3, k, 1), minval=-5.0, maxval=5.0)
    grid = jnp.linspace(-5, 5, 200)[:, None]
    steps = cfg.eval.report_steps[0] if cfg.eval.report_steps else 1
    curves = []
    algo = exp.algorithm
    for i in range(3):
        sy = Sinusoid.function(amp[i], phase[i], xs[i])
        adapted = algo.adapt(state.meta_params, state.model_state, xs[i], sy, num_steps=steps)
        post = algo.predict(state.meta_params, adapted, state.model_state, grid)
        pre = algo.predict(state.meta_params, state.meta_params["params"], state.model_state, grid)
        curves.append({"x": np.asarray(grid[:, 0]), "truth": np.asarray(Sinusoid.function(amp[i], phase[i], grid[:, 0])),
                       "pre": np.asarray(pre[:, 0]), "post": np.asarray(post[:, 0]),
                       "support_x": np.asarray(xs[i, :, 0]), "support_y": np.asarray(sy[:, 0]), "steps": steps})
    sinusoid_fits(curves, pathlib.Path(out) / "predictions.png", title=f"{cfg.name}: held-out tasks, K={k}")
