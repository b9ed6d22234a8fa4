"""A whole run: meta-train, checkpoint, evaluate, plot — into one run folder.

The run folder (the contract other tools build on)::

    RUN_DIR/
      config.json            resolved config (``jmeta train --config RUN_DIR`` re-runs it)
      metrics.jsonl          one record per logging step: the mean of every meta-step since the previous one
      eval.json              final evaluation, mean and 95% CI per shot count and step (meta-RL: the return
                             after 0..N inner steps, or per episode of an RL^2 trial; jmeta.run.rl)
      learning_curves.png    training metrics
      adaptation_curves.png  query loss after 0..N steps, with CIs
      predictions.png        (sinusoid) adapted fits on held-out tasks
      rl_returns.png         (meta-RL) training return before/after adaptation per meta-step
      nav2d_trajectories.png (nav2d) episodes before/after adaptation for a few held-out goals
      checkpoints/<step>/    orbax checkpoints (the last few; complete ones hold commit_success.txt, and
                             jmeta_checksums.json: every file's sha256, checked before use; see
                             :mod:`jmeta.run.checkpoint`)
      runner_state.json      per checkpoint: the partial logging window and skipped-update count, so that
                             a resumed run logs what an uninterrupted one would (a checksummed copy is in
                             each checkpoint's jmeta_checksums.json; without either, the next record holds
                             ``steps_averaged``, the meta-steps it averages)
      events.out.tfevents.*  the metrics for TensorBoard (``tensorboard --logdir RUN_DIR/..``)
      wandb/, wandb_id.txt   (with ``--wandb``) the Weights & Biases run
      .jmeta.lock            while a process writes the folder: its owner (:mod:`jmeta.run.lock`)

Non-finite values: with ``train.on_nan='stop'`` (default) the first meta-step
whose objective or meta-gradient norm is NaN/Inf is not applied, no later
checkpoint is written, and :class:`NonFiniteError` names that step and the
last good checkpoint (``jmeta train`` prints it as one line and exits 1).
With ``'skip'`` such updates are dropped (the step counter moves on) and
``metrics.jsonl`` counts them in ``skipped_updates``.

Determinism: the meta-step's key is ``fold_in(key(seed), step)``, so the data
stream and every random draw are functions of the seed and the step; a run
resumed from a checkpoint (``resume=True``) continues bit-identically. On a GPU
that needs XLA's deterministic operations (``train.deterministic``, default
true; :mod:`jmeta.train.determinism`): without them two runs of one seed differ.
"""

from __future__ import annotations

import json
import pathlib
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jmeta import validate
from jmeta.run.config import Config
from jmeta.train.keys import run_keys  # noqa: F401  (re-exported: the runner's keys)
from jmeta.train.determinism import deterministic_ops_enabled, nondeterminism_warning
from jmeta.run.logs import MetricsLog, Progress, atomic_write_json
# The host loop, its logging window (the host carry saved beside each checkpoint) and the NaN guard.
from jmeta.train.loop import NonFiniteError  # noqa: F401  (re-exported: raised by train)
from jmeta.train.loop import TrainLoop, Window as _Carry, guarded_steps as _guarded_steps

PyTree = Any


class RunExistsError(FileExistsError):
    """A fresh run was asked for in a folder that already holds one (resume it, or use another folder)."""


def foreign_config(out_dir, cfg: Config) -> str | None:
    """Why ``out_dir/config.json`` is not ``cfg``'s (unreadable, not a jmeta config, another config), or None.

    Compared through :class:`Config`, so a file written before a key existed holds that key's default.
    """
    from jmeta.run.config import ConfigError, from_dict

    path = pathlib.Path(out_dir) / "config.json"
    if not path.exists():
        return None
    try:
        there = json.loads(from_dict(json.loads(path.read_text(encoding="utf-8"))).to_json())
    except (OSError, ValueError, TypeError, AttributeError, ConfigError) as e:
        return f"its config.json is not a jmeta config ({type(e).__name__})"
    if there != json.loads(cfg.to_json()):
        return "its config.json is another run's config"
    return None


