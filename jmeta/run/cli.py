"""The ``jmeta`` command line (also ``python -m jmeta``).

::

    jmeta train [--config NAME_OR_PATH] [--algorithm NAME] [--steps N] [--seed S] [--out DIR]
                [--set section.key=value ...] [--resume RUN_DIR] [--no-progress] [--no-eval] [--no-plots]
                [--no-tensorboard] [--allow-pickle] [--wandb [--wandb-project P] [--wandb-mode online|offline]]
    jmeta eval RUN_DIR [--num-tasks N] [--steps N] [--no-progress]
    jmeta export RUN_DIR [--out DIR] [--steps N] [--checkpoint STEP] [--platforms cpu,cuda,tpu|native]
    jmeta sweep [--config NAME_OR_PATH] --grid section.key=v1,v2,... [--random N --range section.key=lo:hi[:log]]
                [--steps N] [--set ...] --out DIR [--metric NAME] [--sweep-seed S]
    jmeta plot RUN_DIR
    jmeta presets

With no arguments ``jmeta train`` meta-trains MAML on sinusoid regression
with the paper's settings (70,000 meta-steps) into ``runs/<preset>-<time>``.
A run folder gets TensorBoard event files by default (``tensorboard --logdir
runs``; ``--no-tensorboard`` to skip them; no TensorFlow needed).

Exit status: 0 on success; 1 when training stopped on a non-finite loss or
ran out of memory; 2 on a user error (bad argument, config key or value,
missing run folder or checkpoint), a run folder locked by another process,
or an output that cannot be written (disk full, read-only, no permission);
128 + the signal on SIGINT/SIGTERM (130, 143), after a final checkpoint.
Every command has ``--help``; errors are printed as one line starting with
``error:``, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import sys
import time


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise CLIError(f"{self.prog}: {message}")


def _train_args(p):
    p.add_argument("--config", default=None, help="preset name or config file/run folder (default: sinusoid-maml)")
    p.add_argument("--algorithm", default=None, help="override algorithm.name (maml, fomaml, metasgd, anil, reptile, mamlpp, ...)")
    p.add_argument("--steps", type=int, default=None, help="meta-steps (override train.steps)")
    p.add_argument("--seed", type=int, default=None, help="seed (override train.seed)")
    p.add_argument("--out", default=None, help="run folder (default: runs/<name>-<date>-<time>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set algorithm.inner_lr=0.02 (repeatable)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--data-dir", default=None, help="dataset root (default: $JMETA_DATA_DIR)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow a mini-ImageNet pickle (mini-imagenet-cache-*.pkl) as the data source; unpickling "
                        "runs arbitrary code, so only for files you trust (sets task.allow_pickle=true)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-tensorboard", action="store_true",
                   help="do not write TensorBoard event files into the run folder (written by default)")
    p.add_argument("--wandb", action="store_true", help="also log to Weights & Biases (needs `pip install wandb`)")
    p.add_argument("--wandb-project", default="jmeta", help="W&B project (default: jmeta)")
    p.add_argument("--wandb-mode", default=None, choices=("online", "offline", "disabled"),
                   help="W&B mode (default: $WANDB_MODE or online; offline needs no network)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jmeta", description="Meta-learning in JAX.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    t = sub.add_parser("train", help="meta-train (default: MAML on sinusoid, the paper's settings)",
                       description="Meta-train and evaluate; writes a run folder.")
    _train_args(t)
    e = sub.add_parser("eval", help="evaluate a run's last checkpoint on held-out tasks",
                       description="Evaluates RUN_DIR's last checkpoint. With the run's own settings the result "
                                   "rewrites RUN_DIR/eval.json; with another --num-tasks or --steps it goes to "
                                   "RUN_DIR/eval-<N>tasks-<S>steps.json, leaving eval.json as it was.")
    e.add_argument("run_dir")
    e.add_argument("--num-tasks", type=int, default=None)
    e.add_argument("--steps", type=int, default=None, help="adaptation steps at test time")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    x = sub.add_parser("export", help="export a run's adapt-then-predict function as a standalone JAX program",
                       description="Writes predict(support_x, support_y, query_x) of the run's last checkpoint "
                                   "(jax.export, symbolic numbers of examples), its parameters (npz) and a "
                                   "loader (load.py) that needs only jax, numpy and flatbuffers (no jmeta).")
    x.add_argument("run_dir")
    x.add_argument("--out", default=None, help="artifact folder (default: RUN_DIR/export)")
    x.add_argument("--steps", type=int, default=None, help="adaptation steps (default: the run's eval.steps)")
    x.add_argument("--checkpoint", type=int, default=None, metavar="STEP", help="checkpoint step (default: latest)")
    x.add_argument("--platforms", default="cpu,cuda,tpu",
                   help="comma-separated platforms to lower for, or 'native' (default: cpu,cuda,tpu)")
    x.add_argument("--data-dir", default=None)
    w = sub.add_parser("sweep", help="hyperparameter search: grid or random, one run per trial",
                       description="Runs one training run per trial into OUT/trial_NNN and writes "
                                   "OUT/results.csv, OUT/results.json and OUT/sweep.png.")
    w.add_argument("--config", default=None, help="preset name or config file (default: sinusoid-maml)")
    w.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="values of one config key (repeatable; the trials are their product)")
    w.add_argument("--random", type=int, default=None, metavar="N", help="draw N random trials instead")
    w.add_argument("--range", action="append", default=[], metavar="KEY=LO:HI[:log]",
                   help="a range to draw from with --random (repeatable)")
    w.add_argument("--steps", type=int, default=None, help="meta-steps of each trial (override train.steps)")
    w.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fixed override for all trials")
    w.add_argument("--out", required=True, help="sweep folder")
    w.add_argument("--metric", default=None, help="evaluation metric to rank and plot (default: see docs)")
    w.add_argument("--sweep-seed", type=int, default=0, help="seed of the random draws (default 0)")
    w.add_argument("--vectorize", action="store_true",
                   help="train all trials in one vmapped program (only algorithm.inner_lr, train.meta_lr, "
                        "train.seed may vary)")
    w.add_argument("--no-progress", action="store_true", help="no progress bars")
    w.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard files in the trial folders")
    w.add_argument("--data-dir", default=None)
    pl = sub.add_parser("plot", help="(re)draw a run folder's PNG plots")
    pl.add_argument("run_dir")
    sub.add_parser("presets", help="list the named configs")
    return parser


def _resolve_config(args):
    from jmeta.run import config as C

    if args.resume:
        run = pathlib.Path(args.resume)
        if not (run / "config.json").is_file():
            raise CLIError(f"--resume {run}: no config.json there (not a jmeta run folder)")
        cfg = C.load(str(run))
        if args.config or args.algorithm or args.set or args.seed is not None or args.allow_pickle:
            raise CLIError("--resume continues a run as configured; only --steps may be given with it")
        if args.out and pathlib.Path(args.out).resolve() != run.resolve():
            raise CLIError(f"--resume continues the run in its own folder {run}; drop --out {args.out}")
        if args.steps is not None:
            cfg = C.apply_override(cfg, f"train.steps={args.steps}")
        return cfg, run
    cfg = C.load(args.config)
    overrides = []
    if args.algorithm:
        overrides.append(f"algorithm.name={json.dumps(args.algorithm)}")
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    if args.allow_pickle:
        overrides.append("task.allow_pickle=true")
    cfg = C.apply_overrides(cfg, [*overrides, *args.set])
    out = pathlib.Path(args.out) if args.out else _new_run_dir(pathlib.Path("runs"), cfg.name)
    return cfg, out


def _new_run_dir(root: pathlib.Path, name: str) -> pathlib.Path:
    """Creates and returns ``root/NAME-DATE-TIME`` (``-2``, ``-3``, ... when a run started in the same second
    holds it: ``mkdir`` claims a folder atomically, so two processes never share one)."""
    base = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        out = root / (base if i == 1 else f"{base}-{i}")
        try:
            out.mkdir()
            return out
        except FileExistsError:
            continue
    raise CLIError(f"no free run folder {root / base}-N; give --out")


def _determinism(cfg) -> None:
    """Sets XLA:GPU's deterministic mode before JAX starts, as ``cfg.train.deterministic`` asks."""
    if not cfg.train.deterministic:
        return
    from jmeta.train.determinism import enable_determinism

    try:
        enable_determinism()
    except (RuntimeError, ValueError) as e:
        raise CLIError(str(e)) from None


