"""Regenerates the README's results tables from the files in ``results/`` (so every number there has a file).

Each run in ``results/`` is a folder holding what ``jmeta train`` wrote (``config.json``, ``eval.json``,
``metrics.jsonl``) and ``stage.json``: the record of how it was made (command, machine, budget, the paper's
number), as ``scripts/gpu_tables.py`` writes it. A benchmark is a folder holding ``omniglot_step.json``
(``benchmarks/omniglot_step.py``) and its ``stage.json``. The README's tables sit between marker comments
``<!-- results:NAME:begin -->`` and ``<!-- results:NAME:end -->``; this script rewrites what is between them,
and ``tests/test_results_tables.py`` checks that the README equals what it would write.

    python scripts/results_tables.py                 # rewrite README.md's tables from results/
    python scripts/results_tables.py --check         # exit 1 if README.md differs from results/
    python scripts/results_tables.py --import-gpu DIR   # unpack the GPU run's NN-STAGE.tar.gz into results/gpu/
    python scripts/results_tables.py --import-run RUN_DIR --name NAME --machine TEXT --command TEXT
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import shutil
import sys
import tarfile

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
README = REPO / "README.md"
RUN_FILES = ("config.json", "eval.json", "metrics.jsonl", "stage.json", "omniglot_step.json", "rl_throughput.json")
# Published numbers (5-way unless the preset says otherwise), as the papers print them.
# By stage name (the folder name under results/gpu/), in the priority order of scripts/gpu_tables.py.
PAPER = {
    "omniglot-5w1s-maml": "98.7 ± 0.4",
    "omniglot-5w1s-protonet": "98.8",
    "omniglot-5w1s-protonet-20way": "96.0 (20-way)",
    "omniglot-20w1s-maml": "95.8 ± 0.3",
    "omniglot-5w1s-imaml": "99.16 ± 0.35",
    "miniimagenet-5w1s-protonet": "49.42 ± 0.78",
}
PROTOCOL_NOTE = {"miniimagenet-5w1s-protonet": "our training split has 100 of the 600 images per class",
                 "omniglot-5w1s-protonet-20way": "the `omniglot-5w1s-protonet` run, tested 20-way"}
MISSING_NOTE = "not run yet: needs the GPU machine (`bash scripts/gpu_tables.sh`)"


def _load(path: pathlib.Path):
    return json.loads(path.read_text())


def _metrics(path: pathlib.Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def runs(root: pathlib.Path = RESULTS) -> list[pathlib.Path]:
    """Run folders under ``root`` (those with an ``eval.json``): by top folder, then in the stages' order."""
    order = list(PAPER)

    def key(run):
        rel = run.relative_to(root)
        return rel.parts[0], order.index(run.name) if run.name in order else len(order), rel.as_posix()

    return sorted((p.parent for p in root.rglob("eval.json")), key=key)


def accuracy_row(run: pathlib.Path, root: pathlib.Path = RESULTS) -> dict:
    """The row of one run: preset, device, steps, wall time, accuracy, paper, note."""
    cfg, ev = _load(run / "config.json"), _load(run / "eval.json")
    stage = _load(run / "stage.json") if (run / "stage.json").is_file() else {}
    recs = [r for r in _metrics(run / "metrics.jsonl") if "time" in r]
    best = None
    for key, v in ev["summary"].items():
        m = re.fullmatch(r"K=(\d+) accuracy after (\d+) step\(s\)", key)
        if m and (best is None or int(m.group(2)) > best[0]):
            best = (int(m.group(2)), int(m.group(1)), v)
    steps, shots, acc = best
    n_way = cfg["eval"]["n_way"] or cfg["task"]["n_way"]
    protocol = stage.get("protocol_steps", cfg["train"]["steps"])
    reduced = ev["step"] < protocol
    wall = f"{recs[-1]['time']:.0f} s" if recs else "—"
    return {
        "preset": cfg["name"], "stage": stage.get("stage", run.name), "run": run.relative_to(root).as_posix(),
        "device": stage.get("machine") or ev.get("device", "?"),
        "steps": f"{ev['step']:,} of {protocol:,}" + (" (**reduced budget**)" if reduced else ""),
        "wall": wall,
        "accuracy": f"{100 * acc['mean']:.2f} ± {100 * acc['ci95']:.2f}% ({n_way}-way {shots}-shot, "
                    f"{ev['num_tasks']} test episodes" + (f", {steps} steps" if steps else "") + ")",
        "paper": PAPER.get(stage.get("stage", run.name), PAPER.get(cfg["name"], "—")),
        "note": stage.get("note", ""), "reduced": reduced, "seconds_per_step": _seconds_per_step(recs),
        "protocol": protocol, "machine": stage.get("machine") or ev.get("device", "?"),
    }


