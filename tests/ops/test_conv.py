"""jmeta.ops.conv: every implementation gives lax.conv's values and derivatives (to third order)."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jmeta.ops import (CONV_IMPLS, conv2d, patches, recommended_conv_impl, recommended_task_parallel,
                       resolve_conv_impl)

CONFIGS = [  # (stride, padding, H, W)
    (1, "SAME", 6, 5),
    (2, "SAME", 7, 7),
    (2, "SAME", 6, 6),
    (1, "VALID", 6, 6),
    ((2, 1), ((1, 0), (2, 1)), 7, 6),
]
FAST = ("patches_vjp", "patches")


@pytest.fixture(autouse=True)
def _full_float32_precision():
    """GPUs run float32 matmuls and convolutions in TF32 by default (relative error ~1e-3: on an H200 8 of these
    tests failed their 1e-5/1e-4 tolerances that way); the forms are compared at full float32 precision."""
    with jax.default_matmul_precision("highest"):
        yield


def _inputs(h, w, dtype, cin=3, cout=4, k=3, n=2):
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (n, h, w, cin), dtype)
    wt = jax.random.normal(kw, (k, k, cin, cout), dtype) / 3
    return x, wt


def _reference(x, w, stride, padding):
    s = (stride, stride) if isinstance(stride, int) else stride
    return lax.conv_general_dilated(x, w, s, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("stride,padding,h,w", CONFIGS)
def test_values_match_lax(impl, stride, padding, h, w):
    x, wt = _inputs(h, w, jnp.float32)
    # both in one compiled program (op by op, the patches form dispatches a dozen small programs per config)
    ref, out = jax.jit(lambda x, wt: (_reference(x, wt, stride, padding),
                                      conv2d(x, wt, stride=stride, padding=padding, impl=impl)))(x, wt)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def _order_fns(impl, stride, padding):
    """f, its gradient-based second-order functional, and a third-order one (reverse-over-reverse)."""
    def f(x, w):
        y = conv2d(x, w, stride=stride, padding=padding, impl=impl)
        return jnp.sum(jnp.sin(y) * y)

    def g2(x, w):  # a scalar of the first derivatives (what MAML's meta-gradient differentiates)
        gx, gw = jax.grad(f, (0, 1))(x, w)
        return jnp.sum(jnp.cos(gw)) + jnp.sum(gx ** 2) + jnp.sum(gw * w)

    def g3(x, w):
        hx, hw = jax.grad(g2, (0, 1))(x, w)
        return jnp.sum(hw ** 2) + jnp.sum(jnp.tanh(hx))

    return f, g2, g3


@functools.cache
def _lax_first_and_second_order(stride, padding, h, w):
    """lax autodiff's first and second derivatives on a config's float64 inputs, compiled and computed once per
    config and shared by the fast impls' tests (only requested under the ``x64`` fixture)."""
    x, wt = _inputs(h, w, jnp.float64)
    fr, g2r, _ = _order_fns("lax", stride, padding)
    return jax.jit(lambda x, w: (jax.grad(fr, (0, 1))(x, w), jax.grad(g2r, (0, 1))(x, w)))(x, wt)


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("stride,padding,h,w", [CONFIGS[0], CONFIGS[1], CONFIGS[4]])
def test_first_and_second_order_match_lax_autodiff_float64(x64, impl, stride, padding, h, w):
    x, wt = _inputs(h, w, jnp.float64)
    f, g2, _ = _order_fns(impl, stride, padding)
    d1, d2 = jax.jit(lambda x, w: (jax.grad(f, (0, 1))(x, w), jax.grad(g2, (0, 1))(x, w)))(x, wt)
    d1r, d2r = _lax_first_and_second_order(stride, padding, h, w)
    for a, b in zip(d1, d1r):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    for a, b in zip(d2, d2r):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-9)


def test_third_order_matches_lax_autodiff_float64(x64):
    stride, padding, h, w = CONFIGS[1]
    x, wt = _inputs(h, w, jnp.float64, cin=2, cout=2)
    _, _, g3 = _order_fns("patches_vjp", stride, padding)
    _, _, g3r = _order_fns("lax", stride, padding)
    d3, d3r = jax.jit(lambda x, w: (jax.grad(g3, (0, 1))(x, w), jax.grad(g3r, (0, 1))(x, w)))(x, wt)
    for a, b in zip(d3, d3r):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-8)


def test_gradient_matches_finite_differences_float64(x64):
    x, wt = _inputs(5, 5, jnp.float64, cin=2, cout=3)
    f, g2, _ = _order_fns("patches_vjp", 2, "SAME")
    rng = np.random.default_rng(0)
    for fn in (jax.jit(f), jax.jit(g2)):
        gx, gw = jax.jit(jax.grad(fn, (0, 1)))(x, wt)
        dx, dw = rng.normal(size=x.shape), rng.normal(size=wt.shape)
        eps = 1e-6
        fd = (fn(x + eps * dx, wt + eps * dw) - fn(x - eps * dx, wt - eps * dw)) / (2 * eps)
        np.testing.assert_allclose(float(jnp.sum(gx * dx) + jnp.sum(gw * dw)), float(fd), rtol=1e-6)


def _per_task_meta(x, w, impl):
    """Second-order, MAML-like: one inner step on w, loss of the adapted w."""
    inner = lambda w: jnp.sum(conv2d(x, w, impl=impl) ** 2)  # noqa: E731
    w1 = w - 0.01 * jax.grad(inner)(w)
    return jnp.sum(jnp.tanh(conv2d(x, w1, impl=impl)))