def _print_eval(ev: dict) -> None:
    for name, v in ev["summary"].items():
        extra = ""
        if v.get("nonfinite"):
            extra = f" ({v['nonfinite']} task(s) diverged to NaN/inf; median {v['median']:.4f})"
        print(f"  {name}: {v['mean']:.4f} ± {v['ci95']:.4f}{extra}")


def cmd_train(args) -> int:
    from jmeta.run.runner import train

    cfg, out = _resolve_config(args)
    _determinism(cfg)
    print(f"jmeta: {'resuming' if args.resume else 'training'} {cfg.name} "
          f"({cfg.algorithm.name}, {cfg.train.steps} meta-steps) -> {out}", flush=True)
    sinks = []
    if args.wandb:
        from jmeta.run.wandb_logger import WandbSink

        try:
            sinks.append(WandbSink(out, cfg.to_dict(), project=args.wandb_project, name=pathlib.Path(out).name,
                                   mode=args.wandb_mode))
        except ImportError as e:
            raise CLIError(str(e)) from None

    def on_eval(ev):  # printed as soon as eval.json is written, before the plots
        print(f"jmeta: evaluation over {cfg.eval.num_tasks} held-out tasks (mean ± 95% CI):")
        _print_eval(ev)
        sys.stdout.flush()

    try:
        summary = train(cfg, out, resume=bool(args.resume), progress=not args.no_progress, data_dir=args.data_dir,
                        evaluate_at_end=not args.no_eval, sinks=sinks, tensorboard=not args.no_tensorboard,
                        plots=not args.no_plots, on_eval=on_eval)
    finally:
        for s in sinks:
            s.close()
    print(f"jmeta: {summary['steps']} meta-steps, {summary['wall_time_s']} s; run folder {out}")
    return 0