def existing_run(out_dir) -> list[str]:
    """What of a run ``out_dir`` already holds (checkpoints, metrics, evaluation); empty if none."""
    out = pathlib.Path(out_dir)
    found = []
    ckpts = out / "checkpoints"
    if ckpts.is_dir() and any(ckpts.iterdir()):
        found.append("checkpoints/")
    found += [name for name in ("metrics.jsonl", "eval.json") if (out / name).exists()]
    return found


OOM_HINT = ("the device ran out of memory. Options that reduce memory: a smaller meta-batch "
            "(--set train.meta_batch_size=N), chunked task batches (--set train.task_parallel=CHUNK, e.g. 8), "
            "rematerialised inner steps (--set algorithm.remat=full), fewer inner steps, or first-order "
            "gradients (--set algorithm.first_order=true).")


RUNNER_STATE = "runner_state.json"
EVAL_JSON = "eval.json"


def _carry_problem(entry) -> str | None:
    """Why ``entry`` (one step of ``runner_state.json``) is not a valid host carry, or None."""
    if not isinstance(entry, dict):
        return f"an entry is a {type(entry).__name__}, not an object"
    if set(entry) != {"window_sums", "window_steps", "skipped_updates"}:
        return f"an entry has the keys {sorted(entry)}"
    sums = entry["window_sums"]
    if not isinstance(sums, dict) or not all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
            or v in ("inf", "-inf", "nan") for v in sums.values()):
        return "window_sums is not an object of numbers"
    for key in ("window_steps", "skipped_updates"):
        try:
            validate.integer(key, entry[key], min=0)
        except ValueError:
            return f"{key} is {entry[key]!r}, not an integer >= 0"
    return None


def _read_runner_state(path: pathlib.Path) -> tuple[dict, str | None]:
    """The valid entries of ``runner_state.json`` and, if any of it is missing or bad, why (a few words)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, "it is missing"
    except (OSError, ValueError) as e:
        return {}, f"it is unreadable ({type(e).__name__})"
    if not isinstance(saved, dict):
        return {}, f"it holds a {type(saved).__name__}, not an object"
    good = {k: v for k, v in saved.items() if k.isdigit() and _carry_problem(v) is None}
    bad = next((_carry_problem(v) or f"a key {k!r} is not a step" for k, v in saved.items() if k not in good), None)
    return good, bad


def _save_carry(ckpt, out: pathlib.Path, step: int, carry: _Carry) -> None:
    """Records the host carry of checkpoint ``step`` (dropping entries of checkpoints no longer kept)."""
    path = out / RUNNER_STATE
    saved, _ = _read_runner_state(path)
    keep = {str(s) for s in ckpt.all_steps()} | {str(step)}
    saved = {k: v for k, v in saved.items() if k in keep}
    saved[str(step)] = carry.to_dict()
    atomic_write_json(path, saved)


def _save(ckpt, out: pathlib.Path, step: int, state, carry: _Carry) -> None:
    """Checkpoint ``step`` and, first, the host carry at that step (so a complete checkpoint always has it);
    the checkpoint's checksum file holds a copy of the carry too (verified, it repairs ``runner_state.json``)."""
    _save_carry(ckpt, out, step, carry)
    ckpt.save(step, state, extra={RUNNER_STATE: carry.to_dict()})


def _update_carry(ckpt, out: pathlib.Path, step: int, carry: _Carry) -> None:
    """A new host carry for the existing checkpoint ``step``: its checksum file's copy first (the copy wins)."""
    if ckpt.check(step) is None:
        ckpt.set_extra(step, {RUNNER_STATE: carry.to_dict()})
    _save_carry(ckpt, out, step, carry)


