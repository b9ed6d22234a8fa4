"""Meta-training throughput: tasks per second against meta-batch size and number of devices.

Commands (repo root):

    python benchmarks/throughput.py --out runs/bench/throughput                     # sinusoid, all devices
    python benchmarks/throughput.py --cpu-devices 8 --out runs/bench/throughput-cpu8  # 8 simulated CPU devices
    python benchmarks/throughput.py --workload omniglot --batches 8,32,128 --out runs/bench/throughput-omniglot

For each number of devices ``n`` (1, 2, 4, ... up to all devices; ``--devices``
to choose) and each meta-batch size ``B`` divisible by ``n``, the jmeta
meta-step is built with ``make_meta_step(..., mesh=task_mesh(n))`` (the task
axis split over ``n`` devices, parameters replicated), compiled, warmed up and
timed (median of ``--repeats`` samples, ``block_until_ready``); ``tasks_per_s
= B / median step time``. ``n = 0`` in the output is the same step without a
mesh (the single-device baseline).

Workloads:

* ``sinusoid``: second-order MAML, MLP 1-40-40-1, K=10, one inner step, Adam.
* ``omniglot``: second-order MAML, Conv4-64, 5-way 1-shot, 15 queries, one
  inner step, on Omniglot from ``JMETA_DATA_DIR`` (episodes sampled on the
  device) or, with ``--synthetic`` or when the data is absent, on random
  28x28x1 images. Needs ``jmeta/models/conv.py``; meant for GPUs (per-task
  convolution weights are slow on XLA:CPU, see ``shared/notes/xla-cpu-conv.md``).

Simulated CPU devices (``--cpu-devices N``) share the same cores, so their
numbers show the overhead of sharding, not a speed-up. Writes
``throughput.json`` and ``throughput.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def _ints(s):
    return [int(x) for x in s.split(",") if x]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=["sinusoid", "omniglot"], default="sinusoid")
    ap.add_argument("--batches", type=_ints, default=None,
                    help="meta-batch sizes (default sinusoid 8,32,128,512; omniglot 8,32,128)")
    ap.add_argument("--devices", type=_ints, default=None, help="device counts (default 1,2,4,... up to all)")
    ap.add_argument("--cpu-devices", type=int, default=None, help="simulate N CPU devices (set before JAX starts)")
    ap.add_argument("--inner-steps", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--synthetic", action="store_true", help="omniglot: random images instead of the dataset")
    ap.add_argument("--out", default="runs/bench/throughput")
    args = ap.parse_args(argv)
    if args.batches is None:
        args.batches = [8, 32, 128, 512] if args.workload == "sinusoid" else [8, 32, 128]
    if any(b < 1 for b in args.batches):
        ap.error("--batches must be positive")
    return args


def build(workload: str, inner_steps: int, synthetic: bool):
    """``(algorithm, model, sample_fn, data, note)``."""
    from jmeta.algorithms import MAML

    if workload == "sinusoid":
        from jmeta.models import mlp
        from jmeta.tasks import Sinusoid

        model = mlp()
        alg = MAML(model.apply, inner_lr=0.01, num_steps=inner_steps)
        return alg, model, Sinusoid(10, 10).sample, None, "MAML, MLP 1-40-40-1, sinusoid K=10"
    import importlib.util

    if importlib.util.find_spec("jmeta.models.conv") is None:
        raise SystemExit("omniglot throughput needs jmeta/models/conv.py (Conv4), which does not exist yet")
    from jmeta.models.conv import conv4
    from jmeta.ops import recommended_conv_impl

    impl = recommended_conv_impl(per_task_kernels=True)  # MAML adapts the kernels per task
    model = conv4(5, input_shape=(28, 28, 1), hidden=64, conv_impl=impl)
    alg = MAML(model.apply, loss="cross_entropy", inner_lr=0.4, num_steps=inner_steps)
    note = f"MAML, Conv4-64, Omniglot 5-way 1-shot, 15 queries, conv_impl={impl}"
    if not synthetic:
        try:
            from jmeta.data import load_omniglot
            from jmeta.tasks.episodes import EpisodeSampler, put_on_device

            store = load_omniglot("train", download=False)
            sampler = EpisodeSampler(n_way=5, k_shot=1, q_query=15)
            images = put_on_device(store)

            return alg, model, sampler.sample, images, note + " (real data, sampled on device)"
        except Exception as e:  # noqa: BLE001 - fall back to synthetic data, and say so
            note += f" (dataset unavailable: {type(e).__name__}; random images)"
    else:
        note += " (random images)"
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    from suite import _image_sampler

    return alg, model, _image_sampler(5, 1, 15, (28, 28, 1)), None, note


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.cpu_devices:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={args.cpu_devices}").strip()
    import jax

    if args.cpu_devices:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    import optax

    import _common
    from jmeta.train import init_train_state, make_meta_step
    from jmeta.train.distributed import replicate, task_mesh

    n_all = jax.device_count()
    counts = args.devices or [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256) if n <= n_all]
    if any(not 1 <= n <= n_all for n in counts):
        raise SystemExit(f"--devices must be in 1..{n_all}")
    alg, model, sample, data, note = build(args.workload, args.inner_steps, args.synthetic)
    opt = optax.adam(1e-3)
    key = jax.random.key(0)
    rows = []
    for n in [0, *counts]:
        mesh = None if n == 0 else task_mesh(n)
        for b in args.batches:
            if n and b % n:
                continue
            state = init_train_state(alg, model.params, model.state, opt)
            d = data
            if mesh is not None:
                state = replicate(state, mesh)
                d = None if data is None else replicate(data, mesh)
            step = make_meta_step(alg, sample, opt, meta_batch_size=b, mesh=mesh)
            t0 = time.perf_counter()
            compiled = step.lower(state, key, d).compile()
            compile_s = time.perf_counter() - t0
            box = {"s": state}

            def call(c=compiled, box=box, d=d):
                box["s"], m = c(box["s"], key, d)
                return m["loss"]

            t = _common.time_calls(call, warmup=args.warmup, repeats=args.repeats)
            row = {"devices": n, "meta_batch": b, "compile_s": compile_s, "step_median_s": t["median_s"],
                   "step_iqr_s": t["iqr_s"], "tasks_per_s": b / t["median_s"],
                   "tasks_per_s_per_device": b / t["median_s"] / max(n, 1),
                   "mem_total_bytes": _common.memory_dict(compiled).get("total")}
            rows.append(row)
            print(f"[throughput] devices={n or '1 (no mesh)'} B={b}: {row['tasks_per_s']:.0f} tasks/s "
                  f"(step {t['median_s'] * 1e3:.2f} ms, compile {compile_s:.1f} s)", flush=True)
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "throughput", "workload": args.workload, "note": note, "inner_steps": args.inner_steps,
              "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "simulated_cpu_devices": args.cpu_devices, "device": _common.device_info(), "rows": rows}
    (out_dir / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for n in sorted({r["devices"] for r in rows}):
        rs = [r for r in rows if r["devices"] == n]
        ax.plot([r["meta_batch"] for r in rs], [r["tasks_per_s"] for r in rs], marker="o",
                label="no mesh" if n == 0 else f"{n} device(s)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("meta-batch size (tasks)")
    ax.set_ylabel("tasks / s")
    ax.set_title(f"{args.workload}: {note}"[:70], fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "throughput.png", dpi=110)
    plt.close(fig)
    print(f"[throughput] wrote {out_dir}/throughput.json, throughput.png")
    return result


if __name__ == "__main__":
    main()
