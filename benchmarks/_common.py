"""Shared helpers of the benchmark programs: timing, compiled-program statistics, FLOP counts, device peaks.

Nothing here runs at import time; ``jax`` is imported by the callers.

FLOPs. XLA's ``compiled.cost_analysis()["flops"]`` counts the body of a
``while`` loop once, whatever its trip count, so for a meta-step whose inner
loop is a ``lax.scan`` of K steps it reports (almost) the same number for
K = 2 and K = 50 (measured: 241k FLOPs for both on a small MLP). The suite
therefore also counts FLOPs on the step's jaxpr (:func:`jaxpr_flops`): matmuls
and convolutions exactly (2 per multiply-add), elementwise ops and
reductions as one FLOP per element, ``scan`` bodies multiplied by their
length, ``cond`` as its most expensive branch; ``while`` loops of unknown trip
count are counted once and flagged. Both numbers are written out.
"""

from __future__ import annotations

import json
import math
import pathlib
import statistics
import time
from typing import Any, Callable

# Peak dense FLOP/s per device kind (vendor datasheets, dense, no sparsity).
# Matched by substring of ``device.device_kind`` (lower case), first match wins.
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("h100 pcie", {"bfloat16": 756e12, "float32": 51.2e12}),
    ("h100", {"bfloat16": 989.4e12, "float32": 66.9e12}),      # H100 SXM5 (e.g. "NVIDIA H100 80GB HBM3")
    ("h200", {"bfloat16": 989.4e12, "float32": 66.9e12}),      # H200 SXM: H100 compute, more/faster HBM
    ("a100", {"bfloat16": 312e12, "float32": 19.5e12}),        # A100 SXM4 / PCIe
    ("tpu v5 lite", {"bfloat16": 197e12, "float32": None}),    # TPU v5e
    ("tpu v5p", {"bfloat16": 459e12, "float32": None}),
    ("tpu v4", {"bfloat16": 275e12, "float32": None}),
]
PEAK_FLOPS_SOURCES = ("NVIDIA H100 Tensor Core GPU datasheet (SXM5: 989.4 TFLOP/s dense BF16, 66.9 TFLOP/s FP32; "
                      "PCIe: 756 / 51.2); NVIDIA H200 datasheet (same compute as H100 SXM); NVIDIA A100 datasheet; "
                      "Google Cloud TPU system architecture pages. FP32 means non-tensor-core FP32; CPU peaks are "
                      "unknown (not reported).")


def peak_flops(device_kind: str, dtype: str = "float32") -> float | None:
    """Datasheet peak FLOP/s of a device kind for ``dtype``; ``None`` if unknown (e.g. any CPU)."""
    kind = device_kind.lower()
    for sub, table in PEAK_FLOPS:
        if sub in kind:
            return table.get(dtype)
    return None


def device_info() -> dict:
    import os
    import platform

    import jax

    d = jax.devices()[0]
    return {"platform": jax.default_backend(), "device_kind": d.device_kind, "device_count": jax.device_count(),
            "jax": jax.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "peak_flops_float32": peak_flops(d.device_kind, "float32"),
            "peak_flops_bfloat16": peak_flops(d.device_kind, "bfloat16")}


def median_iqr(samples: list[float]) -> tuple[float, float, float]:
    """``(median, q1, q3)``."""
    if not samples:
        return math.nan, math.nan, math.nan
    if len(samples) == 1:
        return samples[0], samples[0], samples[0]
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return statistics.median(samples), q1, q3


def time_calls(call: Callable[[], Any], *, warmup: int, repeats: int, min_sample_s: float = 0.01) -> dict:
    """Times ``call`` (which must return something to block on) after ``warmup`` calls.

    Each of the ``repeats`` samples runs ``n`` back-to-back calls (``n`` chosen
    from the first timed call so that a sample lasts at least ``min_sample_s``,
    which keeps dispatch noise out of micro-steps) and blocks on the last
    result; the per-call time of each sample is recorded.
    """
    import jax

    for _ in range(max(warmup, 1)):
        jax.block_until_ready(call())
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    one = time.perf_counter() - t0
    n = max(1, min(1000, int(min_sample_s / max(one, 1e-9))))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = None
        for _ in range(n):
            out = call()
        jax.block_until_ready(out)
        samples.append((time.perf_counter() - t0) / n)
    med, q1, q3 = median_iqr(samples)
    return {"median_s": med, "q1_s": q1, "q3_s": q3, "iqr_s": q3 - q1, "calls_per_sample": n, "samples_s": samples}


def memory_dict(compiled) -> dict:
    """XLA's ``memory_analysis()`` of a compiled program as a dict (bytes); ``total`` = args + outputs + temps - aliased."""
    ma = compiled.memory_analysis()
    if ma is None:
        return {}
    out = {k: int(getattr(ma, f"{k}_size_in_bytes")) for k in
           ("argument", "output", "temp", "alias", "generated_code")}
    out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def xla_cost(compiled) -> dict:
    """``cost_analysis()`` flops and bytes accessed (loop bodies counted once by XLA)."""
    ca = compiled.cost_analysis()
    if isinstance(ca, list):
        ca = ca[0] if ca else {}
    ca = ca or {}
    return {"flops": float(ca.get("flops", math.nan)), "bytes_accessed": float(ca.get("bytes accessed", math.nan))}


