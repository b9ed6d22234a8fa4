"""Hyperparameter search from the command line (``jmeta sweep``): grid or random, one run per trial.

::

    jmeta sweep --config sinusoid-maml --grid algorithm.inner_lr=0.005,0.01,0.02 \\
                --grid train.meta_lr=0.001,0.003 --steps 5000 --out sweeps/lr
    jmeta sweep --config sinusoid-maml --random 8 --range algorithm.inner_lr=0.001:0.1:log \\
                --range train.meta_lr=0.0003:0.003:log --steps 5000 --out sweeps/rand

Trials: with ``--grid`` only, the Cartesian product of the value lists; with
``--random N``, ``N`` draws where every ``--range key=lo:hi[:log]`` is
sampled uniformly (log-uniformly with ``:log``; integers when ``lo`` and
``hi`` are written as integers, a log-uniform draw then rounded) and every
``--grid`` key picks one of its values uniformly (numpy
``default_rng(sweep_seed)``).

Each trial is an ordinary run (:func:`jmeta.run.runner.train`) in
``OUT/trial_000``, ``OUT/trial_001``, ... , run one after another: every
config key can be swept, and every trial folder can be inspected, resumed,
evaluated and exported like any run. Re-running a sweep continues it: a trial
whose folder holds a run of the same config with an ``eval.json`` of its final
step is reused, one with an unfinished run of the same config (interrupted, or
an evaluation of fewer steps) is resumed from its latest checkpoint, and a
folder holding a run of another config is an error before any trial trains
(give another ``--out``). A trial that stops on a non-finite loss (or runs out of
memory) is recorded with its status and the sweep goes on.

Results: ``OUT/results.csv`` and ``OUT/results.json`` (one row per trial: the
overrides, status, final training loss, every evaluation summary metric with
its 95% CI), and ``OUT/sweep.png`` (the chosen metric against each swept key,
with CIs). The metric (``--metric``) defaults to the first shot count's query
accuracy (classification) or loss (regression) after the most adaptation steps
reported (:func:`eval_metric_names` lists them; an unknown ``--metric`` is an
error before any trial trains); ``best`` in ``results.json`` is the trial that
maximises accuracy / minimises loss among the finite values (``null`` if none
is finite: a diverged trial is never the best).

With ``--vectorize`` (:func:`run_vectorized`) the trials are trained
together, ``vmap``-ed over a configuration axis in one compiled program
(:mod:`jmeta.train.vectorized`), then each is checkpointed and evaluated into its
own ``trial_NNN`` folder exactly as a separate run would be. Only the keys
that do not change the program can be vectorised: ``algorithm.inner_lr``
(without a learned learning rate), ``train.meta_lr`` (Adam or SGD without a
schedule) and ``train.seed`` (sinusoid: the model's initialisation does not
depend on it); anything else is a :class:`ConfigError` naming the key. A
trial whose loss turns non-finite is recorded as ``nonfinite`` (its updates
keep running inside the shared program; there is no per-step guard).
Re-running a finished vectorised sweep reuses its trial folders; any other
trial folder holding a run is refused (:func:`run_vectorized`).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import pathlib
import time
import warnings

from jmeta import validate
from jmeta.run.config import Config, ConfigError, apply_overrides, from_dict


def _split_values(raw: str) -> list[str]:
    """Splits ``a,b,[c,d]`` at commas outside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in raw:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts]


def _parse_value(raw: str):
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_grid(spec: str) -> tuple[str, list]:
    """``"section.key=v1,v2,..."`` -> ``(key, [v1, v2, ...])`` (values parsed as JSON, else strings)."""
    if "=" not in spec:
        raise ConfigError(f"--grid must look like section.key=v1,v2,..., got {spec!r}")
    key, raw = spec.split("=", 1)
    values = [_parse_value(v) for v in _split_values(raw)]
    if not key.strip() or any(v == "" for v in values):
        raise ConfigError(f"--grid must look like section.key=v1,v2,..., got {spec!r}")
    for i, v in enumerate(values):  # 1 and 1.0 are one config value; true and 1 are not
        if any(u == v and isinstance(u, bool) == isinstance(v, bool) for u in values[:i]):
            raise ConfigError(f"--grid {key.strip()} lists {v!r} more than once, which would run the same trial "
                              f"twice; give each value once, got {spec!r}")
    return key.strip(), values


