"""Omniglot-shaped second-order MAML meta-step: jmeta's task-parallel/convolution forms vs PyTorch.

Command (this repo's root; about 6 minutes on 2 CPU cores with all forms, ~2 without vmap+lax):

    python benchmarks/omniglot_step.py --out runs/bench/omniglot_step.json

Quick look at the default form only and the PyTorch peers:

    python benchmarks/omniglot_step.py --forms auto --out runs/bench/omniglot_step_auto.json

The step (as in Finn et al. 2017 / learn2learn's MAML Omniglot example): 5-way 1-shot, 15 queries
per class, 28x28x1 images, Conv4-64 with 2x2 max-pool and BatchNorm in training mode (per-task
batch statistics), 32 tasks per meta-batch, 1 inner SGD step with lr 0.4, exact second-order
meta-gradient, Adam(1e-3) outer update.

Forms measured for jmeta (``task_parallel`` + ``conv_impl``):

* ``vmap+lax``: ``vmap`` over tasks, ``lax.conv`` autodiff (per-task kernels -> grouped convs);
* ``map+lax``: a ``lax.scan`` over tasks, ``lax.conv`` autodiff;
* ``map+patches_vjp``: a scan over tasks, convolutions whose derivatives are the custom
  patches/transposed-conv forms of :mod:`jmeta.ops.conv`;
* ``vmap+patches``: ``vmap`` over tasks, convolutions as im2col + einsum;
* ``auto``: what ``jmeta train`` picks for MAML on this backend:
  :func:`jmeta.ops.recommended_conv_impl` (per-task kernels) with
  :func:`jmeta.ops.recommended_task_parallel`.

PyTorch peers (same network, same data shapes; only if ``torch`` is installed, which jmeta never
needs): ``torch_loop`` (a Python loop over tasks, ``torch.autograd.grad(create_graph=True)``,
functional forward: what learn2learn does, without the library), ``learn2learn``
(``l2l.algorithms.MAML`` clone/adapt) and ``higher`` (``higher.innerloop_ctx`` with a
differentiable SGD step), each where importable (else the JSON says why it was skipped). They run
on ``--torch-device`` (``auto``: CUDA when torch sees a GPU, as jmeta then runs on it too); on a
GPU every timed torch step ends with ``torch.cuda.synchronize()``, as every jmeta step ends with
``block_until_ready``. learn2learn's package ``__init__`` imports torchvision and
gym for its datasets; when that import fails (no CPU torchvision wheel matches torch 2.13 on PyPI)
its MAML code (``learn2learn.algorithms.maml`` and ``learn2learn.utils``, which need only torch) is
imported without running the package ``__init__``: the timed code is learn2learn's own.

Every form is timed in the same process: compile (lower + compile) apart from step time, a warm-up
step, then the median of ``--steps`` steps (``block_until_ready``). FLOPs and memory come from
XLA's ``cost_analysis()`` / ``memory_analysis()``. Episode sampling (``EpisodeSampler``) is timed
alone and reported as a fraction of the step. The JSON holds every number and the ratios to
learn2learn and to the PyTorch loop.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

N_WAY, K_SHOT, Q_QUERY, TASKS, INNER_LR, META_LR = 5, 1, 15, 32, 0.4, 1e-3
FORMS = {
    "vmap+lax": ("vmap", "lax"),
    "map+lax": ("map", "lax"),
    "map+patches_vjp": ("map", "patches_vjp"),
    "vmap+patches": ("vmap", "patches"),
    "vmap+patches_vjp": ("vmap", "patches_vjp"),
    "chunk4+patches": (4, "patches"),
    "auto": (None, "auto"),
}
DEFAULT_FORMS = "vmap+lax,map+lax,map+patches_vjp,vmap+patches,auto"
SLOW_FORMS = ("vmap+lax", "map+lax")


def _median_time(fn, steps):
    ts = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), ts


def _load_images(seed):
    """Real Omniglot (train split) if jmeta.data can load it, else random uint8 of the same shape."""
    try:
        from jmeta.data import load_omniglot

        store = load_omniglot("train", data_dir=os.environ.get("JMETA_DATA_DIR", "../shared/data"))
        return store.images, "omniglot/train"
    except Exception as e:  # noqa: BLE001 - the benchmark times the same shapes either way
        rng = np.random.default_rng(seed)
        return rng.integers(0, 256, (1200, 20, 28, 28, 1), dtype=np.uint8), f"random uint8 ({type(e).__name__})"


def jmeta_runners(forms, images, seed, tasks):
    """Compiles every jmeta form; returns ``({name: run_fn}, {name: info}, sampling_s)``."""
    import jax
    import optax

    from jmeta.algorithms import MAML
    from jmeta.models.conv import conv4
    from jmeta.ops import recommended_conv_impl, recommended_task_parallel, resolve_conv_impl
    from jmeta.tasks.episodes import EpisodeSampler
    from jmeta.train.step import init_train_state, make_meta_step

    sampler = EpisodeSampler(N_WAY, K_SHOT, Q_QUERY)
    data = jax.device_put(images)

    sample_fn = sampler.sample  # sample(key, num_tasks, images)

    # Episode sampling alone (the same sampler the step runs inside its program).
    sample = jax.jit(lambda k, d: sampler.sample(k, tasks, d))
    jax.block_until_ready(sample(jax.random.key(0), data))
    sampling_s, _ = _median_time(lambda: jax.block_until_ready(sample(jax.random.key(1), data)), 20)

    runners, infos = {}, {}
    for name in forms:
        tp, impl = FORMS[name]
        tp = recommended_task_parallel() if tp is None else tp
        impl = recommended_conv_impl(per_task_kernels=True) if impl == "auto" else impl
        model = conv4(N_WAY, input_shape=(28, 28, 1), hidden=64, pool="max", conv_impl=impl,
                      key=jax.random.key(seed))
        algo = MAML(model.apply, loss="cross_entropy", inner_lr=INNER_LR, num_steps=1)
        opt = optax.adam(META_LR)
        state = init_train_state(algo, model.params, model.state, opt)
        step = make_meta_step(algo, sample_fn, opt, meta_batch_size=tasks, task_parallel=tp)
        key = jax.random.key(seed + 1)
        t0 = time.perf_counter()
        traced = step.trace(state, key, data)
        compiled = traced.lower().compile()
        compile_s = time.perf_counter() - t0
        # FLOPs per meta-step from the jaxpr with loop trip counts: XLA's cost_analysis() counts a loop body
        # once, i.e. one task (or one chunk) of the lax.map forms but the whole meta-batch of the vmap ones.
        flops = _common.jaxpr_flops(traced.jaxpr)[0]
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        mem = compiled.memory_analysis()
        holder = {"state": state, "metrics": None}

        def run(compiled=compiled, holder=holder, key=key):
            s, m = compiled(holder["state"], key, data)
            jax.block_until_ready(s)
            holder["state"], holder["metrics"] = s, m

        t0 = time.perf_counter()
        run()
        first_s = time.perf_counter() - t0
        runners[name] = run
        infos[name] = {"task_parallel": tp, "conv_impl": resolve_conv_impl(impl), "compile_s": compile_s,
                       "first_step_s": first_s, "gflop": flops / 1e9,
                       "xla_gflop_loop_bodies_once": (cost or {}).get("flops", float("nan")) / 1e9,
                       "temp_bytes": getattr(mem, "temp_size_in_bytes", None),
                       "_holder": holder}
        print(f"{name:18s} compiled in {compile_s:6.2f} s, first step {first_s:7.2f} s "
              f"({infos[name]['gflop']:.0f} GFLOP per meta-step)", flush=True)
    return runners, infos, sampling_s


# -- PyTorch peers ----------------------------------------------------------------------------
def _torch_data(torch, images, seed, tasks, device):
    rng = np.random.default_rng(seed)
    c = images.shape[0]
    sx, sy, qx, qy = [], [], [], []
    for _ in range(tasks):
        cls = rng.choice(c, N_WAY, replace=False)
        s, q = [], []
        for ci in cls:
            ex = rng.choice(images.shape[1], K_SHOT + Q_QUERY, replace=False)
            s.append(images[ci, ex[:K_SHOT]])
            q.append(images[ci, ex[K_SHOT:]])
        sx.append(np.concatenate(s))
        qx.append(np.concatenate(q))
        sy.append(np.repeat(np.arange(N_WAY), K_SHOT))
        qy.append(np.repeat(np.arange(N_WAY), Q_QUERY))
    f = lambda a: torch.from_numpy(np.stack(a).astype(np.float32) / 255.0).permute(0, 1, 4, 2, 3).contiguous()  # noqa: E731
    lab = lambda a: torch.from_numpy(np.stack(a).astype(np.int64))  # noqa: E731
    return tuple(t.to(device) for t in (f(sx), lab(sy), f(qx), lab(qy)))


def _torch_model(torch, device):
    nn = torch.nn
    layers = []
    for i in range(4):
        layers += [nn.Conv2d(1 if i == 0 else 64, 64, 3, padding=1), nn.BatchNorm2d(64, track_running_stats=False),
                   nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64, N_WAY)).to(device)


def _synchronized(torch, device, step):
    """``step`` followed by ``torch.cuda.synchronize()`` on a GPU, so that a timed step includes its kernels."""
    if torch.device(device).type != "cuda":
        return step

    def run():
        step()
        torch.cuda.synchronize(device)

    return run


def torch_loop_runner(torch, data, tasks, device):
    F = torch.nn.functional
    model = _torch_model(torch, device)
    params = [p for p in model.parameters()]
    opt = torch.optim.Adam(params, lr=META_LR)

    def forward(ps, x):
        it = iter(ps)
        for _ in range(4):
            w, b, g, bb = next(it), next(it), next(it), next(it)
            x = F.conv2d(x, w, b, padding=1)
            x = F.batch_norm(x, None, None, g, bb, training=True)
            x = F.max_pool2d(F.relu(x), 2)
        w, b = next(it), next(it)
        return F.linear(x.flatten(1), w, b)

    sx, sy, qx, qy = data

    def step():
        opt.zero_grad()
        for t in range(tasks):
            loss = F.cross_entropy(forward(params, sx[t]), sy[t])
            grads = torch.autograd.grad(loss, params, create_graph=True)
            fast = [p - INNER_LR * g for p, g in zip(params, grads)]
            (F.cross_entropy(forward(fast, qx[t]), qy[t]) / tasks).backward()
        opt.step()

    step = _synchronized(torch, device, step)
    step()
    return step, {}


def _import_l2l_maml():
    """learn2learn's MAML, importing the package normally or, failing that, without its __init__."""
    try:
        import learn2learn as l2l

        return l2l.algorithms.MAML, "import learn2learn"
    except Exception as e:  # noqa: BLE001
        spec = importlib.util.find_spec("learn2learn")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("learn2learn is not installed") from e
        root = list(spec.submodule_search_locations)[0]
        for name in [k for k in sys.modules if k == "learn2learn" or k.startswith("learn2learn.")]:
            del sys.modules[name]
        for pkg, path in (("learn2learn", root), ("learn2learn.algorithms", os.path.join(root, "algorithms"))):
            mod = types.ModuleType(pkg)
            mod.__path__ = [path]
            sys.modules[pkg] = mod
        maml = importlib.import_module("learn2learn.algorithms.maml")
        return maml.MAML, f"learn2learn.algorithms.maml without package __init__ ({type(e).__name__}: {e})"