def _seconds_per_step(recs: list[dict]):
    """(mean, fastest window, slowest window) seconds per meta-step after the first record (compilation)."""
    pairs = [(b["time"] - a["time"]) / (b["step"] - a["step"]) for a, b in zip(recs, recs[1:]) if b["step"] > a["step"]]
    if not pairs:
        return None
    mean = (recs[-1]["time"] - recs[0]["time"]) / (recs[-1]["step"] - recs[0]["step"])
    return mean, min(pairs), max(pairs)


def accuracy_table(root: pathlib.Path = RESULTS) -> str:
    """The image few-shot accuracy table: every run in ``root``, then the presets of the issue not yet run."""
    rows = [accuracy_row(r, root) for r in runs(root)]
    lines = ["| preset | device | meta-steps run | training wall time | jmeta accuracy (mean ± 95% CI) | paper "
             "| source in `results/`, note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        note = f"`{r['run']}`" + (f"; {r['note']}" if r["note"] else "")
        lines.append(f"| `{r['preset']}` | {r['device']} | {r['steps']} | {r['wall']} | {r['accuracy']} | "
                     f"{r['paper']} | {note} |")
    done_on_gpu = {r["stage"] for r in rows if "cpu" not in r["device"].lower()}
    for name, paper in PAPER.items():
        if name not in done_on_gpu:
            note = MISSING_NOTE + (f"; {PROTOCOL_NOTE[name]}" if name in PROTOCOL_NOTE else "")
            preset = name.removesuffix("-20way")
            lines.append(f"| `{preset}` | H200 | — | — | not measured | {paper} | {note} |")
    return "\n".join(lines)


def cpu_timing(root: pathlib.Path = RESULTS) -> str:
    """The time per meta-step of the CPU runs in ``root`` and what their full protocols would take there."""
    out = []
    for run in runs(root):
        r = accuracy_row(run, root)
        if "cpu" not in r["machine"].lower() or r["seconds_per_step"] is None:
            continue
        mean, lo, hi = r["seconds_per_step"]
        out.append(f"`{r['preset']}` on the {r['machine']}: {mean:.2f} s per meta-step after compilation "
                   f"({lo:.2f}–{hi:.2f} s over the logging windows of `{r['run']}/metrics.jsonl`), so its "
                   f"{r['protocol']:,}-step protocol would take about {mean * r['protocol'] / 3600:.1f} hours "
                   f"there ({lo * r['protocol'] / 3600:.1f} at the fastest window).")
    return "\n".join(out) if out else "No CPU run in `results/`."


def bench_table(root: pathlib.Path = RESULTS) -> str:
    """jmeta's Omniglot MAML meta-step against the PyTorch peers, from every ``omniglot_step.json`` in ``root``."""
    lines = ["| device | meta-batch | jmeta step (ms) | plain PyTorch loop (ms) | learn2learn (ms) | higher (ms) "
             "| PyTorch loop / jmeta | source |", "|---|---|---|---|---|---|---|---|"]
    found = sorted(root.rglob("omniglot_step.json"))
    for path in found:
        b = _load(path)
        res, machine = b["results"], b["machine"]
        jm = res.get("auto") or next(v for v in res.values() if "compile_s" in v and "median_step_s" in v)

        def ms(peer):
            r = res.get(peer, {})
            return f"{1e3 * r['median_step_s']:.1f}" if "median_step_s" in r else "skipped"

        loop = res.get("torch_loop", {})
        ratio = f"**{loop['median_step_s'] / jm['median_step_s']:.1f}×**" if "median_step_s" in loop else "—"
        device = machine.get("device_kind", machine.get("backend"))
        lines.append(f"| {device} (torch on {machine.get('torch_device', 'cpu')}) | "
                     f"{b['config']['meta_batch_size']} | {1e3 * jm['median_step_s']:.1f} | {ms('torch_loop')} | "
                     f"{ms('learn2learn')} | {ms('higher')} | {ratio} | "
                     f"`{path.parent.relative_to(root).as_posix()}` |")
    if not found:
        lines.append(f"| H200 | 32 | not measured | | | | | {MISSING_NOTE} |")
    return "\n".join(lines)


TABLES = {"accuracy": accuracy_table, "cpu-timing": cpu_timing, "gpu-bench": bench_table}


def render(text: str, root: pathlib.Path = RESULTS) -> str:
    """``text`` (the README) with every marked table regenerated from ``root``."""
    for name, make in TABLES.items():
        begin, end = f"<!-- results:{name}:begin -->", f"<!-- results:{name}:end -->"
        if text.count(begin) != 1 or text.count(end) != 1:
            raise ValueError(f"README.md must hold the markers {begin} and {end} once each")
        head, rest = text.split(begin)
        _, tail = rest.split(end)
        text = f"{head}{begin}\n{make(root)}\n{end}{tail}"
    return text


def import_gpu(src: pathlib.Path, dest: pathlib.Path) -> list[pathlib.Path]:
    """Unpacks the GPU run's ``NN-STAGE.tar.gz`` archives into ``dest/STAGE`` (the small files only)."""
    out = []
    for archive in sorted(src.glob("*.tar.gz")):
        with tarfile.open(archive) as tar:
            stage = next((m for m in tar.getmembers() if m.name.endswith("/stage.json")), None)
            if stage is not None and json.loads(tar.extractfile(stage).read()).get("rehearsal"):
                raise ValueError(f"{archive} is from a rehearsal (gpu_tables.py --rehearse): not a result")
            for m in tar.getmembers():
                parts = pathlib.PurePosixPath(m.name).parts
                if len(parts) != 2 or not m.isfile() or parts[1] not in RUN_FILES or ".." in parts:
                    continue
                target = dest / parts[0] / parts[1]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(m).read())
                out.append(target)
    summary = src / "summary.txt"
    if summary.is_file():
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(summary, dest / "summary.txt")
    return out