def parse_range(spec: str) -> tuple[str, float, float, bool, bool]:
    """``"section.key=lo:hi[:log]"`` -> ``(key, lo, hi, log, integer)``."""
    if "=" not in spec:
        raise ConfigError(f"--range must look like section.key=lo:hi or section.key=lo:hi:log, got {spec!r}")
    key, raw = spec.split("=", 1)
    parts = raw.split(":")
    log = len(parts) == 3 and parts[2] == "log"
    if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
        raise ConfigError(f"--range must look like section.key=lo:hi or section.key=lo:hi:log, got {spec!r}")
    try:
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigError(f"--range {key}: lo and hi must be numbers, got {parts[0]!r}, {parts[1]!r}") from None
    if not lo < hi:
        raise ConfigError(f"--range {key}: needs lo < hi, got {lo} and {hi}")
    if log and lo <= 0:
        raise ConfigError(f"--range {key}: a log range needs lo > 0, got {lo}")
    integer = all(p.strip().lstrip("-").isdigit() for p in parts[:2])
    return key.strip(), lo, hi, log, integer


def make_trials(grids: list[tuple[str, list]], ranges: list[tuple] = (), *, random: int | None = None,
                seed: int = 0) -> list[dict]:
    """The list of trials, each ``{key: value}`` (module docstring)."""
    keys = [k for k, _ in grids] + [r[0] for r in ranges]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"a key is swept twice: {keys}")
    if "train.deterministic" in keys:
        raise ConfigError("train.deterministic cannot be swept: it is one XLA flag for the whole process, set before "
                          "JAX starts; give it with --set train.deterministic=true|false")
    if random is None:
        if ranges:
            raise ConfigError("--range needs --random N (the number of trials to draw)")
        if not grids:
            raise ConfigError("nothing to sweep: give --grid section.key=v1,v2,... or --random N with --range")
        return [dict(zip([k for k, _ in grids], combo)) for combo in itertools.product(*[v for _, v in grids])]
    try:
        random = validate.integer("--random (the number of trials)", random, min=1)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not grids and not ranges:
        raise ConfigError("--random N needs at least one --range section.key=lo:hi[:log] or --grid")
    import numpy as np

    rng = np.random.default_rng(seed)
    trials = []
    for _ in range(random):
        t = {}
        for k, values in grids:
            t[k] = values[int(rng.integers(len(values)))]
        for k, lo, hi, log, integer in ranges:
            if log:  # log-uniform; integers are rounded after the draw in log space
                v = math.exp(rng.uniform(math.log(lo), math.log(hi)))
                t[k] = min(int(hi), max(int(lo), round(v))) if integer else float(v)
            elif integer:
                t[k] = int(rng.integers(int(lo), int(hi) + 1))
            else:
                t[k] = float(rng.uniform(lo, hi))
        trials.append(t)
    return trials


