"""MLP: layer names and widths, and argument validation."""

import jax
import jax.numpy as jnp
import pytest

from jmeta.models.mlp import mlp


def test_layers_and_widths():
    m = mlp(3, (8, 5), 2)
    assert sorted(m.params) == ["layers_0", "layers_1", "layers_2"]
    assert [m.params[f"layers_{i}"]["kernel"].shape for i in range(3)] == [(3, 8), (8, 5), (5, 2)]
    out, _ = m.apply(m.params, m.state, jnp.ones((4, 3)), train=False)
    assert out.shape == (4, 2)


@pytest.mark.parametrize("kwargs,match", [
    (dict(in_features=1.5), r"in_features must be an integer >= 1; got 1\.5 \(float\)"),   # was truncated to 1
    (dict(out_features=2.0), r"out_features must be an integer >= 1; got 2\.0 \(float\)"),
    (dict(hidden=(True,)), r"hidden\[0\] must be an integer >= 1; got True \(bool\)"),     # was a width-1 layer
    (dict(hidden=(16, 0)), r"hidden\[1\] must be an integer >= 1; got 0"),
    (dict(in_features="4"), r"in_features must be an integer >= 1; got '4' \(str\)"),
    (dict(hidden=40), r"hidden must be a sequence of positive integers"),
])
def test_widths_must_be_positive_ints(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mlp(**kwargs)


def test_numpy_integer_widths_are_widths():
    import numpy as np

    m = mlp(np.int64(3), (np.int32(8),), np.int64(2))
    assert m.params["layers_0"]["kernel"].shape == (3, 8) and m.params["layers_1"]["kernel"].shape == (8, 2)


def test_activation_must_be_known():
    with pytest.raises(ValueError, match="activation must be one of"):
        mlp(activation="swish")
    m = mlp(2, (4,), 1, activation=jax.nn.softplus)
    assert m.apply(m.params, m.state, jnp.ones((1, 2)), train=False)[0].shape == (1, 1)
