"""The microbenchmark suite runs end to end on a tiny grid; output schema checked (no timing asserted)."""

from __future__ import annotations

import csv
import json
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def suite():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import suite as mod  # noqa: PLC0415

    return mod


@pytest.fixture(scope="module")
def result(suite, tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    res = suite.main(["--grid", "tiny", "--out", str(out)])
    return out, res


RUN_KEYS = {"model", "algorithm", "inner_steps", "meta_batch", "remat", "status", "trace_s", "lower_s", "compile_s",
            "step_median_s", "step_q1_s", "step_q3_s", "step_iqr_s", "flops", "xla_flops", "flops_per_s",
            "peak_flops", "fraction_of_peak", "tasks_per_s", "mem_total_bytes", "mem_temp_bytes",
            "mem_argument_bytes", "device_peak_bytes"}


def test_outputs_and_schema(result, suite):
    out, res = result
    for name in ("results.json", "results.csv", "summary.txt", "time_vs_steps.png", "memory_vs_steps.png",
                 "compile_vs_steps.png"):
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "results.json").read_text())
    assert data["grid"] == "tiny" and data["device"]["platform"] == "cpu"
    runs = data["runs"]
    assert len(runs) == len(suite.configurations(suite.GRIDS["tiny"])) == 6
    for r in runs:
        assert r["status"] == "ok", r
        assert RUN_KEYS <= set(r), RUN_KEYS - set(r)
        assert r["compile_s"] > 0 and r["step_median_s"] > 0 and r["step_q1_s"] <= r["step_q3_s"]
        assert r["flops"] > 0 and r["mem_total_bytes"] > 0 and r["loss_finite"]
        assert r["fraction_of_peak"] is None  # CPU peak unknown
    # FLOPs follow the inner-loop length (the jaxpr count multiplies scan bodies; XLA's does not)
    by = {(r["algorithm"], r["remat"], r["inner_steps"]): r for r in runs}
    assert by[("maml", "none", 2)]["flops"] > 1.3 * by[("maml", "none", 1)]["flops"]
    rat = data["ratios"]
    assert {x["inner_steps"] for x in rat["second_over_first_order"]} == {1, 2}
    assert all(x["flops"] > 1 for x in rat["second_over_first_order"])  # second order costs more FLOPs
    assert {x["remat"] for x in rat["remat_over_none"]} == {"full"}
    assert len(rat["compile_most_over_fewest_steps"]) == 3
    (h,) = rat["hvp_over_grad"]
    assert h["hvp_flops"] > h["grad_flops"] > 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {"model", "algorithm", "step_median_s", "mem_total_bytes"} <= set(rows[0])
    text = (out / "summary.txt").read_text()
    assert "second-order / first-order" in text and "Hessian-vector product" in text


def test_jaxpr_flops_counts_scan_length():
    import jax
    import jax.numpy as jnp

    sys.path.insert(0, str(REPO / "benchmarks"))
    import _common  # noqa: PLC0415

    def f(w, x, n):
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=n)[0]

    a = jnp.ones((4, 8))
    w = jnp.ones((8, 8))
    f1, _ = _common.jaxpr_flops(jax.make_jaxpr(lambda w, x: f(w, x, 1))(w, a))
    f5, _ = _common.jaxpr_flops(jax.make_jaxpr(lambda w, x: f(w, x, 5))(w, a))
    assert f1 == 2 * 4 * 8 * 8 + 4 * 8  # matmul + tanh
    assert f5 == 5 * f1
    assert _common.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4e12
    assert _common.peak_flops("NVIDIA H100 PCIe", "float32") == 51.2e12
    assert _common.peak_flops("cpu") is None


def test_bad_arguments(suite):
    with pytest.raises(SystemExit):
        suite.parse_args(["--models", "vgg"])
    with pytest.raises(SystemExit):
        suite.parse_args(["--task-parallel", "threads"])
    with pytest.raises(SystemExit):
        suite.parse_args(["--conv-impl", "cudnn"])
    args, _ = suite.parse_args(["--conv-impl", "patches", "--models", "conv4_mini"])
    assert args.conv_impl == "patches"


def test_conv_impl_reaches_the_image_models(suite):
    """--conv-impl builds the image workloads with that form (a 'patches' model has no convolution op)."""
    import jax

    for name, shape in (("conv4", (28, 28, 1)), ("conv4_mini", (84, 84, 3))):
        for impl, has_conv in (("patches", False), ("lax", True)):
            wl, why = suite.build_workload(name, conv_impl=impl)
            assert wl is not None, why
            x = jax.numpy.zeros((1, *shape))
            jaxpr = jax.make_jaxpr(lambda p, s: wl.model.apply(p, s, x, train=True))(wl.model.params, wl.model.state)
            assert ("conv_general_dilated" in str(jaxpr)) == has_conv, (name, impl)
            assert impl in wl.note


def test_imaml_on_custom_vjp_convolutions_uses_reverse_hvp(suite):
    """patches_vjp has no forward mode: the suite's iMAML on it must use reverse-over-reverse HVPs (it failed
    with 'can't apply forward-mode autodiff (jvp) to a custom_vjp function' on the CPU's default form)."""
    for impl, hvp in (("patches_vjp", "reverse"), ("lax", "forward"), ("patches", "forward")):
        wl, _ = suite.build_workload("conv4", conv_impl=impl)
        assert wl.conv_impl == impl
        alg, why = suite.build_algorithm("imaml", wl, 1, "none")
        assert alg is not None, why
        assert alg.hvp == hvp
    assert suite.build_workload("mlp")[0].conv_impl is None