def trial_config(base: Config, overrides: dict, index: int) -> Config:
    """``base`` with the trial's overrides (validated) and name ``<base>-trial<index>``."""
    cfg = apply_overrides(from_dict(base.to_dict()), [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    cfg.name = f"{base.name}-trial{index:03d}"
    return cfg


def default_metric(summary: dict) -> str:
    """The first shot count's accuracy (else loss) after the most reported adaptation steps."""
    if not summary:
        raise ValueError("no evaluation metrics to choose from")
    rl = [k for k in summary if k.startswith("return after ")]  # meta-RL: the return after the most steps
    if rl:
        return max(rl, key=lambda k: int(k.split(" after ")[1].split(" ")[0]))
    if "trial return" in summary:  # RL^2
        return "trial return"
    for kind in ("accuracy", "loss"):
        keys = [k for k in summary if f" {kind} after " in k]
        if keys:
            first_shot = keys[0].split(" ")[0]
            same = [k for k in keys if k.startswith(first_shot + " ")]
            return max(same, key=lambda k: int(k.split(" after ")[1].split(" ")[0]))
    return next(iter(summary))


def eval_metric_names(cfg: Config) -> list[str]:
    """The summary metrics the final evaluation of ``cfg`` reports (the keys of ``eval.json``'s ``summary``).

    ``K=<shots> <loss|accuracy> after <k> step(s)`` for every ``eval.shots`` and
    ``eval.report_steps``; accuracy only for classification (image families);
    algorithms without adaptation steps (a head fitted per task) report step 0 only.
    """
    from jmeta.run.experiment import HEAD_ALGORITHMS
    from jmeta.run.registry import is_rl

    if is_rl(cfg):  # jmeta.run.rl.evaluate's keys
        if cfg.algorithm.name == "rl2":
            return [f"return in episode {i + 1}" for i in range(cfg.algorithm.num_episodes)] + ["trial return"]
        return [f"return after {k} step(s)" for k in range(cfg.eval.steps + 1)]
    kinds = ("loss",) if cfg.task.family == "sinusoid" else ("loss", "accuracy")
    steps = 0 if cfg.algorithm.name in HEAD_ALGORITHMS else cfg.eval.steps
    names = [f"K={shots} {kind} after {k} step(s)" for shots in cfg.eval.shots for kind in kinds
             for k in cfg.eval.report_steps if k <= steps]
    return list(dict.fromkeys(names))


def _check_metric(metric: str | None, cfgs: list[Config]) -> None:
    """``metric`` must be reported by every trial's evaluation (checked before any trial trains)."""
    if metric is None or not cfgs:
        return
    common = [m for m in eval_metric_names(cfgs[0]) if all(m in eval_metric_names(c) for c in cfgs[1:])]
    if metric not in common:
        raise ConfigError(f"--metric {metric!r} is not an evaluation metric of these trials (their eval.shots, "
                          f"eval.report_steps and task); give one of {common}")


def _final_train_loss(run_dir: pathlib.Path):
    from jmeta.run.logs import MetricsLog

    m = run_dir / "metrics.jsonl"
    if not m.exists():
        return None
    recs = MetricsLog.read(m)
    return recs[-1].get("loss") if recs else None


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _config_diff(there: dict, want: dict, limit: int = 3) -> str:
    """``"train.steps: 5 there, 20 in this sweep; ..."`` (the first ``limit`` differing keys)."""
    a, b = _flat(there) if isinstance(there, dict) else {}, _flat(want)
    keys = [k for k in dict.fromkeys([*b, *a]) if a.get(k, "<missing>") != b.get(k, "<missing>")]
    parts = [f"{k}: {json.dumps(a.get(k, '<missing>'))} there, {json.dumps(b.get(k, '<missing>'))} in this sweep"
             for k in keys[:limit]]
    return "; ".join(parts) + (f"; and {len(keys) - limit} more key(s)" if len(keys) > limit else "")


def _eval_columns(ev: dict) -> dict:
    """A results row's evaluation columns: ``{metric: mean, "<metric> ci95": ci95}`` of ``ev["summary"]``."""
    cols = {}
    for name, v in ev["summary"].items():
        cols[name], cols[f"{name} ci95"] = v["mean"], v["ci95"]
    return cols


def _read_eval(path: pathlib.Path):
    """``eval.json`` as a dict with a ``summary``, or None if it is missing or unreadable."""
    try:
        ev = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return ev if isinstance(ev, dict) and isinstance(ev.get("summary"), dict) else None


def trial_folder_state(run_dir, cfg: Config) -> tuple[str, str]:
    """What the trial folder ``run_dir`` holds for the trial config ``cfg``: ``(state, why)``.

    ``"new"``: no run yet (missing, empty, or only this trial's
    ``config.json``; a trial trains there from scratch). ``"done"``: a run of exactly ``cfg`` with an
    ``eval.json`` of its final step ``cfg.train.steps`` (reused). ``"resume"``:
    a run of exactly ``cfg`` without that evaluation (interrupted, or an
    ``eval.json`` left from fewer steps); it is continued from its latest
    checkpoint. ``"other"``: anything else (a run of another config, a run
    without a readable ``config.json``, a lone ``config.json`` that is not
    this trial's, a file): never written to.
    """
    from jmeta.run.runner import existing_run, foreign_config

    d = pathlib.Path(run_dir)
    if d.exists() and not d.is_dir():
        return "other", "is a file, not a trial folder"
    found = existing_run(d) if d.exists() else []
    if not found:
        foreign = foreign_config(d, cfg) if d.exists() else None
        return ("other", f"holds no run, but {foreign}") if foreign else ("new", "")
    try:
        there = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "other", f"holds a run ({', '.join(found)}) without a config.json"
    except (OSError, ValueError) as e:
        return "other", f"holds a run whose config.json cannot be read ({type(e).__name__})"
    try:  # through Config: a config.json written before a key existed holds that key's default
        there = json.loads(from_dict(there).to_json())
    except ConfigError as e:
        return "other", f"holds a run whose config.json is not a valid config ({e})"
    want = json.loads(cfg.to_json())
    if there != want:
        return "other", f"holds a run of another config ({_config_diff(there, want)})"
    ev = _read_eval(d / "eval.json")
    if ev is not None and ev.get("step") == cfg.train.steps:
        return "done", ""
    if ev is not None:
        return "resume", f"holds an evaluation of step {ev.get('step')}, not of the final step {cfg.train.steps}"
    return "resume", f"holds an unfinished run ({', '.join(found)}; no eval.json)"


def _refuse_others(states, run_dirs, trials) -> None:
    """A :class:`ConfigError` naming the trial folders that hold something this sweep must not touch."""
    bad = [(i, why) for i, (state, why) in enumerate(states) if state == "other"]
    if not bad:
        return
    i, why = bad[0]
    others = [run_dirs[j].name for j, _ in bad[1:]]
    more = f" (and {', '.join(others[:5])}{', ...' if len(others) > 5 else ''} too)" if others else ""
    desc = ", ".join(f"{k}={v}" for k, v in trials[i].items())
    raise ConfigError(f"the trial folder {run_dirs[i]} {why}; this sweep would put trial {i} ({desc}) there"
                      f"{more}. Give this sweep another --out (nothing was trained or overwritten)")


def run(base: Config, trials: list[dict], out_dir, *, progress: bool = True, tensorboard: bool = True,
        metric: str | None = None, data_dir=None, log=print) -> dict:
    """Runs the trials one after another (:func:`_run`) with the sweep folder locked (:mod:`jmeta.run.lock`;
    each trial folder is locked while it trains)."""
    from jmeta.run.lock import RunLock

    with RunLock(out_dir, "jmeta sweep"):
        return _run(base, trials, out_dir, progress=progress, tensorboard=tensorboard, metric=metric,
                    data_dir=data_dir, log=log)


def _run(base: Config, trials: list[dict], out_dir, *, progress: bool = True, tensorboard: bool = True,
         metric: str | None = None, data_dir=None, log=print) -> dict:
    """Runs the trials one after another and writes the results table and plot.

    Returns:
      ``{"metric", "best", "rows", "keys"}`` (as written to ``results.json``).

    A trial folder that already holds this trial's finished run is reused;
    one that holds an interrupted run of the same config is resumed from its
    latest checkpoint (:func:`trial_folder_state`).

    Raises:
      ConfigError: a trial's override is not a valid config key/value,
        ``metric`` is not one of :func:`eval_metric_names`, or a trial folder
        holds a run of another config (all checked for every trial before the
        first one runs).
    """
    from jmeta.run.runner import NonFiniteError, train

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfgs = [trial_config(base, t, i) for i, t in enumerate(trials)]  # fail fast on a bad override
    _check_metric(metric, cfgs)
    run_dirs = [out / f"trial_{i:03d}" for i in range(len(trials))]
    states = [trial_folder_state(d, c) for d, c in zip(run_dirs, cfgs)]
    _refuse_others(states, run_dirs, trials)
    keys = list(dict.fromkeys(k for t in trials for k in t))
    rows = []
    for i, (t, cfg, run_dir, (state, why)) in enumerate(zip(trials, cfgs, run_dirs, states)):
        row = {"trial": i, **t, "run_dir": str(run_dir)}
        desc = ", ".join(f"{k}={v}" for k, v in t.items())
        if state == "done":
            log(f"jmeta sweep: trial {i + 1}/{len(trials)} ({desc}): done before, reusing {run_dir}")
            ev = _read_eval(run_dir / "eval.json")
            row.update(status="ok", wall_time_s=None)
        else:
            if state == "resume":
                log(f"jmeta sweep: trial {i + 1}/{len(trials)} ({desc}): {run_dir} {why}; resuming it")
            else:
                log(f"jmeta sweep: trial {i + 1}/{len(trials)} ({desc}) -> {run_dir}")
            t0 = time.perf_counter()
            ev = None
            try:
                ev = train(cfg, run_dir, resume=state == "resume", progress=progress, data_dir=data_dir,
                           tensorboard=tensorboard, plots=False)["eval"]
                row["status"] = "ok"
            except NonFiniteError as e:
                row.update(status="nonfinite", error=str(e))
                log(f"jmeta sweep: trial {i} stopped: {e}")
            except MemoryError as e:
                row.update(status="out_of_memory", error=str(e))
                log(f"jmeta sweep: trial {i} ran out of memory")
            row["wall_time_s"] = round(time.perf_counter() - t0, 2)
        row["final_train_loss"] = _final_train_loss(run_dir)
        if ev is not None:
            row.update(_eval_columns(ev))
        rows.append(row)
    return _finish(rows, keys, metric, out, log)


#: config keys :func:`run_vectorized` can vary inside one program -> the jmeta.train.vectorized axis name.
VECTOR_KEYS = {"algorithm.inner_lr": "inner_lr", "train.meta_lr": "meta_lr", "train.seed": "seed"}


def _check_vectorizable(base: Config, trials: list[dict]) -> None:
    from jmeta.run.registry import is_rl

    if is_rl(base):
        raise ConfigError(f"--vectorize runs the supervised meta-step only; task.family={base.task.family!r} is "
                          f"meta-RL: drop --vectorize (each trial is then its own jmeta train run)")
    keys = list(dict.fromkeys(k for t in trials for k in t))
    bad = [k for k in keys if k not in VECTOR_KEYS]
    if bad:
        raise ConfigError(f"--vectorize can sweep only {sorted(VECTOR_KEYS)} (they do not change the compiled "
                          f"program); {bad} need separate runs (drop --vectorize)")
    if "algorithm.inner_lr" in keys and (base.algorithm.get("learn_lr") is not None
                                         or base.algorithm.name in ("metasgd", "mamlpp")):
        raise ConfigError("--vectorize cannot sweep algorithm.inner_lr with learned inner rates (algorithm.learn_lr "
                          "set, or metasgd/mamlpp, which always learn them; the rates are initialised from it); "
                          "drop --vectorize")
    if "algorithm.inner_lr" in keys and base.algorithm.name not in ("maml", "fomaml", "anil", "metasgd",
                                                                     "mamlpp", "reptile", "imaml"):
        raise ConfigError(f"--vectorize: algorithm {base.algorithm.name!r} has no inner_lr to sweep")
    t = base.train
    if "train.meta_lr" in keys and (t.meta_optimizer not in ("adam", "sgd") or t.lr_boundaries or
                                    t.lr_decay_every or t.lr_cosine or t.weight_decay or t.grad_clip):
        raise ConfigError("--vectorize can sweep train.meta_lr only with train.meta_optimizer 'adam' or 'sgd', "
                          "no schedule, no weight decay and no train.grad_clip; drop --vectorize")
    if "train.seed" in keys and base.task.family != "sinusoid":
        raise ConfigError("--vectorize can sweep train.seed only on the sinusoid family (image models are "
                          "initialised from the seed); drop --vectorize")


def run_vectorized(base: Config, trials: list[dict], out_dir, *, progress: bool = True, tensorboard: bool = True,
                   metric: str | None = None, data_dir=None, log=print) -> dict:
    """:func:`_run_vectorized` with the sweep folder locked, and each trial folder from when it is written
    (:mod:`jmeta.run.lock`)."""
    import contextlib

    from jmeta.run.lock import RunLock

    with contextlib.ExitStack() as locks:
        locks.enter_context(RunLock(out_dir, "jmeta sweep --vectorize"))
        return _run_vectorized(base, trials, out_dir, progress=progress, tensorboard=tensorboard, metric=metric,
                               data_dir=data_dir, log=log, locks=locks)


def _run_vectorized(base: Config, trials: list[dict], out_dir, *, progress: bool = True, tensorboard: bool = True,
                    metric: str | None = None, data_dir=None, log=print, locks=None) -> dict:
    """Trains all trials in one vmapped program, then evaluates each into ``OUT/trial_NNN``.

    Each trial folder is a complete run (``config.json``, ``metrics.jsonl``,
    ``eval.json``, a checkpoint) equal, up to float32 rounding, to what
    :func:`run` would produce. Returns what :func:`run` returns.

    Re-running a finished sweep reuses its trial folders (each holds this
    trial's final evaluation, or a run that diverged in the shared program);
    the trials are trained together only if no trial folder holds a run yet.
    Anything else (an unfinished trial, a run of another config, a mix of
    finished and new trials) is refused before anything is written: the trials
    cannot be trained partly, and :func:`run` can resume the unfinished ones.

    Raises:
      ConfigError: a trial varies a key that cannot be vectorised (see
        :data:`VECTOR_KEYS`), any override is invalid, ``metric`` is not one
        of :func:`eval_metric_names`, or a trial folder holds anything but
        this sweep's finished trial while not all do (all checked before
        training).
    """
    import jax.numpy as jnp
    import numpy as np
    import optax

    from jmeta.run.experiment import build
    from jmeta.train import vectorized as VS
    from jmeta.run.checkpoint import Checkpointer
    from jmeta.train.determinism import nondeterminism_warning
    from jmeta.run.lock import RunLock
    from jmeta.run.logs import MetricsLog, Progress, atomic_write_json
    from jmeta.train.loop import TrainLoop
    from jmeta.run.runner import evaluate_run, run_keys

    out = pathlib.Path(out_dir)
    cfgs = [trial_config(base, t, i) for i, t in enumerate(trials)]
    _check_vectorizable(base, trials)
    _check_metric(metric, cfgs)
    keys = list(dict.fromkeys(k for t in trials for k in t))
    n = len(cfgs)
    run_dirs = [out / f"trial_{i:03d}" for i in range(n)]
    states = [trial_folder_state(d, c) for d, c in zip(run_dirs, cfgs)]
    _refuse_others(states, run_dirs, trials)
    for i, (state, why) in enumerate(states):
        if state == "resume" and _diverged_vectorized(run_dirs[i], cfgs[i]):
            states[i] = ("diverged", "")
    if all(state in ("done", "diverged") for state, _ in states):
        return _reuse_vectorized(trials, run_dirs, states, keys, metric, out, log)
    pending = [i for i, (state, _) in enumerate(states) if state != "new"]
    if pending:
        unfinished = [i for i in pending if states[i][0] == "resume"]
        if unfinished:
            i, why = unfinished[0], states[unfinished[0]][1]
        else:
            i, new = pending[0], next(j for j, (state, _) in enumerate(states) if state == "new")
            why = f"holds this sweep's finished trial {i} while {run_dirs[new]} holds none"
        raise ConfigError(f"--vectorize trains all trials together, but the trial folder {run_dirs[i]} {why}; "
                          f"run this sweep without --vectorize to resume or train the missing trials one by one, "
                          f"or give another --out (nothing was trained or overwritten)")
    warning = nondeterminism_warning(base.train.deterministic)
    if warning:
        warnings.warn(warning, stacklevel=2)
    out.mkdir(parents=True, exist_ok=True)
    exp = build(cfgs[0], data_dir=data_dir)
    tcfg = cfgs[0].train
    hp = {}
    if "algorithm.inner_lr" in keys:
        hp["inner_lr"] = jnp.asarray([c.algorithm.inner_lr for c in cfgs], jnp.float32)
    opt = exp.meta_optimizer
    if "train.meta_lr" in keys:
        maker = optax.adam if tcfg.meta_optimizer == "adam" else optax.sgd
        opt = optax.inject_hyperparams(maker)(learning_rate=tcfg.meta_lr)
        hp["meta_lr"] = jnp.asarray([c.train.meta_lr for c in cfgs], jnp.float32)
    splits = [run_keys(c.train.seed) for c in cfgs]  # (train, eval, init), as the runner
    state = VS.init_sweep(exp.algorithm, exp.model.params, exp.model.state, opt, hp, key=splits[0][2])
    state = state._replace(key=jnp.stack([s[0] for s in splits]))
    step = VS.make_sweep_step(exp.algorithm, exp.train_sample, opt, meta_batch_size=tcfg.meta_batch_size,
                              task_parallel=exp.task_parallel)
    logs = []
    for cfg, d in zip(cfgs, run_dirs):  # every folder is "new": nothing of a run is overwritten
        locks.enter_context(RunLock(d, "jmeta sweep --vectorize"))  # creates d
        atomic_write_json(d / "config.json", cfg.to_dict())
        sinks = []
        if tensorboard:
            from jmeta.run.tensorboard import TensorBoardSink

            sinks.append(TensorBoardSink(d))
        logs.append(MetricsLog(d / "metrics.jsonl", sinks))
    log(f"jmeta sweep: {n} trials vectorised in one program ({', '.join(keys)}), {tcfg.steps} meta-steps")
    bar = Progress(tcfg.steps, desc=f"{base.name} sweep x{n}", enabled=progress)
    t0 = time.perf_counter()
    finite = np.ones(n, bool)

    def advance(state, _, k):  # k sweep steps; each trial's metrics averaged as the runner logs them
        nonlocal finite
        state, hist = VS.run_sweep(step, state, k, exp.train_data)
        finite &= np.all(np.isfinite(hist["loss"]), axis=0)  # a trial diverges on its own: no NaN stop
        return state, {name: np.mean(v, axis=0) for name, v in hist.items()}, None, None

    class PerTrial:  # one record of [n] values -> one record per trial folder
        def write(self, s, rec):
            for i, lg in enumerate(logs):
                lg.write(s, {name: v if np.ndim(v) == 0 else float(v[i]) for name, v in rec.items()})

    try:
        state = TrainLoop(advance, total=tcfg.steps, log_every=tcfg.log_every, sinks=[PerTrial()],
                          progress=bar).run(state)
    finally:
        bar.close()
        for lg in logs:
            lg.close()
    wall = time.perf_counter() - t0
    rows = []
    for i, (t, cfg, d) in enumerate(zip(trials, cfgs, run_dirs)):
        row = {"trial": i, **t, "run_dir": str(d), "wall_time_s": round(wall / n, 2)}
        ts = VS.select(state, i)
        if "train.meta_lr" in keys:  # back to the plain optimizer's state layout for a loadable checkpoint
            ts = ts._replace(opt_state=ts.opt_state.inner_state)
        ck = Checkpointer(d / "checkpoints", keep=cfg.train.keep_checkpoints)
        try:
            ck.save(int(ts.step), ts)
        finally:
            ck.close()
        row["final_train_loss"] = _final_train_loss(d)
        if not finite[i]:
            row.update(status="nonfinite", error="non-finite loss during the vectorised sweep")
        else:
            exp_i = _trial_experiment(exp, cfg) if i else exp
            ev = evaluate_run(cfg, exp_i, ts, splits[i][1], d, progress=False, warn_nondeterminism=False)
            row["status"] = "ok"
            row.update(_eval_columns(ev))
        rows.append(row)
    return _finish(rows, keys, metric, out, log)


def _trial_experiment(exp, cfg: Config):
    """The first trial's experiment with ``cfg``'s algorithms: a vectorised trial differs from the first only in
    :data:`VECTOR_KEYS` (the inner rate is the algorithms'; the seed and the meta learning rate are not part of
    the evaluation), so its model, samplers and device data are reused, not built (and the images loaded) again."""
    import dataclasses

    from jmeta.run.experiment import build_algorithms

    loss = "mse" if exp.task_kind == "regression" else "cross_entropy"
    algo, eval_algo = build_algorithms(cfg, exp.model.apply, loss=loss, conv_impl=exp.conv_impl)
    return dataclasses.replace(exp, algorithm=algo, eval_algorithm=eval_algo)


def _diverged_vectorized(run_dir: pathlib.Path, cfg: Config) -> bool:
    """A trial of a finished vectorised sweep whose loss turned non-finite: no ``eval.json``, and the
    ``metrics.jsonl`` record of the final step holds a non-finite loss."""
    from jmeta.run.logs import MetricsLog

    try:
        recs = MetricsLog.read(run_dir / "metrics.jsonl")
    except (OSError, ValueError):
        return False
    last = recs[-1] if recs and isinstance(recs[-1], dict) else {}
    try:  # MetricsLog writes a non-finite value as the string "nan"/"inf"
        loss = float(last.get("loss"))
    except (TypeError, ValueError):
        return False
    return last.get("step") == cfg.train.steps and not math.isfinite(loss)


def _reuse_vectorized(trials, run_dirs, states, keys, metric, out, log) -> dict:
    rows = []
    for i, (t, d, (state, _)) in enumerate(zip(trials, run_dirs, states)):
        desc = ", ".join(f"{k}={v}" for k, v in t.items())
        log(f"jmeta sweep: trial {i + 1}/{len(trials)} ({desc}): done before, reusing {d}")
        row = {"trial": i, **t, "run_dir": str(d), "wall_time_s": None, "final_train_loss": _final_train_loss(d)}
        if state == "diverged":
            row.update(status="nonfinite", error="non-finite loss during the vectorised sweep")
        else:
            row["status"] = "ok"
            row.update(_eval_columns(_read_eval(d / "eval.json")))
        rows.append(row)
    return _finish(rows, keys, metric, out, log)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _finish(rows, keys, metric, out, log) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    metrics = [k for k in (ok[0] if ok else {}) if " after " in k and not k.endswith(" ci95")]
    if metric is None and ok:
        metric = default_metric({k: None for k in metrics})
    elif metric is not None and ok and metric not in metrics:
        raise ConfigError(f"--metric {metric!r} is not an evaluation metric of these runs; valid: {metrics}")
    best = None
    # only finite values are ranked: a diverged trial (NaN or inf mean) is never the best
    ranked = [r for r in ok if metric and _finite(r.get(metric))]
    if ranked:
        better = max if "accuracy" in metric else min
        best = better(ranked, key=lambda r: r[metric])["trial"]
    result = {"metric": metric, "best": best, "keys": keys, "rows": rows}
    write_results(result, out)
    if ok and metric:
        try:
            plot(result, out / "sweep.png")
        except ImportError as e:
            log(f"jmeta sweep: plot skipped ({e})")
    return result


def write_results(result: dict, out_dir) -> None:
    """``results.json`` and ``results.csv`` (one row per trial)."""
    from jmeta.run.logs import atomic_write_json

    out = pathlib.Path(out_dir)
    atomic_write_json(out / "results.json", result)
    columns = list(dict.fromkeys(c for r in result["rows"] for c in r))
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in result["rows"]:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, tuple, dict)) else v for k, v in r.items()})


