"""Meta-batches larger than memory: chunked accumulation equals the unchunked meta-gradient; auto chunking."""

from __future__ import annotations

import functools
import pathlib
import sys

import jax
import numpy as np
import optax
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _problems import tiny_model  # noqa: E402

from jmeta.algorithms import MAML  # noqa: E402
from jmeta.tasks import Sinusoid  # noqa: E402
from jmeta.train.step import (batched_loss_and_grad, choose_chunk_size, compiled_memory_bytes,  # noqa: E402
                              default_memory_budget, init_train_state, make_meta_step)

B = 8


@pytest.fixture(scope="module")
def problem():
    model = tiny_model()
    alg = MAML(model.apply, inner_lr=0.05, num_steps=2)
    tasks = Sinusoid(k_support=5, k_query=5).sample(jax.random.key(1), B)
    keys = jax.random.split(jax.random.key(2), B)
    return alg, model, alg.init(model.params), tasks, keys


def _run(problem, tp, budget=None):
    alg, model, mp, tasks, keys = problem
    fn = functools.partial(batched_loss_and_grad, alg, task_parallel=tp, memory_budget=budget)
    return jax.jit(fn)(mp, model.state, tasks, keys, 0)


@pytest.fixture(scope="module")
def reference(problem):
    return _run(problem, "vmap")


@pytest.mark.parametrize("tp", ["map", 2, 4])
def test_chunked_equals_unchunked(problem, reference, tp):
    obj, grads, metrics, _ = _run(problem, tp)
    np.testing.assert_allclose(obj, reference[0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["loss"], reference[2]["loss"], rtol=1e-6)
    assert optax.tree.norm(reference[1]) > 1e-3


def test_chunked_equals_per_task_loop(problem, reference):
    """Independent route: a Python loop of single-task gradients, averaged by hand."""
    alg, model, mp, tasks, keys = problem
    g1 = jax.jit(jax.grad(lambda p, t, k: alg.task_loss(p, model.state, t, key=k)[0]))
    gs = [g1(mp, jax.tree.map(lambda a: a[i], tasks), keys[i]) for i in range(B)]
    mean = jax.tree.map(lambda *a: sum(a) / B, *gs)
    for a, b in zip(jax.tree.leaves(mean), jax.tree.leaves(reference[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_auto_respects_a_small_budget(problem, reference):
    alg, model, mp, tasks, keys = problem
    mem = {}
    for c in (1, 2, 4, 8):
        fn = functools.partial(batched_loss_and_grad, alg, task_parallel=c)
        mem[c] = compiled_memory_bytes(jax.jit(fn).lower(mp, model.state, tasks, keys, 0).compile())
    assert mem[1] < mem[8], mem  # memory grows with the chunk, or there is nothing to choose
    budget = (mem[2] + mem[4]) // 2 if mem[2] < mem[4] else mem[2]
    choice = choose_chunk_size(alg, mp, model.state, tasks, keys, 0, memory_budget=budget)
    assert choice.fits and choice.budget == budget
    assert choice.bytes <= budget
    expected = max(c for c, m in mem.items() if m <= budget)
    assert choice.chunk_size == expected < B
    assert choice.measured[choice.chunk_size] == mem[choice.chunk_size]
    # a budget that fits everything picks the whole batch (no chunking)
    assert choose_chunk_size(alg, mp, model.state, tasks, keys, 0, memory_budget=10 * mem[8]).chunk_size == B
    # nothing fits: chunks of one, with a warning
    with pytest.warns(RuntimeWarning, match="over the memory budget"):
        assert not choose_chunk_size(alg, mp, model.state, tasks, keys, 0, memory_budget=1).fits
    # the auto step gives the unchunked meta-gradient
    _, grads, _, _ = _run(problem, "auto", budget)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_default_budget():
    assert default_memory_budget() > 0
    with pytest.raises(ValueError, match="fraction"):
        default_memory_budget(fraction=0)


def test_bad_options(problem):
    alg, model, _, _, _ = problem
    tasks = Sinusoid(k_support=5, k_query=5)
    opt = optax.sgd(0.1)
    with pytest.raises(ValueError, match="task_parallel must be one of"):
        make_meta_step(alg, tasks.sample, opt, meta_batch_size=8, task_parallel="chunks")
    with pytest.raises(ValueError, match="must divide"):
        make_meta_step(alg, tasks.sample, opt, meta_batch_size=8, task_parallel=3)
    with pytest.raises(ValueError, match="memory_budget"):
        make_meta_step(alg, tasks.sample, opt, meta_batch_size=8, task_parallel="auto", memory_budget=-1)
    with pytest.raises(ValueError, match="compute_dtype"):
        make_meta_step(alg, tasks.sample, opt, meta_batch_size=8, compute_dtype="int8")
    state = init_train_state(alg, model.params, model.state, opt)
    assert int(state.step) == 0
