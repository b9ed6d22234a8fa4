"""benchmarks/locomotion_reduced.py end to end at toy size (``--quick``): it trains, evaluates and writes its JSON;
and the MJX locomotion smoke test of MAML-RL: one compiled meta-step on HalfCheetah, reused across calls.

``--quick`` is 2 tasks x 2 episodes x horizon 5 for 2 meta-iterations on HalfCheetahDirection with XLA's backend
optimisation off, so the two MJX programs (meta-step, evaluation) compile in seconds; the point is the
program and its JSON schema, not the numbers.

The meta-step tests (formerly tests/rl/test_locomotion_meta_step.py) run the same compiled meta-step
(``locomotion_reduced.programs``, MAML-RL's cheetah settings: obs-100-100-act policy, linear baseline, TRPO): the
point is that the whole meta-iteration (vmapped MJX rollouts before and after the inner step, the inner policy
gradient, TRPO's conjugate gradient and line search) compiles as one program, runs finite, is reused, is
deterministic for a key and moves the parameters. Sharing the program with the benchmark run saves its compile
(measured on the shared 2-core machine with an 8-unit policy: 18 s compile, 0.2 s per call). HalfCheetahVelocity
compiles its own program (~20 s of CPU), so it runs only with ``JMETA_TEST_CHEETAH_VEL=1``.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("mujoco.mjx", reason="MuJoCo MJX not installed (pip install 'jmeta[mjx]')")
pytest.importorskip("gymnasium", reason="gymnasium (ships the MJCF models) not installed (pip install 'jmeta[mjx]')")

REPO = pathlib.Path(__file__).resolve().parents[2]
QUICK = (2, 2, 5, 0, 2, True)  # programs(env, ...) of --quick: tasks, episodes, horizon, seed, eval episodes, quick


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import locomotion_reduced as mod  # noqa: PLC0415

    path = tmp_path_factory.mktemp("loco") / "out.json"
    mod.main(["--env", "cheetah-dir", "--quick", "--out", str(path)])
    return json.loads(path.read_text())


def test_quick_run_writes_the_schema(report):
    assert report["done"] is True and report["env"] == "cheetah-dir" and report["label"].startswith("quick")
    p, b = report["protocol"], report["budget"]
    assert (p["tasks"], p["episodes"], p["horizon"], p["inner_lr"], p["gamma"]) == (2, 2, 5, 0.1, 0.99)
    assert b["env_steps_per_iteration"] == 2 * 2 * 2 * 5 and b["env_steps_total"] == 2 * 40
    assert b["fraction_of_full"] == pytest.approx(80 / (2 * 40 * 20 * 200 * 500))
    assert [r["iteration"] for r in report["train"]] == [1, 2]
    assert [r["iteration"] for r in report["eval"]] == [0, 1, 2]
    for row in report["eval"]:
        for k in (0, 1):
            stat = row[f"return after {k} step(s)"]
            assert math.isfinite(stat["mean"]) and stat["ci95"] > 0
    assert all(r["accepted"] in (True, False) and math.isfinite(r["return_post"]) for r in report["train"])


def test_evaluation_before_adaptation_changes_with_training(report):
    # the same held-out tasks and keys at every evaluation: the pre-adaptation return moves only if the
    # meta-parameters did (the TRPO steps were accepted)
    before = [row["return after 0 step(s)"]["mean"] for row in report["eval"]]
    if any(r["accepted"] for r in report["train"]):
        assert before[0] != before[-1]
    else:
        assert before[0] == before[-1]


def test_bad_sizes_are_refused():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import locomotion_reduced as mod  # noqa: PLC0415

    with pytest.raises(SystemExit, match="--horizon must be >= 1; got 0"):
        mod.main(["--horizon", "0", "--out", "/dev/null"])
    with pytest.raises(SystemExit, match="--eval-tasks must be >= 2"):
        mod.main(["--eval-tasks", "1", "--out", "/dev/null"])


# ---------------------------------------------------------------- the compiled meta-step, reused across calls
_VEL = pytest.mark.skipif(not os.environ.get("JMETA_TEST_CHEETAH_VEL"),
                          reason="a second MJX meta-step program (~20 s of CPU compile); JMETA_TEST_CHEETAH_VEL=1")


@pytest.fixture(scope="module", params=["HalfCheetahDirection", pytest.param("HalfCheetahVelocity", marks=_VEL)])
def run(request, report):
    """Three calls of the benchmark's jitted meta-step (the one ``report``'s run compiled for the direction task):
    ``(state, k1)``, ``(new, k2)``, ``(state, k1)``."""
    import locomotion_reduced as mod  # noqa: PLC0415 (``report`` put benchmarks/ on the path)

    env_name = {"HalfCheetahDirection": "cheetah-dir", "HalfCheetahVelocity": "cheetah-vel"}[request.param]
    algo, f, _ = mod.programs(env_name, *QUICK)
    assert type(algo.env).__name__ == request.param
    state = algo.init()
    k1, k2 = jax.random.key(1), jax.random.key(2)
    first = f(state, k1)
    second = f(first[0], k2)
    again = f(state, k1)
    return algo, state, f, jax.device_get((first, second, again))


def test_meta_step_runs_finite_and_compiles_once(run):
    algo, state, f, (first, second, _) = run
    assert f._cache_size() == 1  # every call (the benchmark run's too) reuses the one compiled step
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