def plot(result: dict, path) -> pathlib.Path:
    """The metric (mean, 95% CI) against each swept key; failed trials are left out."""
    from jmeta.run.plots import pyplot, save_figure

    plt = pyplot()
    metric, keys = result["metric"], result["keys"]
    rows = [r for r in result["rows"] if r["status"] == "ok" and isinstance(r.get(metric), (int, float))]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, k in zip(axes[0], keys):
        pts = [(r[k], r[metric], r.get(f"{metric} ci95") or 0.0) for r in rows
               if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)]
        if pts:
            pts.sort()
            x, y, e = zip(*pts)
            ax.errorbar(x, y, yerr=[v if math.isfinite(v) else 0.0 for v in e], fmt="o", capsize=3, ms=4)
            if min(x) > 0 and max(x) / min(x) >= 10:
                ax.set_xscale("log")
            ticks = sorted(set(x))
            if len(ticks) <= 8:  # label the swept values themselves
                from matplotlib.ticker import NullFormatter

                ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
                ax.xaxis.set_minor_formatter(NullFormatter())
        else:  # categorical values
            cats = [str(r.get(k)) for r in rows]
            ax.plot(cats, [r[metric] for r in rows], "o")
        ax.set_xlabel(k)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    if result.get("best") is not None:
        fig.suptitle(f"best: trial {result['best']}")
    fig.tight_layout()
    return save_figure(fig, plt, path)


__all__ = ["default_metric", "eval_metric_names", "make_trials", "parse_grid", "parse_range", "plot", "run",
           "run_vectorized", "trial_config", "trial_folder_state", "write_results"]
