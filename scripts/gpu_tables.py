"""The paper tables on one GPU in about ten minutes, and jmeta against PyTorch on the same GPU (issue 19).

One command for the GPU machine runs these stages in priority order, each with its own time budget inside a
global deadline, so that a run cut short still returns every stage that finished:

1. ``omniglot-5w1s-maml``: the full protocol, 60,000 meta-steps, 600 test episodes (paper 98.7 ± 0.4).
2. ``omniglot-5w1s-protonet`` (20,000 episodes; paper 98.8) and ``omniglot-20w1s-maml`` (60,000 steps;
   paper 95.8 ± 0.3): the full protocol if it fits its budget, else training is stopped at the budget and
   the last checkpoint is evaluated on the 600 test episodes (labelled "reduced" with the steps reached).
3. ``bench``: the Omniglot MAML meta-step (5-way 1-shot, Conv4-64, meta-batch 32, second order) of jmeta
   against a plain PyTorch loop (``torch.autograd.grad(create_graph=True)``), learn2learn and ``higher`` in
   one process (``benchmarks/omniglot_step.py``; the PyTorch peers run on the GPU too).
4. Time permitting: ``omniglot-5w1s-imaml`` (paper 99.16 ± 0.35) and ``miniimagenet-5w1s-protonet``
   (paper 49.42 ± 0.78; our training split has 100 of the 600 images per class, and the carried test split
   the first 200 of 600 per class: labelled).

Not in the default run (its own device call, about 5 minutes with the machine's start; it needs no ``.devdata``):
``rl-throughput`` (issue 18): nav2d MAML-TRPO meta-iterations (20 and 40 tasks x 20 episodes x horizon 100) and
rollout env-steps/s (up to 1000 x 100 episodes) of jmeta, the plain-JAX reference and the PyTorch MAML-RL,
interleaved in one process (``benchmarks/rl_throughput.py --torch``, torch on the GPU too; budget 240 s):

    run(command="bash scripts/gpu_tables.sh --stages rl-throughput", timeout_s=420)

Every stage runs the ordinary command line (``python -m jmeta train --config PRESET``, ``jmeta eval``),
nothing of its own. As a stage finishes it appends one line to ``OUT/summary.txt`` and writes
``OUT/NN-STAGE.tar.gz`` (its run folder without checkpoints, its log and ``stage.json``, the whole
record); a stage that fails writes a line saying so and the next stage still runs. ``OUT`` stays flat and
holds at most 8 files, what the device tool brings back.

Prepare the carried folder here, once (copies the Omniglot npz, mini-ImageNet's ``train.zip`` and a
``test.zip`` cut to the first 200 images per class, and the pure-Python code of ``higher`` and of
learn2learn's MAML; 48 MiB, with the 1 MiB tree under the tool's 64 MiB):

    python scripts/gpu_tables.py --prepare            # writes .devdata/ (ignored by git)

Rehearse every stage on the CPU with tiny step counts (a few minutes on 2 cores):

    PYTHONPATH=$PWD python scripts/gpu_tables.py --rehearse --out /tmp/gpu_tables_rehearsal

Then, with the device tool (one call, about 9.5 minutes; the tool sends the checkout the session was started
in, so this script and ``.devdata/`` must be there):

    run(command="bash scripts/gpu_tables.sh", carry=[".devdata"], timeout_s=600)

Budgets (seconds on the GPU, deadline 540 for all): 180 + 45 for the first stage (about 73 s of steps at the
1.21 ms per meta-step measured on an H200, plus start-up, compilation, checkpoints and evaluation), then
90 + 40, 40, 110 + 40, 80, 60 + 40, 60 + 60, each cut to what is left before the deadline; a stage given
under 20 s is skipped with a line saying so.

and unpack what came back into ``results/`` with ``python scripts/results_tables.py --import-gpu DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile

REPO = pathlib.Path(__file__).resolve().parents[1]
DEVDATA = REPO / ".devdata"
SHARED_DATA = REPO.parent / "shared" / "data"
MINI_TEST_PER_CLASS = 200


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of the GPU run.

    Attributes:
      name: short name, used in file names.
      preset: the ``jmeta`` preset a training stage runs (``None`` for the benchmark).
      budget_s: seconds the stage may run on the GPU (training; the benchmark's whole command).
      eval_s: seconds for ``jmeta eval`` of the last checkpoint when training was stopped at the budget.
      paper: the published number, as the paper states it.
      note: what differs from the paper's protocol, if anything.
      sets: extra ``--set`` overrides of the training command.
      eval_of: for an evaluation-only stage, the stage whose run it evaluates again (its last checkpoint,
        with ``sets`` applied to a copy of that run's config).
    """

    name: str
    preset: str | None
    budget_s: float
    eval_s: float = 0.0
    paper: str = ""
    note: str = ""
    sets: tuple = ()
    eval_of: str | None = None
    default: bool = True