def _restore_carry(out: pathlib.Path, step: int, extra: dict | None = None) -> _Carry:
    """The host carry saved with checkpoint ``step``.

    From ``runner_state.json``, checked against the copy in the checkpoint's
    checksum file (``extra``): when the file is missing or bad (or disagrees),
    the verified copy is used, with a one-line warning. A checkpoint without
    that copy (an older jmeta) and no valid entry: the meta-steps of the
    logging window before ``step`` are lost, so the next record averages only
    the steps after the resume (it says so in ``steps_averaged``); warned when
    that window is not empty. The skipped-update count then comes from the
    last metrics record.
    """
    from jmeta.run.checkpoint import CheckpointWarning

    path = out / RUNNER_STATE
    saved, problem = _read_runner_state(path)
    entry = saved.get(str(step))
    if entry is None and problem is None:
        problem = f"it has no entry for checkpoint {step}"
    copy = (extra or {}).get(RUNNER_STATE)
    if copy is not None and _carry_problem(copy) is None:
        if entry != copy:
            why = problem if entry is None else "its entry differs from the checkpoint's checksummed copy"
            warnings.warn(f"{path}: {why}; using the copy in checkpoint {step}'s checksum file, so the logging "
                          f"window continues exactly", CheckpointWarning, stacklevel=3)
        return _Carry.from_dict(copy)
    if entry is not None:
        return _Carry.from_dict(entry)
    recs = [r for r in MetricsLog.read(out / "metrics.jsonl") if r.get("step", 0) <= step] \
        if (out / "metrics.jsonl").exists() else []
    last = recs[-1].get("step", 0) if recs else 0
    if step > last:
        warnings.warn(f"{path}: {problem}, and checkpoint {step} holds no copy: the metrics of meta-steps "
                      f"{last + 1}..{step} are lost, so the next record averages only the meta-steps after the "
                      f"resume (its steps_averaged says how many)", CheckpointWarning, stacklevel=3)
    return _Carry(skipped=recs[-1].get("skipped_updates", 0) if recs else 0)


def _last_record_step(out: pathlib.Path, step: int) -> int:
    """The step of the last record in ``metrics.jsonl`` at or before ``step`` (0 if none)."""
    path = out / "metrics.jsonl"
    recs = [r for r in MetricsLog.read(path) if r.get("step", 0) <= step] if path.exists() else []
    return int(recs[-1].get("step", 0)) if recs else 0


def _remove_stale_tmp(out: pathlib.Path) -> None:
    """Deletes the temporary files of atomic writes a killed process left (``.NAME.XXXX.tmp``) in the run folder
    and its checkpoint folders."""
    folders = [out] + ([p for p in (out / "checkpoints").iterdir() if p.is_dir()]
                       if (out / "checkpoints").is_dir() else [])
    for d in folders:
        for p in d.glob(".*.tmp"):
            if p.is_file():
                p.unlink(missing_ok=True)


def _lost_checkpoints(out: pathlib.Path, t) -> str | None:
    """What shows that a run without a complete checkpoint had one (so starting over would lose it), or None.

    A run that stopped before its first checkpoint (a crash, a non-finite loss) starts over on resume, as
    it should; one that has an ``eval.json``, or a metrics record past the first checkpoint step, was
    checkpointed before.
    """
    if (out / "eval.json").exists():
        return "it has an eval.json (it finished)"
    path = out / "metrics.jsonl"
    if not path.exists():
        return None
    steps = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            steps.append(int(json.loads(line).get("step", 0)))
        except (ValueError, AttributeError, TypeError):
            continue  # a torn line
    first = t.checkpoint_every or t.steps
    if steps and max(steps) > first:
        return f"its metrics.jsonl reaches meta-step {max(steps)}, past the first checkpoint (step {first})"
    return None