def l2l_runner(torch, data, tasks, device):
    MAML, how = _import_l2l_maml()
    F = torch.nn.functional
    model = _torch_model(torch, device)
    maml = MAML(model, lr=INNER_LR, first_order=False)
    opt = torch.optim.Adam(maml.parameters(), lr=META_LR)
    sx, sy, qx, qy = data

    def step():
        opt.zero_grad()
        for t in range(tasks):
            learner = maml.clone()
            learner.adapt(F.cross_entropy(learner(sx[t]), sy[t]))
            (F.cross_entropy(learner(qx[t]), qy[t]) / tasks).backward()
        opt.step()

    step = _synchronized(torch, device, step)
    step()
    return step, {"import": how}


def higher_runner(torch, data, tasks, device):
    """``higher``'s MAML pattern: a functional copy of the model per task, one differentiable SGD step."""
    try:
        import higher
    except Exception as e:  # noqa: BLE001 - any import failure is a reason to skip, reported in the JSON
        raise ImportError(f"higher is not importable ({type(e).__name__}: {e})") from e
    F = torch.nn.functional
    model = _torch_model(torch, device)
    inner_opt = torch.optim.SGD(model.parameters(), lr=INNER_LR)
    opt = torch.optim.Adam(model.parameters(), lr=META_LR)
    sx, sy, qx, qy = data

    def step():
        opt.zero_grad()
        for t in range(tasks):
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
                diffopt.step(F.cross_entropy(fmodel(sx[t]), sy[t]))
                (F.cross_entropy(fmodel(qx[t]), qy[t]) / tasks).backward()
        opt.step()

    step = _synchronized(torch, device, step)
    step()
    return step, {"version": getattr(higher, "__version__", "unknown")}