@functools.cache
def _per_task_case(t=2):
    """A task batch with its own kernels and the loop of lax meta-gradients on it, computed once and shared by the
    fast forms' tests."""
    kx, kw = jax.random.split(jax.random.key(1))
    xs = jax.random.normal(kx, (t, 2, 6, 6, 3))
    ws = jax.random.normal(kw, (t, 3, 3, 3, 4)) / 3
    ref_one = jax.jit(lambda x, w: jax.grad(_per_task_meta, 1)(x, w, "lax"))
    return xs, ws, jnp.stack([ref_one(xs[i], ws[i]) for i in range(t)])


@pytest.mark.parametrize("impl", FAST)
def test_per_task_weights_under_map_and_vmap(impl):
    """A task batch with its own kernels: lax.map and vmap of the fast forms equal a loop of lax."""
    meta = _per_task_meta
    xs, ws, ref = _per_task_case()
    by_map, by_vmap = jax.jit(lambda xs, ws: (  # both routes in one compiled program
        lax.map(lambda a: jax.grad(meta, 1)(a[0], a[1], impl), (xs, ws)),
        jax.vmap(lambda x, w: jax.grad(meta, 1)(x, w, impl))(xs, ws)))(xs, ws)
    np.testing.assert_allclose(by_map, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(by_vmap, ref, rtol=1e-4, atol=1e-4)


def _kernel_shaped_convs(hlo: str, kernel_shape) -> int:
    """Number of convolutions in StableHLO text whose result has the kernel's shape."""
    k = "x".join(map(str, kernel_shape))
    return len(re.findall(rf"stablehlo\.convolution.*->\s*tensor<{k}xf32>", hlo))


def test_second_order_uses_no_weight_gradient_convolution():
    """The point of patches_vjp: no autodiff weight-gradient convolution (the slow XLA:CPU path)
    anywhere in a second-order meta-gradient inside lax.map; lax has them."""
    xs = jnp.ones((2, 3, 6, 6, 3))
    w = jnp.ones((3, 3, 3, 5)) / 9

    def meta_grad(impl):
        def meta(w):
            def task(x):
                inner = lambda v: jnp.sum(conv2d(x, v, impl=impl) ** 2)  # noqa: E731
                return jnp.sum(conv2d(x, w - 0.1 * jax.grad(inner)(w), impl=impl) ** 2)

            return jnp.sum(lax.map(task, xs))

        return jax.jit(jax.grad(meta)).lower(w).as_text()

    assert _kernel_shaped_convs(meta_grad("lax"), w.shape) > 0
    assert _kernel_shaped_convs(meta_grad("patches_vjp"), w.shape) == 0


def test_patches_helper_matches_conv():
    x, wt = _inputs(7, 7, jnp.float32)
    p = patches(x, (3, 3), stride=2, padding="SAME")
    assert p.shape == (2, 4, 4, 27)
    np.testing.assert_allclose(p @ wt.reshape(27, 4), _reference(x, wt, 2, "SAME"), rtol=1e-5, atol=1e-5)


def test_auto_resolution():
    assert resolve_conv_impl("auto", "cpu") == "patches_vjp"
    assert resolve_conv_impl("auto", "gpu") == "lax"
    assert resolve_conv_impl("auto", "tpu") == "lax"
    assert resolve_conv_impl("patches") == "patches"
    assert recommended_task_parallel("cpu") == "map"
    assert recommended_task_parallel("gpu") == "vmap"
    assert set(CONV_IMPLS) == {"auto", "lax", "patches_vjp", "patches"}


def test_recommended_form_depends_on_per_task_kernels_on_gpu_only():
    # GPU: per-task kernels under vmap would be grouped convolutions; patches + batched matmul instead
    assert recommended_conv_impl(True, "gpu") == "patches"
    assert recommended_conv_impl(False, "gpu") == "lax"
    for per_task in (True, False):
        assert recommended_conv_impl(per_task, "cpu") == resolve_conv_impl("auto", "cpu") == "patches_vjp"
        assert recommended_conv_impl(per_task, "tpu") == "lax"
    assert recommended_conv_impl(True) == recommended_conv_impl(True, jax.default_backend())


def test_errors_name_the_argument():
    x, wt = _inputs(6, 6, jnp.float32)
    with pytest.raises(ValueError, match="impl"):
        conv2d(x, wt, impl="winograd")
    with pytest.raises(ValueError, match="input channels"):
        conv2d(x, wt[:, :, :2])
    with pytest.raises(ValueError, match=r"\[N, H, W, C_in\]"):
        conv2d(x[0], wt)
    with pytest.raises(ValueError, match="padding"):
        conv2d(x, wt, padding="FULL")
    with pytest.raises(ValueError, match="stride"):
        conv2d(x, wt, stride=0)
    with pytest.raises(ValueError, match="does not fit"):
        conv2d(x[:, :2, :2], wt, padding="VALID")


@pytest.mark.parametrize("impl", ["lax", "patches", "patches_vjp", "auto"])
def test_mixed_dtypes_are_refused_by_every_impl(x64, impl):
    """lax.conv refuses mixed dtypes while the patches einsum would promote: every impl must agree."""
    x, wt = _inputs(6, 6, jnp.float32)
    msg = r"x and w must have the same dtype.*got x float32 and w float64"
    with pytest.raises(ValueError, match=msg):
        conv2d(x, wt.astype(jnp.float64), impl=impl)
    with pytest.raises(ValueError, match=r"got x float64 and w float32"):
        jax.jit(lambda x, w: conv2d(x, w, impl=impl))(x.astype(jnp.float64), wt)
    assert jax.eval_shape(lambda x, w: conv2d(x, w, impl=impl), x, wt).dtype == jnp.float32  # the dtype, no run