def train(cfg: Config, out_dir, *, resume: bool = False, progress: bool = True, data_dir=None,
          sinks=(), evaluate_at_end: bool = True, stop_after: int | None = None, tensorboard: bool = True,
          plots: bool = True, on_eval=None) -> dict:
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
      tensorboard: also write the metrics as a TensorBoard event file into
        ``out_dir`` (:mod:`jmeta.run.tensorboard`; no TensorFlow needed).
      plots: draw the PNGs at the end (needs matplotlib).
      on_eval: called with the evaluation (as in ``eval.json``) once it is
        written, before the PNGs are drawn (``jmeta train`` prints it there).

    The run folder is locked while this runs (:mod:`jmeta.run.lock`), and
    SIGINT/SIGTERM stop training with a final checkpoint
    (:mod:`jmeta.run.interrupt`).

    Raises:
      RunLockedError: another process is writing ``out_dir``.
      Interrupted: SIGINT or SIGTERM; the message names the checkpoint and
        the command that resumes the run.
      OSError: an output cannot be written (disk full, read-only, no
        permission); the error names the file.
      RunExistsError: ``resume=False`` but ``out_dir`` already holds a run
        (nothing of it is overwritten).
      NotADirectoryError: ``out_dir`` is a file.
      NonFiniteError: ``train.on_nan='stop'`` and a loss or meta-gradient was
        not finite; the message names the meta-step and the last good checkpoint.
      MemoryError: the device ran out of memory (the message lists the options
        that reduce memory).

    Returns:
      A summary dict (``steps``, ``wall_time``, ``eval``).
    """
    from jmeta.run.config import validate
    from jmeta.run.interrupt import StopSignals
    from jmeta.run.lock import RunLock

    validate(cfg)
    # The lock (which also finds a read-only or full disk) before anything is read or written.
    with RunLock(out_dir, "jmeta train --resume" if resume else "jmeta train"), StopSignals() as stop:
        return _train(cfg, out_dir, resume=resume, progress=progress, data_dir=data_dir, sinks=sinks,
                      evaluate_at_end=evaluate_at_end, stop_after=stop_after, tensorboard=tensorboard,
                      plots=plots, on_eval=on_eval, stop=stop)


def resume_command(out, data_dir=None) -> str:
    """The shell command that resumes the run in ``out`` (paths quoted for the shell)."""
    import shlex

    cmd = f"jmeta train --resume {shlex.quote(str(out))}"
    return cmd + (f" --data-dir {shlex.quote(str(data_dir))}" if data_dir is not None else "")


def _train(cfg: Config, out_dir, *, resume, progress, data_dir, sinks, evaluate_at_end, stop_after, tensorboard,
           plots, on_eval, stop) -> dict:
    """:func:`train` with the run folder locked; ``stop``: the :class:`~jmeta.run.interrupt.StopSignals`."""
    from jmeta.run.config import ConfigError, validate
    from jmeta.run.experiment import build
    from jmeta.run.checkpoint import CheckpointError, Checkpointer
    from jmeta.train.step import init_train_state, make_meta_step
    from jmeta.run.registry import is_rl

    validate(cfg)
    rl = is_rl(cfg)
    warning = nondeterminism_warning(cfg.train.deterministic)
    if warning:
        warnings.warn(warning, stacklevel=3)
    out = pathlib.Path(out_dir)
    resume_cmd = resume_command(out, data_dir)
    stop.message = f"interrupted ({{signal}}) before meta-training began; resume with `{resume_cmd}`"
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"the run folder {out} is a file; give a folder (new or a run to resume)")
    found = [] if resume else existing_run(out)
    if found:
        raise RunExistsError(f"{out} already holds a run ({', '.join(found)}); continue it with "
                             f"`jmeta train --resume {out}` (resume=True), or give another --out")
    foreign = None if resume else foreign_config(out, cfg)
    if foreign:
        raise RunExistsError(f"{out}: {foreign}, which a fresh run would overwrite; give another --out "
                             f"(or remove {out / 'config.json'})")
    out.mkdir(parents=True, exist_ok=True)
    t = cfg.train
    ckpt = Checkpointer(out / "checkpoints", keep=t.keep_checkpoints)  # first: refuses an unusable orbax at once
    _remove_stale_tmp(out)
    latest = ckpt.latest_step() if resume else None  # the newest that passes its checksum
    if latest is not None and latest > t.steps:
        ckpt.close()
        raise ConfigError(f"train.steps={t.steps} is below the {latest} meta-steps this run has done; a resumed run "
                          f"can only train for longer (steps >= {latest})")
    if resume and latest is None:
        unusable = ckpt.unusable()
        if unusable:  # never start over on top of damaged checkpoints
            ckpt.close()
            raise CheckpointError(f"--resume {out}: {unusable}; nothing was resumed (train into another --out)")
        lost = _lost_checkpoints(out, t)
        if lost:
            ckpt.close()
            raise CheckpointError(f"--resume {out}: no complete checkpoint in {out / 'checkpoints'}, but {lost}: "
                                  f"its checkpoints were removed or lost, and resuming would start over and "
                                  f"replace its metrics; train into another --out (or move {out} aside)")
    atomic_write_json(out / "config.json", cfg.to_dict())
    k_train, k_eval, k_init = run_keys(t.seed)
    exp = build(cfg, data_dir=data_dir)
    if rl:  # meta-RL: the algorithm's own training state and meta-step (jmeta.run.rl)
        state = exp.init_state(k_init)
    else:
        state = init_train_state(exp.algorithm, exp.model.params, exp.model.state, exp.meta_optimizer, key=k_init)
    start = 0
    extra = None
    if resume:
        if latest is not None:
            try:  # the newest intact checkpoint: damaged ones are named and skipped, in one warning
                got = ckpt.load(None, state)
            except CheckpointError as e:
                ckpt.close()
                raise CheckpointError(f"--resume {out}: {e}; nothing was resumed (train into another --out)") from None
            # as a fresh state (uncommitted arrays): the compiled meta-step is reused, not compiled again (orbax
            # restores committed arrays, which jit lowers with sharding annotations: another program, and its
            # outputs fed back in a third; measured on a resumed sinusoid run: 2 compiles of the meta-step)
            from jmeta.run.checkpoint import uncommitted

            state, extra = uncommitted(got.tree), got.extra
            start = int(state.step)
        MetricsLog.truncate_after(out / "metrics.jsonl", start)
    sinks = list(sinks)
    if tensorboard:
        from jmeta.run.tensorboard import TensorBoardSink

        sinks.append(TensorBoardSink(out, resume_step=start if resume else None))
    log = MetricsLog(out / "metrics.jsonl", sinks)
    if rl:
        from jmeta.run.rl import step_postfix

        guarded = _guarded_steps(exp.step_fn, t.on_nan, check=("objective", "update_norm"))
        loop_kw = {"postfix": step_postfix}
        train_data = None
    else:
        step_fn = make_meta_step(exp.algorithm, exp.train_sample, exp.meta_optimizer,
                                 meta_batch_size=t.meta_batch_size, task_parallel=exp.task_parallel, jit=False)
        guarded = _guarded_steps(step_fn, t.on_nan)
        loop_kw = {}
        train_data = exp.train_data
    carry = _restore_carry(out, start, extra) if resume else _Carry()
    total = t.steps if stop_after is None else min(t.steps, start + stop_after)
    bar = Progress(t.steps, start=start, desc=cfg.name, enabled=progress)
    t0 = time.perf_counter()

    def advance(st, _, n):  # st: (TrainState, first bad step, skipped updates), the last two on the device
        if rl and exp.host is not None:  # episodes stepped on the host (MetaWorld): one compiled call per step
            state, bad, skipped, metrics = exp.host_steps(guarded, *st, k_train, n)
        else:
            state, bad, skipped, metrics = guarded(*st, k_train, train_data, n)
        return (state, bad, skipped), metrics, bad, skipped

    def nonfinite_message(b):
        last = ckpt.latest_step()
        return (f"non-finite loss or meta-gradient at meta-step {b}; the run stopped without applying "
                f"it. Last good checkpoint: "
                f"{'step ' + str(last) + ' in ' + str(ckpt.directory) if last is not None else 'none'}. "
                f"Edit {out / 'config.json'} (lower train.meta_lr or algorithm.inner_lr, or set "
                f"train.on_nan to \"skip\" to drop such updates), then resume with "
                f"`jmeta train --resume {out}`.")

    loop = TrainLoop(advance, total=total, final=t.steps, log_every=t.log_every,
                     checkpoint_every=t.checkpoint_every, sinks=[log], progress=bar, on_nan=t.on_nan,
                     checkpoint=lambda s, st, w: _save(ckpt, out, s, st[0], w),
                     update_window=lambda s, w: _update_carry(ckpt, out, s, w),
                     should_stop=lambda: stop.requested is not None,  # SIGINT/SIGTERM: checkpoint and stop
                     nonfinite_message=nonfinite_message, **loop_kw)

    def interrupted_now():  # a second signal (or one while a checkpoint is written): stop at once
        last_ckpt, s = loop.last_checkpoint, loop.step
        where = f"from checkpoint {last_ckpt}" if last_ckpt else "no checkpoint yet: it starts over"
        return f"interrupted ({{signal}}) again at once, before step {s} was checkpointed; " \
               f"resume with `{resume_cmd}` ({where})"

    stop.message, stop.deferring = interrupted_now, True  # the first signal stops at the next safe point
    try:
        state, _, _ = loop.run((state, jnp.asarray(-1, jnp.int32), jnp.asarray(carry.skipped, jnp.int32)),
                               start=start, window=carry,
                               window_start=_last_record_step(out, start) if resume else 0)
        s = loop.step
        stop.deferring = False
        if stop.requested is not None:
            raise stop.interrupted(f"interrupted ({{signal}}) at step {s}; checkpoint {s} written to "
                                   f"{ckpt.directory}; resume with `{resume_cmd}`", s)
    except Exception as e:
        if _is_oom(e):
            raise MemoryError(OOM_HINT + f" (original error: {str(e).splitlines()[0][:300]})") from e
        raise
    finally:
        stop.deferring = False
        bar.close()
        log.close()
        ckpt.close()
    wall = time.perf_counter() - t0
    summary: dict = {"steps": s, "wall_time_s": round(wall, 2), "steps_run": s - start}
    if stop_after is not None and s < t.steps:
        return summary
    stop.message = (f"interrupted ({{signal}}) after meta-training ended at step {s} (checkpointed), before the "
                    f"evaluation and plots were written; `{resume_cmd}` writes them")
    if evaluate_at_end:
        summary["eval"] = evaluate_run(cfg, exp, state, k_eval, out, progress=progress,
                                       warn_nondeterminism=False)
        if on_eval is not None:
            on_eval(summary["eval"])
    if not plots:
        return summary
    try:
        from jmeta.run.plots import plot_run

        plot_run(out)
        if rl:
            from jmeta.run.rl import plots as rl_plots

            rl_plots(cfg, exp, state, k_eval, out)
        elif exp.task_kind == "regression" and cfg.task.family == "sinusoid":
            _sinusoid_predictions(cfg, exp, state, k_eval, out)
    except ImportError as e:  # matplotlib is optional
        print(f"jmeta: plots skipped ({e})")
    return summary


def _is_oom(e: Exception) -> bool:
    msg = str(e)
    if "os_error_code=" in msg or "No space left on device" in msg:  # TensorStore's full disk: not the device
        return False
    return "RESOURCE_EXHAUSTED" in msg or "Out of memory" in msg or "out of memory" in msg


def evaluate_run(cfg: Config, exp, state, key, out=None, *, progress: bool = False,
                 warn_nondeterminism: bool = True, filename: str = "eval.json") -> dict:
    """Final evaluation: each shot count of ``cfg.eval`` over ``cfg.eval.num_tasks`` held-out tasks (a meta-RL
    run: the returns of :func:`jmeta.run.rl.evaluate`).

    Written to ``out/filename`` when ``out`` is given (``jmeta eval`` with
    settings other than the run's own writes beside ``eval.json``).

    With ``progress`` a bar counts evaluated tasks, per batch. On a GPU
    without XLA's deterministic operations while ``cfg.train.deterministic``
    asks for them, warns (unless ``warn_nondeterminism=False``: :func:`train`
    has warned already) and ``eval.json`` records it.
    """
    from jmeta.train.evaluation import evaluate

    if warn_nondeterminism:
        warning = nondeterminism_warning(cfg.train.deterministic)
        if warning:
            warnings.warn(warning, stacklevel=2)
    if getattr(exp, "task_kind", None) == "rl":  # meta-RL: returns over held-out tasks (jmeta.run.rl.evaluate)
        from jmeta.run.rl import evaluate as evaluate_rl

        return evaluate_rl(cfg, exp, state, key, out, filename=filename)
    results = {}
    n = cfg.eval.num_tasks
    bar = Progress(n * len(exp.eval_samples), desc=f"{cfg.name} eval", unit="task", enabled=progress)
    done = 0
    try:
        for shots, sample in exp.eval_samples.items():
            t0 = time.perf_counter()
            kw = {}
            if progress:
                kw["progress"] = lambda k, base=done: bar.update(base + k, postfix=f"K={shots}")
            r = evaluate(exp.eval_algorithm, state.meta_params, state.model_state, sample,
                         jax.random.fold_in(key, shots), num_tasks=n, num_steps=cfg.eval.steps,
                         batch_size=cfg.eval.batch_size, data=exp.eval_data,
                         task_parallel="map" if exp.task_parallel == "map" else "vmap", **kw)
            r["wall_time_s"] = round(time.perf_counter() - t0, 2)
            results[f"K={shots}"] = r
            done += n
            bar.update(done, postfix=f"K={shots}")
    finally:
        bar.close()
    summary = {}
    for name, r in results.items():
        for metric in ("loss", "accuracy"):
            if metric not in r:
                continue
            for k in cfg.eval.report_steps:
                if k < len(r[metric]["mean"]):
                    summary[f"{name} {metric} after {k} step(s)"] = {
                        "mean": r[metric]["mean"][k], "ci95": r[metric]["ci95"][k],
                        "median": r[metric]["median"][k], "nonfinite": r[metric]["nonfinite"][k]}
    ev = {"name": cfg.name, "step": int(state.step), "num_tasks": cfg.eval.num_tasks,
          "device": jax.devices()[0].device_kind, "platform": jax.default_backend(),
          "xla_gpu_deterministic_ops": deterministic_ops_enabled(), "conv_impl": exp.conv_impl,
          "summary": summary, "results": results}
    if out is not None:
        atomic_write_json(pathlib.Path(out) / filename, ev)
    return ev


def _sinusoid_predictions(cfg, exp, state, key, out) -> None:
    from jmeta.run.plots import sinusoid_fits
    from jmeta.tasks import Sinusoid

    k = cfg.task.k_support
    fam = Sinusoid(k, 1)
    ka, kx = jax.random.split(jax.random.fold_in(key, 10_000))
    amp, phase = fam.sample_params(ka, 3)
    xs = jax.random.uniform(kx, (3, k, 1), minval=-5.0, maxval=5.0)
    grid = jnp.linspace(-5, 5, 200)[:, None]
    steps = cfg.eval.report_steps[0] if cfg.eval.report_steps else 1
    algo = exp.algorithm
    sy = jax.vmap(Sinusoid.function)(amp, phase, xs)

    @jax.jit  # one program instead of op-by-op dispatch of the inner loop
    def fits(mp, ms, xs, sy):
        def one(x, y):
            return algo.predict(mp, algo.adapt(mp, ms, x, y, num_steps=steps), ms, grid, num_steps=steps)

        return algo.predict(mp, mp["params"], ms, grid, num_steps=0), jax.vmap(one)(xs, sy)

    pre, post = jax.device_get(fits(state.meta_params, state.model_state, xs, sy))
    curves = []
    for i in range(3):
        curves.append({"x": np.asarray(grid[:, 0]), "truth": np.asarray(Sinusoid.function(amp[i], phase[i], grid[:, 0])),
                       "pre": np.asarray(pre[:, 0]), "post": np.asarray(post[i, :, 0]),
                       "support_x": np.asarray(xs[i, :, 0]), "support_y": np.asarray(sy[i, :, 0]), "steps": steps})
    sinusoid_fits(curves, pathlib.Path(out) / "predictions.png", title=f"{cfg.name}: held-out tasks, K={k}")