def _run_folder(path) -> pathlib.Path:
    """``path`` as a run folder (one holding ``config.json``), else a :class:`CLIError`."""
    run = pathlib.Path(path)
    if not (run / "config.json").is_file():
        raise CLIError(f"{run}: no config.json there (not a jmeta run folder)")
    return run


def cmd_eval(args) -> int:
    from jmeta.run.interrupt import StopSignals
    from jmeta.run.lock import RunLock

    run = _run_folder(args.run_dir)
    # Locked (no run writes it meanwhile) and found writable before the long evaluation; SIGINT and SIGTERM
    # stop it alike, leaving the files as they were.
    with RunLock(run, "jmeta eval"), StopSignals("interrupted ({signal}) while evaluating; nothing was written"):
        return _eval_locked(args, run)


def _eval_locked(args, run: pathlib.Path) -> int:
    from jmeta.run import config as C
    from jmeta.run.experiment import load_run
    from jmeta.run.logs import atomic_write_json
    from jmeta.run.runner import EVAL_JSON, evaluate_run, run_keys

    cfg = C.load(str(run))
    _determinism(cfg)
    own = cfg.eval
    if args.num_tasks is not None:
        cfg = C.apply_override(cfg, f"eval.num_tasks={args.num_tasks}")
    if args.steps is not None:
        if args.steps < 0:
            raise CLIError(f"--steps must be >= 0, got {args.steps}")
        report = sorted({*(s for s in cfg.eval.report_steps if s <= args.steps), args.steps})
        cfg = C.apply_overrides(cfg, [f"eval.steps={args.steps}", f"eval.report_steps={json.dumps(report)}"])
    cfg, exp, state = load_run(run, cfg=cfg, data_dir=args.data_dir)
    _, k_eval, _ = run_keys(cfg.train.seed)
    e = cfg.eval
    # The run's own evaluation settings rewrite its eval.json (the same numbers, or the first evaluation of a
    # --no-eval run); other settings go beside it, so a quick look never replaces the run's result.
    same = (e.num_tasks, e.steps, tuple(e.report_steps)) == (own.num_tasks, own.steps, tuple(own.report_steps))
    name = EVAL_JSON if same else f"eval-{e.num_tasks}tasks-{e.steps}steps.json"
    ev = evaluate_run(cfg, exp, state, k_eval, None, progress=not args.no_progress)
    print(f"jmeta: {run} at meta-step {ev['step']}, {cfg.eval.num_tasks} held-out tasks (mean ± 95% CI):")
    _print_eval(ev)
    sys.stdout.flush()  # the numbers are shown even if the file cannot be written
    atomic_write_json(run / name, ev)
    print(f"jmeta: wrote {run / name}")
    return 0


def cmd_export(args) -> int:
    from jmeta.run.export import export_run

    run = _run_folder(args.run_dir)
    if args.steps is not None and args.steps < 0:
        raise CLIError(f"--steps must be >= 0, got {args.steps}")
    plats = None if args.platforms == "native" else tuple(p.strip() for p in args.platforms.split(",") if p.strip())
    valid = ("cpu", "cuda", "rocm", "tpu")
    if plats is not None and (not plats or any(p not in valid for p in plats)):
        raise CLIError(f"--platforms must be 'native' or a comma-separated list of {list(valid)}, got {args.platforms!r}")
    from jmeta.run.interrupt import StopSignals

    with StopSignals("interrupted ({signal}) while exporting; an earlier export there is left as it was"):
        out = export_run(run, args.out, num_steps=args.steps, step=args.checkpoint, platforms=plats,
                         data_dir=args.data_dir)
    meta = json.loads((out / "export.json").read_text())
    print(f"jmeta: exported {meta['algorithm']} (checkpoint step {meta['checkpoint_step']}, "
          f"{meta['adaptation_steps']} adaptation steps, platforms {meta['platforms']}) -> {out}")
    print(f"jmeta: use it without jmeta (pip install jax numpy flatbuffers): python "
          f"{shlex.quote(str(out / 'load.py'))} {shlex.quote(str(out))} inputs.npz outputs.npy")
    return 0


