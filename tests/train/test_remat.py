"""Every rematerialisation policy gives the meta-gradient of no remat (second-order MAML, 3 inner steps)."""

from __future__ import annotations

import dataclasses
import functools
import sys
import pathlib

import jax
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _problems import tiny_model  # noqa: E402

from jmeta.algorithms import MAML, MetaSGD  # noqa: E402
from jmeta.tasks import Sinusoid  # noqa: E402
from jmeta.train.step import batched_loss_and_grad  # noqa: E402

POLICIES = ["full", "dots", "dots_no_batch", jax.checkpoint_policies.everything_saveable]


@pytest.fixture(scope="module")
def setup():
    model = tiny_model(with_state=False)
    tasks = Sinusoid(k_support=5, k_query=5).sample(jax.random.key(3), 4)
    keys = jax.random.split(jax.random.key(4), 4)
    return model, tasks, keys


def _grads(alg, model, tasks, keys):
    fn = jax.jit(functools.partial(batched_loss_and_grad, alg))
    obj, g, _, _ = fn(alg.init(model.params), model.state, tasks, keys, 0)
    return obj, g


@pytest.mark.parametrize("cls,policies", [(MAML, POLICIES), (MetaSGD, ["full", "dots"])], ids=["maml", "metasgd"])
def test_remat_policies_match_no_remat(setup, cls, policies):
    """MAML: every policy; Meta-SGD (gradients also reach the learned per-parameter rates): two."""
    model, tasks, keys = setup
    base = cls(model.apply, inner_lr=0.05, num_steps=3)
    obj0, g0 = _grads(base, model, tasks, keys)
    assert max(float(np.abs(x).max()) for x in jax.tree.leaves(g0)) > 1e-3
    for policy in policies:
        obj, g = _grads(dataclasses.replace(base, remat=policy), model, tasks, keys)
        np.testing.assert_allclose(obj, obj0, rtol=1e-6, err_msg=str(policy))
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g0)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=str(policy))


def test_bad_remat_policy():
    model = tiny_model(with_state=False)
    with pytest.raises(ValueError, match="remat must be one of"):
        MAML(model.apply, remat="everything")
