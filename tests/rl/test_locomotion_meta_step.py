"""MJX locomotion smoke test of MAML-RL: one compiled meta-step on HalfCheetah, reused across calls.

Tiny sizes (2 tasks x 2 episodes, horizon 5, TRPO): the point is that the whole meta-iteration (vmapped MJX
rollouts before and after the inner step, the inner policy gradient, TRPO's conjugate gradient and line search)
compiles as one program, runs finite, is reused, is deterministic for a key and moves the parameters. The
algorithm is ``benchmarks/locomotion_reduced.py``'s ``build`` at its ``--quick`` sizes (MAML-RL's cheetah settings:
obs-100-100-act policy, linear baseline), jitted as that program jits it (XLA's backend optimisation off, as in
``test_locomotion.py``): the meta-step is the HLO that ``tests/rl/test_locomotion_reduced.py`` compiles, so in one
test run the persistent compilation cache (tests/conftest.py) compiles it once for both files. Measured on the
shared 2-core machine (load 0.2-1.4, with an 8-unit policy): HalfCheetahDirection's meta-step compiles in 18 s and
runs in 0.2 s per call (fixture 22 s, file 26 s); the velocity task compiles its own program (fixture 28 s), so it
runs only with ``JMETA_TEST_CHEETAH_VEL=1``.
"""

from __future__ import annotations

import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("mujoco.mjx", reason="MuJoCo MJX not installed (pip install 'jmeta[mjx]')")
pytest.importorskip("gymnasium", reason="gymnasium (ships the MJCF models) not installed (pip install 'jmeta[mjx]')")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
import locomotion_reduced as bench  # noqa: E402

_VEL = pytest.mark.skipif(not os.environ.get("JMETA_TEST_CHEETAH_VEL"),
                          reason="a second MJX meta-step program (~20 s of CPU compile); JMETA_TEST_CHEETAH_VEL=1")


@pytest.fixture(scope="module", params=["HalfCheetahDirection", pytest.param("HalfCheetahVelocity", marks=_VEL)])
def run(request):
    """Three calls of one jitted, trace-counting meta-step: ``(state, k1)``, ``(new, k2)``, ``(state, k1)``."""
    env_name = {"HalfCheetahDirection": "cheetah-dir", "HalfCheetahVelocity": "cheetah-vel"}[request.param]
    algo = bench.build(env_name, tasks=2, episodes=2, horizon=5, seed=0)  # the benchmark's --quick sizes
    assert type(algo.env).__name__ == request.param
    traces = []

    def meta_step(state, key):  # named and signed as MAMLRL.meta_step: the same HLO module as the benchmark's jit
        traces.append(1)
        return algo.meta_step(state, key)

    f = jax.jit(meta_step, compiler_options=bench._FAST_COMPILE)
    state = algo.init()
    k1, k2 = jax.random.key(1), jax.random.key(2)
    first = f(state, k1)
    second = f(first[0], k2)
    again = f(state, k1)
    return algo, state, traces, jax.device_get((first, second, again))


def test_meta_step_runs_finite_and_compiles_once(run):
    algo, state, traces, (first, second, _) = run
    assert len(traces) == 1  # the second and third calls reuse the compiled step
    for new, metrics in (first, second):
        for leaf in jax.tree.leaves((new.params, metrics)):
            assert np.all(np.isfinite(leaf))
    assert [int(first[0].step), int(second[0].step)] == [1, 2]
    # returns are per episode over 5 steps of reward ~ d * v - 0.05 |a|^2: finite, bounded, not constant
    assert first[1]["return_pre"] != first[1]["return_post"]
    assert abs(float(first[1]["return_pre"])) < 1e3


def test_meta_step_moves_the_parameters(run):
    _, state, _, (first, second, _) = run
    assert bool(first[1]["accepted"]) and 0 < float(first[1]["kl"]) <= 0.01
    for before, after in ((state.params, first[0].params), (first[0].params, second[0].params)):
        moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), before, after)
        assert max(jax.tree.leaves(moved)) > 1e-5, moved


def test_vmapped_rollouts_deterministic_per_key(run):
    _, _, _, (first, second, again) = run
    # the same (state, key): bit-identical rollouts over the tasks, hence the same step and metrics
    jax.tree.map(np.testing.assert_array_equal, first, again)
    # another key: other tasks and episodes
    assert float(first[1]["return_pre"]) != float(second[1]["return_pre"])
