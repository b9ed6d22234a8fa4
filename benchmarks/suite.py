"""The meta-gradient microbenchmark suite: time, memory and FLOPs of one meta-step.

Commands (repo root):

    python benchmarks/suite.py --grid small --out runs/bench/suite-small   # CPU, about a minute
    python benchmarks/suite.py --grid full --out runs/bench/suite-full     # GPU (hours of configs: filter!)
    python benchmarks/suite.py --grid full --models conv4 --algorithms maml,fomaml --inner-steps 1,5,25
    python benchmarks/suite.py --grid tiny --out /tmp/suite                # seconds; what the test runs

For every configuration of the grid (algorithm x model x inner steps x
meta-batch size x remat policy) it builds jmeta's whole meta-step
(``make_meta_step``: sample tasks on the device, task objectives, meta-gradient,
Adam update) and records

* ``trace_s``, ``lower_s``, ``compile_s``: tracing, lowering to StableHLO and
  XLA compilation, apart;
* ``step_median_s``, ``step_q1_s``, ``step_q3_s``, ``step_iqr_s``: the per-call
  time of the compiled step after warm-up (``block_until_ready``; several
  back-to-back calls per sample for micro-steps, see ``_common.time_calls``);
* ``mem_*``: XLA's ``memory_analysis()`` of the compiled step (arguments,
  outputs, temporaries, total); on GPU/TPU also ``device_peak_bytes`` from
  ``device.memory_stats()`` (process-wide peak, monotone over the run: use
  ``--only I`` to run configuration ``I`` alone for a clean per-configuration peak);
* ``flops``: FLOPs per step counted on the jaxpr with inner-loop trip counts
  (``_common.jaxpr_flops``), and ``xla_flops`` from ``cost_analysis()`` (which
  counts loop bodies once: not the per-step cost when K > 1);
* ``flops_per_s`` (= ``flops / step_median_s``), ``peak_flops`` of the device
  kind (datasheet table in ``_common.PEAK_FLOPS``; unknown for CPUs) and
  ``fraction_of_peak``;
* ``tasks_per_s``.

Then ratios measured in the same run: second-order / first-order (MAML /
FOMAML: time, memory, FLOPs), compile time at the most vs the fewest inner
steps, remat memory and time relative to no remat, implicit / second-order
(iMAML / MAML), and Hessian-vector product / gradient of one support loss
(``hvp`` section: forward-over-reverse ``jvp(grad)`` vs ``grad``).

Outputs in ``--out``: ``results.json`` (everything), ``results.csv`` (one row
per configuration), ``time_vs_steps.png``, ``memory_vs_steps.png``,
``compile_vs_steps.png`` and ``summary.txt``.

Workloads: ``mlp`` is the sinusoid network of MAML (1-40-40-1 ReLU, K=10
support and query points, MSE); ``conv4`` is Conv4-64 on Omniglot-shaped 5-way
1-shot tasks with 15 queries per class (28x28x1); ``conv4_mini`` is MAML's mini-ImageNet network
(Conv4-32, max-pool) on 84x84x3 5-way 1-shot tasks with 15 queries; ``resnet12`` (when
``jmeta/models/resnet.py`` exists) on mini-ImageNet-shaped 5-way 1-shot tasks
(84x84x3). Image tasks are random on-device tensors: step cost does not depend
on pixel values. ``--conv-impl`` chooses the convolution form of the image
models (:data:`jmeta.ops.CONV_IMPLS`; default ``auto``); each row records the
form it resolved to, so runs with different forms compare side by side.
Models and algorithms whose module is missing are skipped with a note. Absolute times on a shared CPU are noise; compare ratios from one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import inspect
import json
import math
import pathlib
import sys
import time
import traceback

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import _common  # noqa: E402

ALGORITHMS = ("maml", "fomaml", "reptile", "anil", "imaml")
MODELS = ("mlp", "conv4", "conv4_mini", "resnet12")
REMAT = ("none", "full", "dots", "dots_no_batch")

GRIDS = {
    # what tests/train/test_benchmark_suite.py runs: every code path, seconds
    "tiny": dict(models=["mlp"], algorithms=["maml", "fomaml"], inner_steps=[1, 2],
                 meta_batch={"mlp": [2]}, remat=["none", "full"], remat_algorithms=["maml"],
                 warmup=1, repeats=2, hvp=True, mlp_hidden=(8,)),
    # CPU: the questions of the suite on the MLP (compile 1 vs 50 steps, remat memory, 2nd/1st order)
    "small": dict(models=["mlp"], algorithms=list(ALGORITHMS), inner_steps=[1, 5, 50],
                  meta_batch={"mlp": [16]}, remat=["none", "full", "dots"], remat_algorithms=["maml"],
                  warmup=2, repeats=7, hvp=True, mlp_hidden=(40, 40)),
    # GPU: everything
    "full": dict(models=list(MODELS), algorithms=list(ALGORITHMS), inner_steps=[1, 2, 5, 10, 25, 50],
                 meta_batch={"mlp": [25, 100, 1000], "conv4": [4, 16, 32], "conv4_mini": [4, 16], "resnet12": [4, 8]},
                 remat=list(REMAT), remat_algorithms=["maml"], warmup=3, repeats=20, hvp=True,
                 mlp_hidden=(40, 40)),
}


# -- workloads ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Workload:
    name: str
    model: object  # jmeta.models.Model
    loss: str
    sample: object  # sample(key, n) -> TaskBatch
    head: str  # ANIL's adapted parameter prefix
    inner_lr: float
    note: str = ""
    conv_impl: str | None = None  # the resolved convolution form (None: no convolutions)


def _image_sampler(n_way, k_shot, q_query, shape):
    import jax
    import jax.numpy as jnp

    from jmeta.tasks import TaskBatch

    def sample(key, n, data=None):
        k1, k2 = jax.random.split(key)
        sx = jax.random.normal(k1, (n, n_way * k_shot, *shape))
        qx = jax.random.normal(k2, (n, n_way * q_query, *shape))
        sy = jnp.tile(jnp.repeat(jnp.arange(n_way, dtype=jnp.int32), k_shot), (n, 1))
        qy = jnp.tile(jnp.repeat(jnp.arange(n_way, dtype=jnp.int32), q_query), (n, 1))
        return TaskBatch(sx, sy, qx, qy)

    return sample


def _head_of(params) -> str:
    for name in ("head", "classifier", "fc", "linear", "out"):
        if name in params:
            return name
    return list(params)[-1]


def _call_with_known(fn, known: dict):
    """Calls a model factory with the keyword arguments its signature accepts."""
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in known.items() if k in params}
    return fn(**kwargs)


def build_workload(name: str, *, mlp_hidden=(40, 40), conv_impl: str = "auto") -> tuple[Workload | None, str]:
    """The model and task family of a workload, or ``(None, why)`` when its module is missing.

    ``conv_impl`` is passed to the image models (ignored by the MLP).
    """
    from jmeta.ops import resolve_conv_impl

    if name == "mlp":
        from jmeta.models import mlp
        from jmeta.tasks import Sinusoid

        model = mlp(1, mlp_hidden, 1)
        return Workload("mlp", model, "mse", Sinusoid(10, 10).sample, f"layers_{len(mlp_hidden)}", 0.01,
                        f"MLP 1-{'-'.join(map(str, mlp_hidden))}-1 ReLU, sinusoid K=10, Q=10"), ""
    if name in ("conv4", "conv4_mini"):
        if importlib.util.find_spec("jmeta.models.conv") is None:
            return None, f"{name} skipped: jmeta/models/conv.py does not exist"
        mod = importlib.import_module("jmeta.models.conv")
        shape, hidden = ((28, 28, 1), 64) if name == "conv4" else ((84, 84, 3), 32)
        model = _call_with_known(mod.conv4, {"n_way": 5, "input_shape": shape, "hidden": hidden,
                                             "conv_impl": conv_impl})
        return Workload(name, model, "cross_entropy", _image_sampler(5, 1, 15, shape),
                        _head_of(model.params), 0.1,
                        f"Conv4-{hidden} (max-pool), 5-way 1-shot 15 queries, {'x'.join(map(str, shape))} "
                        f"random images, conv_impl={conv_impl}", resolve_conv_impl(conv_impl)), ""
    if name == "resnet12":
        if importlib.util.find_spec("jmeta.models.resnet") is None:
            return None, "resnet12 skipped: jmeta/models/resnet.py does not exist"
        mod = importlib.import_module("jmeta.models.resnet")
        factory = getattr(mod, "resnet12", None)
        if factory is None:
            return None, "resnet12 skipped: jmeta.models.resnet has no resnet12()"
        model = _call_with_known(factory, {"n_way": 5, "num_classes": 5, "input_shape": (84, 84, 3),
                                           "conv_impl": conv_impl})
        return Workload("resnet12", model, "cross_entropy", _image_sampler(5, 1, 15, (84, 84, 3)),
                        _head_of(model.params), 0.1,
                        f"ResNet-12, 5-way 1-shot 15 queries, 84x84x3 random images, conv_impl={conv_impl}",
                        resolve_conv_impl(conv_impl)), ""
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")


def build_algorithm(name: str, wl: Workload, num_steps: int, remat: str):
    """An algorithm of the grid, or ``(None, why)``."""
    from jmeta.algorithms import ANIL, FOMAML, MAML, Reptile

    r = None if remat == "none" else remat
    common = dict(loss=wl.loss, inner_lr=wl.inner_lr, num_steps=num_steps)
    if name == "maml":
        return MAML(wl.model.apply, remat=r, **common), ""
    if name == "fomaml":
        return FOMAML(wl.model.apply, remat=r, **common), ""
    if name == "anil":
        return ANIL(wl.model.apply, adapt_params=wl.head, remat=r, **common), ""
    if name == "reptile":
        if r is not None:
            return None, "reptile has no differentiated inner loop: remat does not apply"
        return Reptile(wl.model.apply, **common), ""
    if name == "imaml":
        if importlib.util.find_spec("jmeta.algorithms.imaml") is None:
            return None, "imaml skipped: jmeta/algorithms/imaml.py does not exist"
        if r is not None:
            return None, "imaml stores no inner loop: remat does not apply"
        mod = importlib.import_module("jmeta.algorithms.imaml")
        cls = getattr(mod, "IMAML", None) or getattr(mod, "iMAML")
        hvp = "reverse" if wl.conv_impl == "patches_vjp" else "forward"  # custom_vjp: no forward mode
        return cls(wl.model.apply, reg_lambda=1.0, hvp=hvp, **common), ""
    raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {name!r}")


# -- one configuration -----------------------------------------------------------------------------------------
def bench_config(wl: Workload, algorithm: str, num_steps: int, meta_batch: int, remat: str, *, warmup: int,
                 repeats: int, dtype: str, task_parallel) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from jmeta.train import init_train_state, make_meta_step

    row = {"model": wl.name, "algorithm": algorithm, "inner_steps": num_steps, "meta_batch": meta_batch,
           "remat": remat, "dtype": dtype, "task_parallel": str(task_parallel), "conv_impl": wl.conv_impl}
    alg, why = build_algorithm(algorithm, wl, num_steps, remat)
    if alg is None:
        row.update(status="skipped", note=why)
        return row
    opt = optax.adam(1e-3)
    state = init_train_state(alg, wl.model.params, wl.model.state, opt)
    step = make_meta_step(alg, wl.sample, opt, meta_batch_size=meta_batch, task_parallel=task_parallel,
                          compute_dtype=None if dtype == "float32" else jnp.dtype(dtype))
    key = jax.random.key(0)
    t0 = time.perf_counter()
    traced = step.trace(state, key)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    compiled = lowered.compile()
    t3 = time.perf_counter()
    flops, flop_notes = _common.jaxpr_flops(traced.jaxpr)
    mem = _common.memory_dict(compiled)
    xla = _common.xla_cost(compiled)
    box = {"state": state}

    def call():
        box["state"], m = compiled(box["state"], key)
        return m["loss"]

    timing = _common.time_calls(call, warmup=warmup, repeats=repeats)
    final_loss = float(call())
    peak = _common.peak_flops(jax.devices()[0].device_kind, dtype)
    med = timing["median_s"]
    row.update(
        status="ok", trace_s=t1 - t0, lower_s=t2 - t1, compile_s=t3 - t2,
        step_median_s=med, step_q1_s=timing["q1_s"], step_q3_s=timing["q3_s"], step_iqr_s=timing["iqr_s"],
        calls_per_sample=timing["calls_per_sample"], repeats=repeats,
        flops=flops, xla_flops=xla["flops"], xla_bytes_accessed=xla["bytes_accessed"],
        flops_per_s=flops / med if med > 0 else math.nan, peak_flops=peak,
        fraction_of_peak=(flops / med / peak) if peak and med > 0 else None,
        tasks_per_s=meta_batch / med if med > 0 else math.nan,
        **{f"mem_{k}_bytes": v for k, v in mem.items()},
        device_peak_bytes=_common.device_peak_bytes(), loss_finite=bool(math.isfinite(final_loss)),
        note="; ".join(flop_notes))
    return row


def bench_hvp(wl: Workload, meta_batch: int, *, warmup: int, repeats: int) -> dict:
    """Time and FLOPs of a Hessian-vector product vs a gradient of the support loss, per task, vmapped."""
    import jax

    from jmeta.losses import get_loss

    loss_fn = get_loss(wl.loss)
    model = wl.model
    tasks = wl.sample(jax.random.key(1), meta_batch)

    def loss(p, x, y):
        return loss_fn(model.apply(p, model.state, x, train=True)[0], y)

    grad_fn = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))

    def hvp_one(p, x, y, v):
        return jax.jvp(lambda q: jax.grad(loss)(q, x, y), (p,), (v,))[1]

    hvp_fn = jax.jit(jax.vmap(hvp_one, in_axes=(None, 0, 0, None)))
    p, v = model.params, jax.tree.map(lambda a: 0.01 * a, model.params)
    out = {"model": wl.name, "meta_batch": meta_batch}
    for name, fn, args in (("grad", grad_fn, (p, tasks.support_x, tasks.support_y)),
                           ("hvp", hvp_fn, (p, tasks.support_x, tasks.support_y, v))):
        traced = fn.trace(*args)
        t0 = time.perf_counter()
        compiled = traced.lower().compile()
        out[f"{name}_compile_s"] = time.perf_counter() - t0
        out[f"{name}_flops"] = _common.jaxpr_flops(traced.jaxpr)[0]
        out[f"{name}_mem_total_bytes"] = _common.memory_dict(compiled).get("total")
        t = _common.time_calls(lambda c=compiled, a=args: c(*a), warmup=warmup, repeats=repeats)
        out[f"{name}_median_s"], out[f"{name}_iqr_s"] = t["median_s"], t["iqr_s"]
    out["hvp_over_grad_time"] = out["hvp_median_s"] / out["grad_median_s"]
    out["hvp_over_grad_flops"] = out["hvp_flops"] / out["grad_flops"]
    return out


# -- ratios, plots, summary ------------------------------------------------------------------------------------------
def _ok(rows):
    return [r for r in rows if r.get("status") == "ok"]


def compute_ratios(rows: list[dict], hvp: list[dict]) -> dict:
    ok = _ok(rows)

    def find(**kw):
        for r in ok:
            if all(r.get(k) == v for k, v in kw.items()):
                return r
        return None

    def ratio(a, b, key):
        if a is None or b is None or not b.get(key):
            return None
        return a[key] / b[key]

    out = {"second_over_first_order": [], "compile_most_over_fewest_steps": [], "remat_over_none": [],
           "implicit_over_second_order": [], "hvp_over_grad": hvp}
    keys = sorted({(r["model"], r["inner_steps"], r["meta_batch"]) for r in ok})
    for model, k, b in keys:
        base = dict(model=model, inner_steps=k, meta_batch=b)
        maml = find(algorithm="maml", remat="none", **base)
        fo = find(algorithm="fomaml", remat="none", **base)
        if maml and fo:
            out["second_over_first_order"].append(dict(
                base, time=ratio(maml, fo, "step_median_s"), memory=ratio(maml, fo, "mem_total_bytes"),
                flops=ratio(maml, fo, "flops"), compile=ratio(maml, fo, "compile_s")))
        im = find(algorithm="imaml", remat="none", **base)
        if maml and im:
            out["implicit_over_second_order"].append(dict(
                base, time=ratio(im, maml, "step_median_s"), memory=ratio(im, maml, "mem_total_bytes")))
        for r in ok:
            if r["algorithm"] == "maml" and r["remat"] != "none" and all(r[k2] == v for k2, v in base.items()):
                out["remat_over_none"].append(dict(
                    base, remat=r["remat"], memory=ratio(r, maml, "mem_total_bytes"),
                    temp_memory=ratio(r, maml, "mem_temp_bytes"), time=ratio(r, maml, "step_median_s"),
                    flops=ratio(r, maml, "flops")))
    groups = sorted({(r["model"], r["algorithm"], r["meta_batch"], r["remat"]) for r in ok})
    for model, alg, b, remat in groups:
        rs = sorted((r for r in ok if (r["model"], r["algorithm"], r["meta_batch"], r["remat"]) == (model, alg, b, remat)),
                    key=lambda r: r["inner_steps"])
        if len(rs) >= 2:
            lo, hi = rs[0], rs[-1]
            out["compile_most_over_fewest_steps"].append(dict(
                model=model, algorithm=alg, meta_batch=b, remat=remat, fewest=lo["inner_steps"],
                most=hi["inner_steps"], compile=hi["compile_s"] / lo["compile_s"],
                trace=hi["trace_s"] / lo["trace_s"], time=hi["step_median_s"] / lo["step_median_s"]))
    return out


def make_plots(rows: list[dict], out_dir: pathlib.Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = _ok(rows)
    models = sorted({r["model"] for r in ok})
    written = []
    for fname, key, scale, label in (("time_vs_steps.png", "step_median_s", 1e3, "step time (ms, median)"),
                                     ("memory_vs_steps.png", "mem_total_bytes", 2.0 ** -20, "compiled memory (MiB)"),
                                     ("compile_vs_steps.png", "compile_s", 1.0, "compile time (s)")):
        fig, axes = plt.subplots(1, max(len(models), 1), figsize=(5.5 * max(len(models), 1), 4), squeeze=False)
        for ax, model in zip(axes[0], models):
            b = min(r["meta_batch"] for r in ok if r["model"] == model)
            series = sorted({(r["algorithm"], r["remat"]) for r in ok if r["model"] == model})
            for alg, remat in series:
                rs = sorted((r for r in ok if r["model"] == model and r["meta_batch"] == b and r["algorithm"] == alg
                             and r["remat"] == remat and r.get(key) is not None), key=lambda r: r["inner_steps"])
                if rs:
                    ax.plot([r["inner_steps"] for r in rs], [r[key] * scale for r in rs], marker="o",
                            label=alg if remat == "none" else f"{alg} remat={remat}")
            ax.set_xscale("log")
            ticks = sorted({r["inner_steps"] for r in ok if r["model"] == model})
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
            ax.set_xlabel("inner steps")
            ax.set_ylabel(label)
            ax.set_title(f"{model}, meta-batch {b}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=110)
        plt.close(fig)
        written.append(fname)
    return written


def _fmt(x, nd=2):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def summary_text(result: dict) -> str:
    dev, rat = result["device"], result["ratios"]
    ok = _ok(result["runs"])
    lines = [f"jmeta microbenchmark suite, grid={result['grid']}: {len(ok)} configurations measured, "
             f"{sum(r.get('status') == 'skipped' for r in result['runs'])} skipped, "
             f"{sum(r.get('status') == 'error' for r in result['runs'])} failed",
             f"device: {dev['device_kind']} ({dev['platform']}, {dev['device_count']} device(s)), jax {dev['jax']}",
             f"dtype {result['dtype']}, task_parallel {result['task_parallel']}, "
             f"conv_impl {result.get('conv_impl', 'auto')}",
             f"command: {result['command']}", ""]
    lines.append("step time / memory / FLOPs per configuration:")
    lines.append(f"  {'model':8s} {'algorithm':8s} {'K':>3s} {'B':>5s} {'remat':6s} {'compile s':>9s} "
                 f"{'step ms':>9s} {'IQR ms':>8s} {'MiB':>8s} {'MFLOP':>10s} {'GFLOP/s':>8s} {'%peak':>6s}")
    for r in ok:
        frac = r.get("fraction_of_peak")
        lines.append(f"  {r['model']:8s} {r['algorithm']:8s} {r['inner_steps']:3d} {r['meta_batch']:5d} {r['remat']:6s} "
                     f"{r['compile_s']:9.2f} {r['step_median_s'] * 1e3:9.3f} {r['step_iqr_s'] * 1e3:8.3f} "
                     f"{r['mem_total_bytes'] / 2**20:8.2f} {r['flops'] / 1e6:10.2f} {r['flops_per_s'] / 1e9:8.2f} "
                     f"{'unknown' if frac is None else f'{100 * frac:.1f}':>6s}")
    lines.append("")
    lines.append("second-order / first-order (MAML / FOMAML):")
    for x in rat["second_over_first_order"]:
        lines.append(f"  {x['model']} K={x['inner_steps']} B={x['meta_batch']}: time {_fmt(x['time'])}x, "
                     f"memory {_fmt(x['memory'])}x, FLOPs {_fmt(x['flops'])}x")
    lines.append("compile time, most / fewest inner steps (lax.scan: should stay near 1):")
    for x in rat["compile_most_over_fewest_steps"]:
        lines.append(f"  {x['model']} {x['algorithm']} remat={x['remat']} B={x['meta_batch']}: "
                     f"K={x['most']} / K={x['fewest']}: compile {_fmt(x['compile'])}x, trace {_fmt(x['trace'])}x, "
                     f"step time {_fmt(x['time'])}x")
    lines.append("remat / no remat (MAML):")
    for x in rat["remat_over_none"]:
        lines.append(f"  {x['model']} K={x['inner_steps']} B={x['meta_batch']} remat={x['remat']}: memory "
                     f"{_fmt(x['memory'])}x (temporaries {_fmt(x['temp_memory'])}x), time {_fmt(x['time'])}x, "
                     f"FLOPs {_fmt(x['flops'])}x")
    lines.append("implicit / second-order (iMAML / MAML):")
    for x in rat["implicit_over_second_order"]:
        lines.append(f"  {x['model']} K={x['inner_steps']} B={x['meta_batch']}: time {_fmt(x['time'])}x, "
                     f"memory {_fmt(x['memory'])}x")
    lines.append("Hessian-vector product / gradient of one support loss (vmapped over the meta-batch):")
    for x in rat["hvp_over_grad"]:
        lines.append(f"  {x['model']} B={x['meta_batch']}: time {_fmt(x['hvp_over_grad_time'])}x, "
                     f"FLOPs {_fmt(x['hvp_over_grad_flops'])}x")
    if result["notes"]:
        lines += ["", "notes:"] + [f"  - {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


# -- driver ------------------------------------------------------------------------------------------------------
def _csv_list(s, cast=str):
    return [cast(x) for x in s.split(",") if x]


def configurations(grid: dict) -> list[tuple]:
    out = []
    for model in grid["models"]:
        for alg in grid["algorithms"]:
            remats = grid["remat"] if alg in grid["remat_algorithms"] else ["none"]
            for b in grid["meta_batch"].get(model, []):
                for remat in remats:
                    for k in grid["inner_steps"]:
                        out.append((model, alg, k, b, remat))
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", choices=sorted(GRIDS), default="small")
    ap.add_argument("--out", default=None, help="output folder (default runs/bench/suite-<grid>)")
    ap.add_argument("--models", type=_csv_list, default=None, help=f"subset of {MODELS}")
    ap.add_argument("--algorithms", type=_csv_list, default=None, help=f"subset of {ALGORITHMS}")
    ap.add_argument("--inner-steps", type=lambda s: _csv_list(s, int), default=None)
    ap.add_argument("--meta-batch", type=lambda s: _csv_list(s, int), default=None,
                    help="meta-batch sizes for every model (default: per model, from the grid)")
    ap.add_argument("--remat", type=_csv_list, default=None, help=f"subset of {REMAT}")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="compute dtype (bfloat16: mixed precision, float32 parameters)")
    ap.add_argument("--task-parallel", default="vmap", help="'vmap', 'map' or a chunk size")
    ap.add_argument("--conv-impl", default="auto",
                    help="convolution form of the image models: auto, lax, patches_vjp or patches "
                         "(jmeta.ops.CONV_IMPLS)")
    ap.add_argument("--only", type=int, default=None, help="run configuration I of the grid alone")
    ap.add_argument("--no-hvp", action="store_true")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    grid = dict(GRIDS[args.grid])
    grid["meta_batch"] = dict(grid["meta_batch"])
    for name, allowed in (("models", MODELS), ("algorithms", ALGORITHMS), ("remat", REMAT)):
        v = getattr(args, name)
        if v is not None:
            bad = [x for x in v if x not in allowed]
            if bad:
                ap.error(f"--{name}: unknown {bad}; valid: {list(allowed)}")
            grid[name] = v
    if args.inner_steps is not None:
        if any(k < 1 for k in args.inner_steps):
            ap.error("--inner-steps must be positive")
        grid["inner_steps"] = args.inner_steps
    if args.meta_batch is not None:
        grid["meta_batch"] = {m: args.meta_batch for m in MODELS}
    for m in grid["models"]:
        grid["meta_batch"].setdefault(m, [4])
    for name in ("repeats", "warmup"):
        if getattr(args, name) is not None:
            grid[name] = getattr(args, name)
    from jmeta.ops import CONV_IMPLS  # imports jax: after parsing, so that --help stays cheap

    if args.conv_impl not in CONV_IMPLS:
        ap.error(f"--conv-impl: unknown {args.conv_impl!r}; valid: {list(CONV_IMPLS)}")
    tp = args.task_parallel
    args.task_parallel = int(tp) if tp.isdigit() else tp
    if args.task_parallel not in ("vmap", "map") and not isinstance(args.task_parallel, int):
        ap.error("--task-parallel must be 'vmap', 'map' or a chunk size")
    return args, grid


def main(argv=None) -> dict:
    args, grid = parse_args(argv)
    import jax  # noqa: F401  (after argument parsing: --help stays cheap)

    out_dir = pathlib.Path(args.out or f"runs/bench/suite-{args.grid}")
    out_dir.mkdir(parents=True, exist_ok=True)
    configs = configurations(grid)
    if args.only is not None:
        if not 0 <= args.only < len(configs):
            raise SystemExit(f"--only must be in [0, {len(configs)}), the grid has {len(configs)} configurations")
        configs = [configs[args.only]]
    notes, workloads, rows = [], {}, []
    t_start = time.perf_counter()
    for model, alg, k, b, remat in configs:
        if model not in workloads:
            wl, why = build_workload(model, mlp_hidden=grid["mlp_hidden"], conv_impl=args.conv_impl)
            workloads[model] = wl
            if wl is None:
                notes.append(why)
        wl = workloads[model]
        if wl is None:
            rows.append(dict(model=model, algorithm=alg, inner_steps=k, meta_batch=b, remat=remat,
                             status="skipped", note=notes[-1] if notes else "model missing"))
            continue
        try:
            row = bench_config(wl, alg, k, b, remat, warmup=grid["warmup"], repeats=grid["repeats"],
                               dtype=args.dtype, task_parallel=args.task_parallel)
        except Exception as e:  # noqa: BLE001 - one failing configuration must not lose the others
            row = dict(model=model, algorithm=alg, inner_steps=k, meta_batch=b, remat=remat, status="error",
                       note=f"{type(e).__name__}: {e}"[:500])
            traceback.print_exc()
        if row.get("status") == "skipped" and row.get("note") and row["note"] not in notes:
            notes.append(row["note"])
        rows.append(row)
        extra = ""
        if row.get("status") == "ok":
            extra = f" compile {row['compile_s']:.2f}s step {row['step_median_s'] * 1e3:.3f}ms"
        print(f"[suite] {model} {alg} K={k} B={b} remat={remat}: {row.get('status')}{extra}", flush=True)
    hvp = []
    if grid["hvp"] and not args.no_hvp and args.only is None:
        for model, wl in workloads.items():
            if wl is not None:
                hvp.append(bench_hvp(wl, min(grid["meta_batch"][model]), warmup=grid["warmup"],
                                     repeats=grid["repeats"]))
    for wl in workloads.values():
        if wl is not None:
            notes.append(f"{wl.name}: {wl.note}; ANIL adapts '{wl.head}'")
    for alg in sorted({r["algorithm"] for r in rows if "while loop" in (r.get("note") or "")}):
        notes.append(f"{alg}: its step has a while loop of data-dependent length (e.g. CG stopping at a "
                     f"tolerance); its 'flops' count one iteration of that loop (a lower bound)")
    if _common.peak_flops(jax.devices()[0].device_kind, args.dtype) is None:
        notes.append(f"peak FLOP/s of '{jax.devices()[0].device_kind}' is unknown: fraction_of_peak not reported")
    notes.append("flops: counted on the jaxpr with loop trip counts; xla_flops (cost_analysis) counts loop bodies once")
    result = {
        "benchmark": "suite", "grid": args.grid, "grid_spec": grid, "dtype": args.dtype,
        "task_parallel": str(args.task_parallel), "conv_impl": args.conv_impl,
        "command": "python benchmarks/suite.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": _common.device_info(), "peak_flops_sources": _common.PEAK_FLOPS_SOURCES,
        "wall_s": time.perf_counter() - t_start, "runs": rows, "hvp": hvp, "notes": notes,
    }
    result["ratios"] = compute_ratios(rows, hvp)
    (out_dir / "results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    _common.write_csv(out_dir / "results.csv", rows)
    result["plots"] = [] if args.no_plots else make_plots(rows, out_dir)
    text = summary_text(result)
    (out_dir / "summary.txt").write_text(text)
    print(text)
    print(f"[suite] wrote {out_dir}/results.json, results.csv, summary.txt"
          f"{', ' + ', '.join(result['plots']) if result['plots'] else ''}")
    return result


if __name__ == "__main__":
    main()