def import_run(run: pathlib.Path, dest: pathlib.Path, *, machine: str, command: str, note: str = "") -> None:
    """Copies a CPU run's small files into ``dest`` with a ``stage.json`` naming the machine and command."""
    cfg = _load(run / "config.json")
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "eval.json", "metrics.jsonl"):
        if (run / name).is_file():
            shutil.copy2(run / name, dest / name)
    from jmeta.run import config as C

    protocol = C.load(cfg["name"]).train.steps if cfg["name"] in C.PRESETS else cfg["train"]["steps"]
    stage = {"stage": cfg["name"], "preset": cfg["name"], "machine": machine, "command": command,
             "protocol_steps": protocol, "paper": PAPER.get(cfg["name"], ""), "note": note}
    (dest / "stage.json").write_text(json.dumps(stage, indent=2) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md's tables differ from results/")
    ap.add_argument("--import-gpu", metavar="DIR", help="unpack the GPU run's archives into results/gpu/")
    ap.add_argument("--import-run", metavar="RUN_DIR", help="copy a run folder's small files into results/cpu/NAME")
    ap.add_argument("--name", help="folder name under results/cpu/ (with --import-run)")
    ap.add_argument("--machine", default="2-core CPU", help="the machine, in words (with --import-run)")
    ap.add_argument("--command", default="", help="the command that made the run (with --import-run)")
    ap.add_argument("--note", default="", help="what differs from the paper's protocol (with --import-run)")
    args = ap.parse_args(argv)
    if args.import_gpu:
        files = import_gpu(pathlib.Path(args.import_gpu), RESULTS / "gpu")
        print(f"imported {len(files)} files into {RESULTS / 'gpu'}")
    if args.import_run:
        if not args.name:
            ap.error("--import-run needs --name")
        import_run(pathlib.Path(args.import_run), RESULTS / "cpu" / args.name, machine=args.machine,
                   command=args.command, note=args.note)
    text = README.read_text(encoding="utf-8")
    new = render(text)
    if args.check:
        if new != text:
            print("README.md's results tables differ from results/: run python scripts/results_tables.py")
            return 1
        print("README.md's results tables match results/")
        return 0
    if new != text:
        README.write_text(new, encoding="utf-8")
        print("rewrote README.md's results tables")
    return 0


if __name__ == "__main__":
    sys.exit(main())
