"""The ``jmeta`` command line (also ``python -m jmeta``).

::

    jmeta train [--config NAME_OR_PATH] [--algorithm NAME] [--steps N] [--seed S] [--out DIR]
                [--set section.key=value ...] [--resume RUN_DIR] [--no-progress]
    jmeta eval RUN_DIR [--num-tasks N] [--steps N]
    jmeta plot RUN_DIR
    jmeta presets

With no arguments ``jmeta train`` meta-trains MAML on sinusoid regression
with the paper's settings (70,000 meta-steps) into ``runs/<preset>-<time>``.
Every command has ``--help`` and exits non-zero with a one-line error on a
bad argument.
"""

from __future__ import annotations

import argparse
import json
import pathlib
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
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jmeta", description="Meta-learning in JAX.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    t = sub.add_parser("train", help="meta-train (default: MAML on sinusoid, the paper's settings)",
                       description="Meta-train and evaluate; writes a run folder.")
    _train_args(t)
    e = sub.add_parser("eval", help="evaluate a run's last checkpoint on held-out tasks")
    e.add_argument("run_dir")
    e.add_argument("--num-tasks", type=int, default=None)
    e.add_argument("--steps", type=int, default=None, help="adaptation steps at test time")
    e.add_argument("--data-dir", default=None)
    pl = sub.add_parser("plot", help="(re)draw a run folder's PNG plots")
    pl.add_argument("run_dir")
    sub.add_parser("presets", help="list the named configs")
    return parser


def _resolve_config(args):
    from jmeta import config as C

    if args.resume:
        run = pathlib.Path(args.resume)
        if not (run / "config.json").is_file():
            raise CLIError(f"--resume {run}: no config.json there (not a jmeta run folder)")
        cfg = C.load(str(run))
        if args.config or args.algorithm or args.set or args.seed is not None:
            raise CLIError("--resume continues a run as configured; only --steps may be given with it")
        if args.steps is not None:
            cfg = C.apply_override(cfg, f"train.steps={args.steps}")
        return cfg, run
    cfg = C.load(args.config)
    if args.algorithm:
        cfg = C.apply_override(cfg, f"algorithm.name={json.dumps(args.algorithm)}")
    if args.steps is not None:
        cfg = C.apply_override(cfg, f"train.steps={args.steps}")
    if args.seed is not None:
        cfg = C.apply_override(cfg, f"train.seed={args.seed}")
    for s in args.set:
        cfg = C.apply_override(cfg, s)
    out = pathlib.Path(args.out) if args.out else pathlib.Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return cfg, out


def _print_eval(ev: dict) -> None:
    for name, v in ev["summary"].items():
        print(f"  {name}: {v['mean']:.4f} ± {v['ci95']:.4f}")


def cmd_train(args) -> int:
    from jmeta.train.runner import train

    cfg, out = _resolve_config(args)
    print(f"jmeta: {'resuming' if args.resume else 'training'} {cfg.name} "
          f"({cfg.algorithm.name}, {cfg.train.steps} meta-steps) -> {out}", flush=True)
    summary = train(cfg, out, resume=bool(args.resume), progress=not args.no_progress, data_dir=args.data_dir,
                    evaluate_at_end=not args.no_eval)
    print(f"jmeta: {summary['steps']} meta-steps, {summary['wall_time_s']} s; run folder {out}")
    if "eval" in summary:
        print(f"jmeta: evaluation over {cfg.eval.num_tasks} held-out tasks (mean ± 95% CI):")
        _print_eval(summary["eval"])
    return 0


def cmd_eval(args) -> int:
    import jax

    from jmeta import config as C
    from jmeta.experiment import build
    from jmeta.train.checkpoint import Checkpointer
    from jmeta.train.runner import evaluate_run
    from jmeta.train.step import init_train_state

    run = pathlib.Path(args.run_dir)
    if not (run / "config.json").is_file():
        raise CLIError(f"{run}: no config.json there (not a jmeta run folder)")
    cfg = C.load(str(run))
    if args.num_tasks is not None:
        cfg = C.apply_override(cfg, f"eval.num_tasks={args.num_tasks}")
    if args.steps is not None:
        cfg = C.apply_override(cfg, f"eval.steps={args.steps}")
        cfg = C.apply_override(cfg, f"eval.report_steps={json.dumps([s for s in cfg.eval.report_steps if s <= args.steps] or [args.steps])}")
    exp = build(cfg, data_dir=args.data_dir)
    key = jax.random.key(cfg.train.seed)
    _, k_eval, k_init = jax.random.split(key, 3)
    template = init_train_state(exp.algorithm, exp.model.params, exp.model.state, exp.meta_optimizer, key=k_init)
    ck = Checkpointer(run / "checkpoints", keep=cfg.train.keep_checkpoints)
    state = ck.restore(None, template)
    ck.close()
    ev = evaluate_run(cfg, exp, state, k_eval, run)
    print(f"jmeta: {run} at meta-step {ev['step']}, {cfg.eval.num_tasks} held-out tasks (mean ± 95% CI):")
    _print_eval(ev)
    return 0


def cmd_plot(args) -> int:
    from jmeta.plots import plot_run

    for p in plot_run(args.run_dir):
        print(p)
    return 0


def cmd_presets(args) -> int:
    from jmeta.config import PRESETS

    for name in sorted(PRESETS):
        doc = (PRESETS[name].__doc__ or "").strip().splitlines()
        print(f"{name:32s} {doc[0] if doc else ''}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        if not argv:
            argv = ["train"]
        args = parser.parse_args(argv)
        if args.command is None:
            args = parser.parse_args(["train", *argv])
        return {"train": cmd_train, "eval": cmd_eval, "plot": cmd_plot, "presets": cmd_presets}[args.command](args)
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # user-facing errors as one line; bugs keep their traceback
        from jmeta.config import ConfigError
        from jmeta.train.checkpoint import CheckpointError
        from jmeta.train.runner import NonFiniteError

        known = (ConfigError, CheckpointError, NonFiniteError, FileNotFoundError, MemoryError)
        if isinstance(e, known):
            print(f"error: {e}", file=sys.stderr)
            return 1 if isinstance(e, (NonFiniteError, MemoryError)) else 2
        raise


if __name__ == "__main__":
    sys.exit(main())
