"""ResNet-12: structure, output modes, parameter count, and agreement of the convolution forms."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta.models.resnet import resnet12, resnet12_feature_dim


def _images(n, shape=(16, 16, 3), seed=0):
    return jax.random.uniform(jax.random.key(seed), (n, *shape))


def test_structure_and_parameter_count():
    # shapes only: jax.eval_shape builds the full-width model without drawing its 12.4M initial weights (eagerly,
    # every kernel shape compiled its own truncated-normal program: ~10 s of CPU for nothing this test reads)
    params = jax.eval_shape(lambda: resnet12(input_shape=(16, 16, 3)).params)
    assert sorted(params) == ["block_0", "block_1", "block_2", "block_3"]
    blk = params["block_1"]
    assert sorted(blk) == ["bn1", "bn2", "bn3", "conv1", "conv2", "conv3", "shortcut_bn", "shortcut_conv"]
    assert blk["conv1"]["kernel"].shape == (3, 3, 64, 160)
    assert blk["shortcut_conv"]["kernel"].shape == (1, 1, 64, 160)
    assert "bias" not in blk["conv1"]
    # 3x3 convs + 1x1 shortcuts + BN scale/bias; the usual "12.4M" of ResNet-12
    widths, cin, expected = (64, 160, 320, 640), 3, 0
    for w in widths:
        expected += 9 * (cin * w + 2 * w * w) + cin * w + 4 * 2 * w
        cin = w
    assert sum(a.size for a in jax.tree.leaves(params)) == expected
    assert 12.0e6 < expected < 12.6e6


@pytest.mark.parametrize("output,dim", [("avg", 640), ("flatten", 640)])
def test_embedding_shapes(output, dim):
    def embed(x):  # shapes only (jax.eval_shape): no 12.4M initial weights drawn, no program compiled
        m = resnet12(input_shape=(16, 16, 3), output=output)
        return m.apply(m.params, m.state, x, train=True)

    z, state = jax.eval_shape(embed, jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32))
    assert z.shape == (2, dim) == (2, resnet12_feature_dim((16, 16, 3), output=output))
    assert resnet12_feature_dim((84, 84, 3), output="flatten") == 16000
    assert resnet12_feature_dim((84, 84, 3)) == 640


def test_head_and_errors():
    m = resnet12(5, input_shape=(16, 16, 3), widths=(4, 4, 4, 4))
    # shapes only (jax.eval_shape): no program compiled (this test is about the head and the errors)
    out, _ = jax.eval_shape(functools.partial(m.apply, train=False), m.params, m.state, _images(3))
    assert out.shape == (3, 5) and "head" in m.params
    with pytest.raises(ValueError, match="output"):
        resnet12(output="max")
    with pytest.raises(ValueError, match="too small"):
        resnet12(input_shape=(8, 8, 3))
    with pytest.raises(ValueError, match="conv_impl"):
        resnet12(conv_impl="cudnn")


def test_flatten_output_refuses_other_image_sizes():
    """output='flatten': the embedding width depends on H and W, so images must match input_shape
    (a ValueError naming both, not a dot_general TypeError in the head); output='avg' takes any size."""
    m = resnet12(5, input_shape=(16, 16, 3), widths=(4, 4), output="flatten")
    msg = r"ResNet12 image height and width must be \(16, 16\) \(input_shape=\(16, 16, 3\).*got \(20, 20\)"
    # the check is on static shapes: it raises when traced (jax.eval_shape: shapes only, no program compiled)
    apply = lambda p, s, x, train: jax.eval_shape(functools.partial(m.apply, train=train), p, s, x)  # noqa: E731
    with pytest.raises(ValueError, match=msg):
        apply(m.params, m.state, _images(2, (20, 20, 3)), train=True)
    out, _ = apply(m.params, m.state, _images(2), train=True)
    assert out.shape == (2, 5)
    a = resnet12(5, input_shape=(16, 16, 3), widths=(4, 4), output="avg")
    out, _ = jax.eval_shape(functools.partial(a.apply, train=True), a.params, a.state, _images(2, (20, 20, 3)))
    assert out.shape == (2, 5)


def test_conv_impls_agree_on_values_and_gradients():
    x = _images(4)
    res = {}
    for impl in ("lax", "patches_vjp"):
        m = resnet12(3, input_shape=(16, 16, 3), widths=(4, 4, 4, 4), conv_impl=impl)

        def loss(p):
            out, _ = m.apply(p, m.state, x, train=True)
            return jnp.sum(jax.nn.log_softmax(out)[:, 0])

        res[impl] = jax.jit(jax.value_and_grad(loss))(m.params)
    np.testing.assert_allclose(res["lax"][0], res["patches_vjp"][0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(res["lax"][1]), jax.tree.leaves(res["patches_vjp"][1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