def device_peak_bytes() -> int | None:
    """``peak_bytes_in_use`` of device 0 (GPU/TPU; process-wide and monotone), ``None`` on CPU."""
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001
        return None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


# -- FLOPs from a jaxpr ----------------------------------------------------------------------------------------------
_ELEMENTWISE = {
    "add", "add_any", "sub", "mul", "div", "rem", "neg", "max", "min", "abs", "sign", "exp", "exp2", "log", "log1p",
    "expm1", "tanh", "logistic", "sqrt", "rsqrt", "cbrt", "pow", "integer_pow", "sin", "cos", "tan", "erf", "erfc",
    "erf_inv", "atan2", "square", "reciprocal", "floor", "ceil", "round", "clamp", "select_n", "eq", "ne", "lt", "le",
    "gt", "ge", "and", "or", "not", "xor", "is_finite", "nextafter",
}
_REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin", "reduce_and", "reduce_or",
               "cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp", "reduce_precision"}


def _size(aval) -> int:
    return int(math.prod(getattr(aval, "shape", ()) or (1,)))


def _eqn_flops(eqn) -> float:
    name = eqn.primitive.name
    if name == "dot_general":
        (lc, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval
        k = math.prod(lhs.shape[i] for i in lc) if lc else 1
        return 2.0 * _size(eqn.outvars[0].aval) * k
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval
        dn = eqn.params["dimension_numbers"]
        out_feat = rhs.shape[dn.rhs_spec[0]]
        return 2.0 * _size(eqn.outvars[0].aval) * (_size(rhs) / out_feat)
    if name in _ELEMENTWISE:
        return float(_size(eqn.outvars[0].aval))
    if name in _REDUCTIONS or name.startswith("reduce_"):
        return float(_size(eqn.invars[0].aval))
    if name == "reduce_window" or name.startswith("reduce_window"):
        return float(_size(eqn.outvars[0].aval)) * math.prod(eqn.params.get("window_dimensions", (1,)))
    return 0.0


def jaxpr_flops(jaxpr) -> tuple[float, list[str]]:
    """FLOPs of a (closed) jaxpr with loop trip counts (module docstring). Returns ``(flops, notes)``."""
    from jax.extend import core as jcore

    notes: set[str] = set()

    def inner(j):
        return j.jaxpr if isinstance(j, jcore.ClosedJaxpr) else j

    def subjaxprs(params):
        for v in params.values():
            if isinstance(v, (jcore.Jaxpr, jcore.ClosedJaxpr)):
                yield inner(v)
            elif isinstance(v, (list, tuple)):
                for w in v:
                    if isinstance(w, (jcore.Jaxpr, jcore.ClosedJaxpr)):
                        yield inner(w)

    def count(j) -> float:
        total = 0.0
        for eqn in j.eqns:
            name = eqn.primitive.name
            if name == "scan":
                total += eqn.params["length"] * count(inner(eqn.params["jaxpr"]))
            elif name == "while":
                notes.add("a while loop of unknown trip count was counted once")
                total += count(inner(eqn.params["body_jaxpr"])) + count(inner(eqn.params["cond_jaxpr"]))
            elif name == "cond":
                total += max(count(inner(b)) for b in eqn.params["branches"])
            else:
                subs = list(subjaxprs(eqn.params))
                total += sum(count(s) for s in subs) if subs else _eqn_flops(eqn)
        return total

    return count(inner(jaxpr)), sorted(notes)


def write_csv(path, rows: list[dict]) -> None:
    """Rows of flat dicts to CSV (union of keys, in first-seen order)."""
    import csv

    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in keys})


def write_json(path: pathlib.Path, out: dict) -> None:
    """Writes ``out`` as indented JSON to ``path`` atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(path)


def train_and_evaluate(iterations: int, eval_every: int, train: Callable[[int], dict], evaluate: Callable[[int], Any],
                       path: pathlib.Path, out: dict, t0: float) -> None:
    """The loop of the reduced-protocol RL benchmarks: ``evaluate(0)``, then ``train(it)`` for ``it = 1 ..
    iterations`` with ``evaluate(it)`` every ``eval_every`` iterations and after the last one. ``train(it)`` runs one
    meta-iteration to completion (``block_until_ready``) and returns its scalar metrics (``return_pre``,
    ``return_post``, ``accepted``, ``kl``, ...); the loop times it and appends ``{"iteration", "wall_s", **metrics}``
    to ``out["train"]`` (``out`` is written to ``path`` after every iteration, so the training rows survive a run
    that stops between evaluations); ends with ``out["done"] = True`` and ``out["wall_s"]`` (seconds since ``t0``)
    written."""
    evaluate(0)
    for it in range(1, iterations + 1):
        t1 = time.perf_counter()
        m = train(it)
        dt = time.perf_counter() - t1
        out["train"].append({"iteration": it, "wall_s": dt, **m})
        extra = "".join(f"  {k} {m[k]:.2f}" for k in m if k not in ("return_pre", "return_post", "accepted", "kl"))
        print(f"  it {it:4d}: {dt:6.2f} s  batch return {m['return_pre']:8.2f} -> {m['return_post']:8.2f}{extra}  "
              f"accepted {m['accepted']}", flush=True)
        if it % eval_every == 0 or it == iterations:
            evaluate(it)
        else:
            write_json(path, out)
    out["done"] = True
    out["wall_s"] = time.perf_counter() - t0
    write_json(path, out)
    print(f"wrote {path}")