STAGES = (
    Stage("omniglot-5w1s-maml", "omniglot-5w1s-maml", 180, 45, "98.7 ± 0.4 (Finn et al. 2017)"),
    Stage("omniglot-5w1s-protonet", "omniglot-5w1s-protonet", 90, 40, "98.8 (Snell et al. 2017)"),
    Stage("omniglot-5w1s-protonet-20way", "omniglot-5w1s-protonet", 40, 0, "96.0 (Snell et al. 2017, 20-way 1-shot)",
          note="the omniglot-5w1s-protonet run, tested 20-way", sets=("eval.n_way=20",),
          eval_of="omniglot-5w1s-protonet"),
    Stage("omniglot-20w1s-maml", "omniglot-20w1s-maml", 110, 40, "95.8 ± 0.3 (Finn et al. 2017)"),
    Stage("bench", None, 80, 0, "aim: 20x a PyTorch loop (issue 19)"),
    Stage("rl-throughput", None, 240, 0, "aim: 10x PyTorch MAML-RL's meta-iteration, 1M env-steps/s (issue 18)",
          default=False),
    Stage("omniglot-5w1s-imaml", "omniglot-5w1s-imaml", 60, 40, "99.16 ± 0.35 (Rajeswaran et al. 2019)"),
    Stage("miniimagenet-5w1s-protonet", "miniimagenet-5w1s-protonet", 60, 60, "49.42 ± 0.78 (Snell et al. 2017)",
          note=f"training split: 100 of 600 images per class; test split: the first {MINI_TEST_PER_CLASS} of "
               f"600 per class"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
# Run unless --stages says otherwise: 7 archives and summary.txt are the 8 files the device tool brings back, so
# rl-throughput (issue 18) is a call of its own: bash scripts/gpu_tables.sh --stages rl-throughput
DEFAULT_STAGES = tuple(s.name for s in STAGES if s.default)
# Rehearsal: a few meta-steps, a checkpoint at every step, two evaluation episodes.
REHEARSAL_SETS = ("train.log_every=1", "train.checkpoint_every=1", "eval.num_tasks=2", "eval.batch_size=2")
REHEARSAL_STEPS = 2
RUN_SETS = ("train.keep_checkpoints=1",)  # checkpoints every 2,000 steps (the presets'), only the last kept
MIN_STAGE_S = 20.0  # a stage that would get less is skipped (and says so)


def _child_env(data_dir: pathlib.Path | None, work: pathlib.Path, rehearse: bool) -> dict:
    env = dict(os.environ)
    # Decoded caches never go into the carried folder (a 28 px Omniglot cache alone is 25 MiB): the GPU run
    # decodes once into its work folder; a rehearsal keeps them in jmeta's user cache for the next one.
    if "JMETA_CACHE_DIR" not in env:
        env["JMETA_CACHE_DIR"] = str(pathlib.Path.home() / ".cache" / "jmeta" / "cache" if rehearse
                                     else work / "cache")
    paths = [str(REPO)] + ([str(DEVDATA / "site")] if (DEVDATA / "site").is_dir() else [])
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    if data_dir is not None:
        env["JMETA_DATA_DIR"] = str(data_dir)
    return env


def run_command(cmd: list[str], log: pathlib.Path, timeout: float, env: dict) -> tuple[int | None, float]:
    """Runs ``cmd`` with its output appended to ``log``; returns ``(exit status or None if stopped, seconds)``.

    At ``timeout`` the command's process group gets SIGTERM, then SIGKILL 10 s later. A training run stopped
    so loses only the steps since its last checkpoint (a checkpoint counts only once complete).
    """
    t0 = time.perf_counter()
    with open(log, "ab") as fh:
        fh.write(("$ " + " ".join(cmd) + "\n").encode())
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            fh.write(f"\n[gpu_tables] stopped after {timeout:.0f} s (the stage's budget)\n".encode())
            return None, time.perf_counter() - t0
    return rc, time.perf_counter() - t0


def _last_line(log: pathlib.Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln]
    return (errors or lines or ["(no output)"])[-1][:300]


def _metrics_timing(run: pathlib.Path) -> dict:
    """Training wall time (compilation included) and the step time after the first record, from metrics.jsonl."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return {}
    recs = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    recs = [r for r in recs if "time" in r and "step" in r]
    if not recs:
        return {}
    out = {"train_wall_s": recs[-1]["time"], "logged_steps": recs[-1]["step"]}
    if len(recs) >= 2 and recs[-1]["step"] > recs[0]["step"]:
        out["step_ms"] = 1e3 * (recs[-1]["time"] - recs[0]["time"]) / (recs[-1]["step"] - recs[0]["step"])
    return out


def _accuracy(ev: dict) -> dict:
    """The accuracy after the most adaptation steps the run reports (mean, CI, steps, tasks)."""
    best = None
    for key, v in ev.get("summary", {}).items():
        if " accuracy after " not in key:
            continue
        k = int(key.split(" accuracy after ")[1].split()[0])
        if best is None or k > best[0]:
            best = (k, key, v)
    if best is None:
        return {}
    k, key, v = best
    return {"accuracy": v["mean"], "ci95": v["ci95"], "eval_key": key, "adapt_steps": k,
            "num_tasks": ev.get("num_tasks")}


def _finish_record(rec: dict, run: pathlib.Path, ev: dict, *, rehearse: bool, protocol_steps: int) -> dict:
    """``rec`` completed from a run folder and its ``eval.json`` ``ev``: timing, accuracy, device, and the status
    ("ok" at the protocol's steps, or the rehearsal's; "reduced" below them)."""
    rec.update(_metrics_timing(run))
    rec.update(_accuracy(ev))
    rec.update(steps=ev["step"], device=ev.get("device"), platform=ev.get("platform"),
               conv_impl=ev.get("conv_impl"), deterministic_ops=ev.get("xla_gpu_deterministic_ops"))
    target = REHEARSAL_STEPS if rehearse else protocol_steps
    rec["status"] = "ok" if ev["step"] >= target else "reduced"
    return rec


def run_train_stage(stage: Stage, work: pathlib.Path, *, budget: float, eval_budget: float, rehearse: bool,
                    env: dict, data_dir: pathlib.Path | None) -> dict:
    """Trains ``stage.preset`` into ``work/runs/NAME`` within ``budget`` s and evaluates it; returns the record."""
    from jmeta.run import config as C

    protocol_steps = C.load(stage.preset).train.steps
    run = work / "runs" / stage.name
    log = work / "logs" / f"{stage.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    run.parent.mkdir(parents=True, exist_ok=True)
    dd = ["--data-dir", str(data_dir)] if data_dir is not None else []
    cmd = [sys.executable, "-m", "jmeta", "train", "--config", stage.preset, "--out", str(run), "--no-progress",
           "--no-plots", "--no-tensorboard", *dd]
    sets = list(RUN_SETS) + (list(REHEARSAL_SETS) if rehearse else []) + list(stage.sets)
    if rehearse:
        cmd += ["--steps", str(REHEARSAL_STEPS)]
    for s in sets:
        cmd += ["--set", s]
    rec: dict = {"stage": stage.name, "preset": stage.preset, "protocol_steps": protocol_steps,
                 "paper": stage.paper, "note": stage.note, "rehearsal": rehearse, "budget_s": round(budget, 1),
                 "train_command": " ".join(["python", *cmd[1:]]).replace(str(work), "WORK")}
    rc, wall = run_command(cmd, log, budget, env)
    rec["train_s"] = round(wall, 1)
    rec["stopped_at_budget"] = rc is None
    if rc not in (0, None):
        rec.update(status="FAILED", reason=f"jmeta train exited with {rc}: {_last_line(log)}")
        return rec
    if rc is None:  # stopped at the budget: evaluate the last complete checkpoint, if any
        reason = evaluate_stopped_run(run, log, budget=eval_budget, env=env, data_dir=data_dir, rec=rec)
        if reason:
            rec.update(status="FAILED", reason=f"training stopped at its budget ({budget:.0f} s); {reason}")
            return rec
    ev_path = run / "eval.json"
    if not ev_path.is_file():
        rec.update(status="FAILED", reason=f"no eval.json in the run folder: {_last_line(log)}")
        return rec
    return _finish_record(rec, run, json.loads(ev_path.read_text()), rehearse=rehearse,
                          protocol_steps=protocol_steps)


def evaluate_stopped_run(run: pathlib.Path, log: pathlib.Path, *, budget: float, env: dict,
                         data_dir: pathlib.Path | None, rec: dict) -> str | None:
    """``jmeta eval`` of a run stopped at its budget (its last complete checkpoint); ``None`` or why it failed."""
    ckpts = run / "checkpoints"
    if not (ckpts.is_dir() and any(ckpts.iterdir())):
        return "no checkpoint was written before it"
    dd = ["--data-dir", str(data_dir)] if data_dir is not None else []
    rc, wall = run_command([sys.executable, "-m", "jmeta", "eval", str(run), "--no-progress", *dd], log, budget, env)
    rec["eval_s"] = round(wall, 1)
    if rc != 0:
        return "jmeta eval " + (f"stopped at its budget ({budget:.0f} s)" if rc is None
                                else f"exited with {rc}: {_last_line(log)}")
    return None


def run_eval_stage(stage: Stage, work: pathlib.Path, *, budget: float, rehearse: bool, env: dict,
                   data_dir: pathlib.Path | None) -> dict:
    """``jmeta eval`` of another stage's run with ``stage.sets`` (e.g. 20-way test episodes) in a copy of it."""
    from jmeta.run import config as C

    src, run = work / "runs" / stage.eval_of, work / "runs" / stage.name
    log = work / "logs" / f"{stage.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    protocol_steps = C.load(stage.preset).train.steps
    rec: dict = {"stage": stage.name, "preset": stage.preset, "protocol_steps": protocol_steps,
                 "paper": stage.paper, "note": stage.note, "rehearsal": rehearse, "budget_s": round(budget, 1),
                 "eval_of": stage.eval_of, "sets": list(stage.sets)}
    if not (src / "checkpoints").is_dir():
        rec.update(status="FAILED", reason=f"stage {stage.eval_of} left no checkpoint to evaluate")
        return rec
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("eval*.json"))
    cfg = C.apply_overrides(C.load(str(run)), list(stage.sets))
    (run / "config.json").write_text(cfg.to_json())
    dd = ["--data-dir", str(data_dir)] if data_dir is not None else []
    rc, wall = run_command([sys.executable, "-m", "jmeta", "eval", str(run), "--no-progress", *dd], log, budget, env)
    rec["eval_s"] = round(wall, 1)
    if rc != 0 or not (run / "eval.json").is_file():
        why = f"stopped at its budget ({budget:.0f} s)" if rc is None else f"exited with {rc}: {_last_line(log)}"
        rec.update(status="FAILED", reason=f"jmeta eval {why}")
        return rec
    return _finish_record(rec, run, json.loads((run / "eval.json").read_text()), rehearse=rehearse,
                          protocol_steps=protocol_steps)


def run_benchmark(stage: Stage, work: pathlib.Path, script: str, args: list[str], *, budget: float,
                  rehearse: bool, env: dict) -> tuple[dict, dict | None]:
    """Runs ``benchmarks/SCRIPT.py ARGS --out WORK/bench/SCRIPT.json`` within ``budget``: the stage's record
    (``status="FAILED"`` with the reason when it did not finish) and the JSON it wrote (``None`` then)."""
    out = work / "bench" / f"{script}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    log = work / "logs" / f"{stage.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, f"benchmarks/{script}.py", *args, "--out", str(out)]
    rec: dict = {"stage": stage.name, "paper": stage.paper, "rehearsal": rehearse, "budget_s": round(budget, 1),
                 "command": " ".join(["python", *cmd[1:]]).replace(str(work), "WORK")}
    rc, wall = run_command(cmd, log, budget, env)
    rec["bench_s"] = round(wall, 1)
    if rc != 0 or not out.is_file():
        why = f"stopped at its budget ({budget:.0f} s)" if rc is None else f"exited with {rc}: {_last_line(log)}"
        rec.update(status="FAILED", reason=f"benchmarks/{script}.py {why}")
        return rec, None
    return rec, json.loads(out.read_text())


def run_bench_stage(stage: Stage, work: pathlib.Path, *, budget: float, rehearse: bool, env: dict) -> dict:
    """The Omniglot MAML meta-step of jmeta against the PyTorch peers (``benchmarks/omniglot_step.py``)."""
    size = ["--tasks", "2", "--steps", "1"] if rehearse else ["--tasks", "32", "--steps", "20"]
    rec, res = run_benchmark(stage, work, "omniglot_step", ["--forms", "auto", *size], budget=budget,
                             rehearse=rehearse, env=env)
    if res is None:
        return rec
    r, machine = res["results"], res["machine"]
    jm = r.get("auto", {})
    rec.update(status="ok", device=machine.get("device_kind"), platform=machine.get("backend"),
               torch=machine.get("torch"), torch_device=machine.get("torch_device"),
               meta_batch=res["config"]["meta_batch_size"], jmeta_step_ms=1e3 * jm.get("median_step_s", float("nan")),
               jmeta_compile_s=jm.get("compile_s"), conv_impl=jm.get("conv_impl"),
               task_parallel=jm.get("task_parallel"), peers={})
    for peer in ("torch_loop", "learn2learn", "higher"):
        p = r.get(peer, {})
        if "median_step_s" in p:
            rec["peers"][peer] = {"step_ms": 1e3 * p["median_step_s"],
                                  "speedup_of_jmeta": p["median_step_s"] / jm["median_step_s"]}
        else:
            rec["peers"][peer] = {"skipped": p.get("skipped", "not run")}
    return rec


RL_SIZES = {"rehearse": ["--rollout-sizes", "2x2", "--meta-tasks", "1", "--rounds", "1"],
            "gpu": ["--rollout-sizes", "20x20,200x50,1000x100", "--meta-tasks", "20,40", "--rounds", "5"]}


def run_rl_stage(stage: Stage, work: pathlib.Path, *, budget: float, rehearse: bool, env: dict) -> dict:
    """nav2d MAML-TRPO of jmeta against plain JAX and PyTorch MAML-RL (``benchmarks/rl_throughput.py --torch``)."""
    rec, res = run_benchmark(stage, work, "rl_throughput", ["--torch", *RL_SIZES["rehearse" if rehearse else "gpu"]],
                             budget=budget, rehearse=rehearse, env=env)
    return rec if res is None else rl_record(rec, res)


def rl_record(rec: dict, res: dict) -> dict:
    """``rec`` completed from ``benchmarks/rl_throughput.py``'s JSON ``res``: devices, the largest meta-batch's
    seconds per meta-iteration and ratios, the largest rollout size's env-steps/s per implementation."""
    dev, tdev = res["device"], res.get("torch_device", {})
    meta, roll = res["meta_step"][-1], res["rollouts"][-1]
    rec.update(status="ok", device=dev.get("device_kind"), platform=dev.get("platform"), jax=dev.get("jax"),
               torch=tdev.get("torch"), torch_device=tdev.get("torch_device_name"), meta_tasks=meta["tasks"],
               meta_s={k: meta.get(f"{k}_median_s") for k in ("jmeta", "plain", "torch")},
               torch_over_jmeta=meta.get("torch_over_jmeta"), jmeta_over_plain=meta.get("jmeta_over_plain"),
               rollout_size=f"{roll['tasks']}x{roll['episodes']}x{roll['horizon']}",
               env_steps_per_s={"jmeta": roll.get("env_steps_per_s"), "plain": roll.get("plain_env_steps_per_s"),
                                "torch": roll.get("torch_env_steps_per_s")})
    return rec


def summary_line(rec: dict) -> str:
    """One human-readable line for ``summary.txt``."""
    head = f"{rec['stage']}: {rec['status']}" + (" (rehearsal)" if rec.get("rehearsal") else "")
    if rec["status"] in ("FAILED", "SKIPPED"):
        return f"{head}: {rec.get('reason', '')}"
    if rec["stage"] == "rl-throughput":
        m, r = rec["meta_s"], rec["env_steps_per_s"]
        fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
        return (f"{head}: nav2d MAML-TRPO meta-iteration ({rec['meta_tasks']} tasks x 20 x 100) jmeta "
                f"{fmt(m['jmeta'], '.3f')} s, plain JAX {fmt(m['plain'], '.3f')} s, PyTorch {fmt(m['torch'], '.3f')} s "
                f"= {fmt(rec['torch_over_jmeta'], '.1f')}x jmeta's; rollouts {rec['rollout_size']}: jmeta "
                f"{fmt(r['jmeta'], '.3g')}, plain {fmt(r['plain'], '.3g')}, torch {fmt(r['torch'], '.3g')} "
                f"env-steps/s; "
                f"jax {rec.get('jax')} on {rec['device']}, torch {rec.get('torch')} on {rec.get('torch_device')}; "
                f"{rec['paper']}")
    if rec["stage"] == "bench":
        parts = [f"jmeta {rec['jmeta_step_ms']:.2f} ms/meta-step (meta-batch {rec['meta_batch']}, "
                 f"{rec['task_parallel']}+{rec['conv_impl']})"]
        for peer, p in rec["peers"].items():
            parts.append(f"{peer} {p['step_ms']:.2f} ms = {p['speedup_of_jmeta']:.1f}x jmeta's step"
                         if "step_ms" in p else f"{peer} skipped ({p['skipped'][:80]})")
        return f"{head}: " + "; ".join(parts) + f"; jax on {rec['device']}, torch {rec.get('torch')} on " \
                                                 f"{rec.get('torch_device')}; {rec['paper']}"
    adapt = f", {rec['adapt_steps']} adaptation steps" if rec.get("adapt_steps") else ""
    acc = (f"accuracy {100 * rec['accuracy']:.2f} ± {100 * rec['ci95']:.2f}% ({rec['num_tasks']} test episodes"
           f"{adapt})" if "accuracy" in rec else "no accuracy")
    budget = "" if rec["status"] == "ok" else " REDUCED BUDGET (stopped at the stage's time limit)"
    step = f", {rec['step_ms']:.2f} ms/step after compilation" if "step_ms" in rec else ""
    note = f"; {rec['note']}" if rec.get("note") else ""
    return (f"{head}: {acc} after {rec['steps']}/{rec['protocol_steps']} steps{budget}; training "
            f"{rec.get('train_wall_s', rec.get('train_s', '?'))} s{step}; {rec['device']}; paper {rec['paper']}{note}")


def _pack(rec: dict, work: pathlib.Path, out: pathlib.Path, index: int) -> pathlib.Path:
    """``OUT/NN-STAGE.tar.gz``: the run folder without checkpoints, the stage's log and ``stage.json``."""
    name = rec["stage"]
    dest = out / f"{index:02d}-{name}.tar.gz"
    tmp = dest.with_suffix(".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        data = json.dumps(rec, indent=2).encode()
        info = tarfile.TarInfo(f"{name}/stage.json")
        info.size, info.mtime = len(data), int(time.time())
        tar.addfile(info, io.BytesIO(data))
        log = work / "logs" / f"{name}.log"
        if log.is_file():
            tar.add(log, f"{name}/{name}.log")
        run = work / "runs" / name
        if run.is_dir():
            for f in sorted(run.iterdir()):
                if f.is_file():
                    tar.add(f, f"{name}/{f.name}")
        for stage_name, fname in (("bench", "omniglot_step.json"), ("rl-throughput", "rl_throughput.json")):
            bench = work / "bench" / fname
            if name == stage_name and bench.is_file():
                tar.add(bench, f"{name}/{fname}")
    os.replace(tmp, dest)
    return dest


def run_stages(names, out: pathlib.Path, *, work: pathlib.Path, rehearse: bool, deadline_s: float,
               data_dir: pathlib.Path | None, stages=STAGES) -> list[dict]:
    """Runs the named ones of ``stages`` in their (priority) order into ``out``; returns their records."""
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    env = _child_env(data_dir, work, rehearse)
    t0 = time.perf_counter()
    records = []
    for index, stage in enumerate(stages, 1):
        if stage.name not in names:
            continue
        start = time.perf_counter()
        left = deadline_s - (start - t0)
        reserve = stage.eval_s if stage.preset else 0.0
        budget = stage.budget_s if rehearse else min(stage.budget_s, left - reserve)
        eval_budget = stage.eval_s if not rehearse else 600.0
        if rehearse:
            budget = 900.0
        print(f"[gpu_tables] stage {stage.name}: budget {budget:.0f} s ({left:.0f} s left)", flush=True)
        if budget < MIN_STAGE_S:
            rec = {"stage": stage.name, "status": "SKIPPED", "rehearsal": rehearse,
                   "reason": f"only {left:.0f} s left of the {deadline_s:.0f} s deadline"}
        else:
            try:
                if stage.preset is None:
                    runner = run_rl_stage if stage.name == "rl-throughput" else run_bench_stage
                    rec = runner(stage, work, budget=budget, rehearse=rehearse, env=env)
                elif stage.eval_of:
                    rec = run_eval_stage(stage, work, budget=budget, rehearse=rehearse, env=env, data_dir=data_dir)
                else:
                    rec = run_train_stage(stage, work, budget=budget, eval_budget=eval_budget, rehearse=rehearse,
                                          env=env, data_dir=data_dir)
            except Exception as e:  # noqa: BLE001 - one stage's failure must not stop the next
                rec = {"stage": stage.name, "status": "FAILED", "rehearsal": rehearse,
                       "reason": f"the driver failed: {type(e).__name__}: {e}"}
        rec["stage_s"] = round(time.perf_counter() - start, 1)
        line = summary_line(rec)
        with open(out / "summary.txt", "a") as fh:
            fh.write(line + "\n")
        _pack(rec, work, out, index)
        print(f"[gpu_tables] {line}", flush=True)
        records.append(rec)
    return records


def prepare(dest: pathlib.Path = DEVDATA, shared: pathlib.Path = SHARED_DATA) -> None:
    """Builds the carried folder: data (Omniglot npz, mini-ImageNet train.zip and a cut test.zip) and site/."""
    data = dest / "data"
    (data / "omniglot" / "npz").mkdir(parents=True, exist_ok=True)
    for f in ("images_background.npz", "images_evaluation.npz"):
        shutil.copy2(shared / "omniglot" / "npz" / f, data / "omniglot" / "npz" / f)
    mini = data / "miniimagenet"
    mini.mkdir(parents=True, exist_ok=True)
    shutil.copy2(shared / "miniimagenet" / "train.zip", mini / "train.zip")
    with zipfile.ZipFile(shared / "miniimagenet" / "test.zip") as src, \
            zipfile.ZipFile(mini / "test.zip.tmp", "w", zipfile.ZIP_STORED) as dst:
        by_class: dict[str, list[zipfile.ZipInfo]] = {}
        for info in src.infolist():
            parts = info.filename.split("/")
            if len(parts) == 3 and parts[2]:
                by_class.setdefault(parts[1], []).append(info)
        for wnid in sorted(by_class):
            for info in sorted(by_class[wnid], key=lambda i: i.filename)[:MINI_TEST_PER_CLASS]:
                dst.writestr(info, src.read(info))
    os.replace(mini / "test.zip.tmp", mini / "test.zip")
    site = dest / "site"
    site.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", tmp]
        subprocess.run([*pip, "higher==0.2.1"], check=True)
        with zipfile.ZipFile(next(pathlib.Path(tmp).glob("higher-*.whl"))) as whl:
            whl.extractall(site)
        # learn2learn ships as an sdist with Cython parts; its MAML (maml.py, base_learner.py, utils) is pure
        # Python, and benchmarks/omniglot_step.py imports it without the package __init__.
        subprocess.run([*pip, "--no-binary", ":all:", "learn2learn==0.2.0"], check=True)
        sdist = next(pathlib.Path(tmp).glob("learn2learn-*.tar.gz"))
        keep = ("learn2learn/algorithms/maml.py", "learn2learn/algorithms/base_learner.py",
                "learn2learn/utils/__init__.py", "LICENSE")
        with tarfile.open(sdist) as tar:
            for m in tar.getmembers():
                rel = m.name.split("/", 1)[1] if "/" in m.name else m.name
                if rel in keep:
                    target = site / ("learn2learn/LICENSE" if rel == "LICENSE" else rel)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tar.extractfile(m).read())
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"prepared {dest}: {size / 2**20:.1f} MiB (the device tool carries at most 64 MiB with the tree)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rehearse", action="store_true",
                    help="every stage with 2 meta-steps, 2 test episodes and a 2-task benchmark (the CPU check)")
    ap.add_argument("--out", default=os.environ.get("OUT"),
                    help="where summary.txt and the stage archives go (default: $OUT, the device tool's folder)")
    ap.add_argument("--work", default=None, help="run folders and logs (default: a new temporary folder)")
    ap.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                    help=f"comma-separated subset of {list(STAGE_NAMES)} (default: all but rl-throughput)")
    ap.add_argument("--deadline", type=float, default=560.0,
                    help="seconds for all stages together (default 560: the device tool's 600 s with margin)")
    ap.add_argument("--data-dir", default=None,
                    help="dataset root (default: $JMETA_DATA_DIR, else .devdata/data, else ../shared/data)")
    ap.add_argument("--prepare", action="store_true", help="build the carried folder .devdata/ and exit")
    args = ap.parse_args(argv)
    if args.prepare:
        src = args.data_dir or os.environ.get("JMETA_DATA_DIR") or (str(SHARED_DATA) if SHARED_DATA.is_dir() else None)
        if src is None or not (pathlib.Path(src) / "omniglot" / "npz").is_dir():
            ap.error(f"--prepare copies the datasets from --data-dir / $JMETA_DATA_DIR / {SHARED_DATA}; got "
                     f"{src!r}, which holds no omniglot/npz")
        prepare(shared=pathlib.Path(src))
        return 0
    names = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [n for n in names if n not in STAGE_NAMES]
    if bad or not names:
        ap.error(f"--stages must be a comma-separated subset of {list(STAGE_NAMES)}, got {args.stages!r}")
    if not args.deadline > 0:
        ap.error(f"--deadline must be > 0 seconds, got {args.deadline!r}")
    if not args.out:
        ap.error("--out is required where $OUT is not set")
    data_dir = args.data_dir or os.environ.get("JMETA_DATA_DIR")
    if data_dir is None:
        data_dir = next((str(p) for p in (DEVDATA / "data", SHARED_DATA) if p.is_dir()), None)
    work = pathlib.Path(args.work) if args.work else pathlib.Path(tempfile.mkdtemp(prefix="jmeta-gpu-tables-"))
    records = run_stages(names, pathlib.Path(args.out), work=work, rehearse=args.rehearse,
                         deadline_s=args.deadline, data_dir=pathlib.Path(data_dir) if data_dir else None)
    failed = [r["stage"] for r in records if r["status"] == "FAILED"]
    print(f"[gpu_tables] done: {len(records) - len(failed)} of {len(records)} stages without failure; "
          f"summary in {pathlib.Path(args.out) / 'summary.txt'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