def cmd_sweep(args) -> int:
    from jmeta.run import config as C
    from jmeta.run import search as S

    cfg = C.load(args.config)
    cfg = C.apply_overrides(cfg, ([f"train.steps={args.steps}"] if args.steps is not None else []) + list(args.set))
    _determinism(cfg)
    grids = [S.parse_grid(g) for g in args.grid]
    ranges = [S.parse_range(r) for r in args.range]
    trials = S.make_trials(grids, ranges, random=args.random, seed=args.sweep_seed)
    for i, t in enumerate(trials):  # every override checked before any trial runs
        S.trial_config(cfg, t, i)
    print(f"jmeta: sweep of {len(trials)} trial(s) of {cfg.name} ({cfg.train.steps} meta-steps each) -> {args.out}",
          flush=True)
    runner = S.run_vectorized if args.vectorize else S.run
    if args.vectorize:
        S._check_vectorizable(cfg, trials)
    res = runner(cfg, trials, args.out, progress=not args.no_progress, tensorboard=not args.no_tensorboard,
                 metric=args.metric, data_dir=args.data_dir)
    out = pathlib.Path(args.out)
    print(f"jmeta: results in {out / 'results.csv'}, {out / 'results.json'}, {out / 'sweep.png'}")
    m = res["metric"]
    for r in res["rows"]:
        val = f"{r[m]:.4f}" if m and isinstance(r.get(m), (int, float)) else r["status"]
        print(f"  trial {r['trial']:3d} " + " ".join(f"{k}={r[k]}" for k in res["keys"]) + f"  {m}: {val}")
    if res["best"] is not None:
        print(f"jmeta: best ({m}): trial {res['best']}")
    return 0


def cmd_plot(args) -> int:
    from jmeta.run.plots import plot_run

    for p in plot_run(args.run_dir):
        print(p)
    return 0


def cmd_presets(args) -> int:
    from jmeta.run.config import PRESETS

    for name in sorted(PRESETS):
        doc = " ".join(PRESETS[name].doc.strip().split("\n\n")[0].split())  # the first paragraph, one line
        print(f"{name:34s} {doc if len(doc) <= 100 else doc[:99] + '…'}")
    return 0


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split("\n")).strip()


def _one_line_checkpoint_warnings() -> None:
    """Shows jmeta's checkpoint warnings (a checkpoint skipped or used unverified) as one ``warning:`` line."""
    import warnings

    if getattr(warnings.formatwarning, "_jmeta", False):
        return
    default = warnings.formatwarning

    def fmt(message, category, filename, lineno, line=None):
        from jmeta.run.checkpoint import CheckpointWarning

        if issubclass(category, CheckpointWarning):
            return f"warning: {_one_line(message)}\n"
        return default(message, category, filename, lineno, line)

    fmt._jmeta = True
    warnings.formatwarning = fmt


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    _one_line_checkpoint_warnings()
    try:
        if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
            argv = ["train", *argv]  # `jmeta --steps 100` = `jmeta train --steps 100`
        args = parser.parse_args(argv)
        commands = {"train": cmd_train, "eval": cmd_eval, "export": cmd_export, "sweep": cmd_sweep,
                    "plot": cmd_plot, "presets": cmd_presets}
        return commands[args.command](args)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except CLIError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        from jmeta.run.interrupt import Interrupted

        if isinstance(e, Interrupted):  # SIGINT/SIGTERM in a run: what was saved, and how to resume
            print(f"jmeta: {_one_line(e)}", file=sys.stderr)
            return 128 + e.signum
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # user-facing errors as one line; bugs keep their traceback
        from jmeta._io import output_error_message
        from jmeta.run.config import ConfigError
        from jmeta.data.errors import DataError
        from jmeta.run.checkpoint import CheckpointError
        from jmeta.run.lock import RunLockedError
        from jmeta.run.runner import NonFiniteError

        disk = output_error_message(e)  # a full disk, a read-only folder: the path and the cause
        if disk is not None:
            print(f"error: {_one_line(disk)}", file=sys.stderr)
            return 2
        known = (ConfigError, CheckpointError, DataError, NonFiniteError, FileNotFoundError, FileExistsError,
                 NotADirectoryError, MemoryError, RunLockedError)
        if isinstance(e, known):
            print(f"error: {_one_line(e)}", file=sys.stderr)
            return 1 if isinstance(e, (NonFiniteError, MemoryError)) else 2
        raise


if __name__ == "__main__":
    sys.exit(main())