TORCH_PEERS = ("torch_loop", "learn2learn", "higher")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--forms", default=DEFAULT_FORMS, help=f"comma-separated, of {sorted(FORMS)}")
    ap.add_argument("--steps", type=int, default=5, help="timed rounds (after one warm-up step of each form)")
    ap.add_argument("--slow-steps", type=int, default=1,
                    help="timed steps of the slow forms vmap+lax and map+lax (1-2 min a step on 2 CPU "
                         "cores), in the first rounds")
    ap.add_argument("--tasks", type=int, default=TASKS, help="meta-batch size (32 in the reference setting)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch peers")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="torch.set_num_threads (0: os.cpu_count()); on a shared, busy CPU 1 avoids "
                         "OpenMP oversubscription")
    ap.add_argument("--torch-device", default="auto",
                    help="device of the PyTorch peers: auto (cuda when torch sees a GPU), cpu, cuda or cuda:N")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench/omniglot_step.json")
    args = ap.parse_args(argv)
    forms = [f.strip() for f in args.forms.split(",") if f.strip()]
    bad = [f for f in forms if f not in FORMS]
    if bad:
        ap.error(f"unknown forms {bad}; valid: {sorted(FORMS)}")
    tasks = args.tasks

    import jax

    images, source = _load_images(args.seed)
    out = {"command": " ".join(["python", "benchmarks/omniglot_step.py", *(argv if argv is not None else sys.argv[1:])]),
           "config": {"n_way": N_WAY, "k_shot": K_SHOT, "q_query": Q_QUERY, "meta_batch_size": tasks,
                      "inner_steps": 1, "inner_lr": INNER_LR, "meta_optimizer": f"adam({META_LR})",
                      "model": "Conv4-64 max-pool, BatchNorm batch statistics", "images": source,
                      "timing": "round-robin: each round runs one step of every form, so all forms share "
                                "the same background load; medians over rounds"},
           "machine": {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
                       "device_kind": jax.devices()[0].device_kind, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                       "cpu_count": os.cpu_count(), "jax": jax.__version__,
                       "loadavg_start": os.getloadavg()}}
    runners, infos = {}, {}
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None and not args.no_torch:
        for name in TORCH_PEERS:
            infos[name] = {"skipped": "torch is not installed"}
    if torch is not None and not args.no_torch:
        threads = args.torch_threads or os.cpu_count() or 1
        torch.set_num_threads(threads)
        device = args.torch_device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            device = str(torch.device(device))
        except RuntimeError as e:
            ap.error(f"--torch-device must be auto, cpu, cuda or cuda:N, got {args.torch_device!r} ({e})")
        out["machine"]["torch"] = torch.__version__
        out["machine"]["torch_threads"] = threads
        out["machine"]["torch_device"] = device
        if device.startswith("cuda"):
            out["machine"]["torch_device_name"] = torch.cuda.get_device_name(torch.device(device))
            out["machine"]["torch_tf32"] = {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                                            "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32}
        torch.manual_seed(args.seed)
        data = _torch_data(torch, images, args.seed, tasks, device)
        peers = {"torch_loop": torch_loop_runner, "learn2learn": l2l_runner, "higher": higher_runner}
        for name, make in peers.items():
            try:
                runners[name], infos[name] = make(torch, data, tasks, device)
            except ImportError as e:
                if name == "torch_loop":
                    raise
                infos[name] = {"skipped": str(e)}
        print("torch peers ready: " + ", ".join(sorted(n for n in peers if n in runners)), flush=True)

    jr, ji, sampling_s = jmeta_runners(forms, images, args.seed, tasks)
    runners.update(jr)
    infos.update(ji)

    times = {name: [] for name in runners}
    for r in range(max(args.steps, args.slow_steps)):
        for name, run in runners.items():
            limit = args.slow_steps if name in SLOW_FORMS else args.steps
            if r >= limit:
                continue
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
        print(f"round {r + 1}: " + "  ".join(f"{n}={ts[-1]:.2f}s" for n, ts in times.items() if len(ts) > r),
              flush=True)

    res = {}
    for name, info in infos.items():
        info = dict(info)
        holder = info.pop("_holder", None)
        if times.get(name):  # a form with no timed steps (--steps 0 / --slow-steps 0) has no median
            info["median_step_s"] = statistics.median(times[name])
            info["step_times_s"] = times[name]
        if holder is not None and holder["metrics"] is not None:
            info["loss_after"] = float(holder["metrics"]["loss"])
        res[name] = info
    refs = {k: res[k]["median_step_s"] for k in TORCH_PEERS if "median_step_s" in res.get(k, {})}
    for name, r in res.items():
        if name in TORCH_PEERS or "median_step_s" not in r:
            continue
        for ref, t in refs.items():
            r[f"ratio_to_{ref}"] = r["median_step_s"] / t
            r[f"speedup_over_{ref}"] = t / r["median_step_s"]
        r["sampling_fraction"] = sampling_s / r["median_step_s"]
    out["results"] = res
    out["sampling_median_s"] = sampling_s
    out["machine"]["loadavg_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=2)
    for name, r in res.items():
        if "median_step_s" not in r:
            print(f"{name:18s} {r}")
            continue
        extra = "  ".join(f"{k}={v:.2f}" for k, v in r.items() if k.startswith("ratio"))
        comp = f"compile {r['compile_s']:6.2f} s  " if "compile_s" in r else " " * 18
        print(f"{name:18s} {comp}step {r['median_step_s']:7.3f} s  {extra}")
    print(f"episode sampling {sampling_s * 1e3:.2f} ms per meta-batch; wrote {args.out}")


if __name__ == "__main__":
    main()
