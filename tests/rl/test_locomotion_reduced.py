"""benchmarks/locomotion_reduced.py end to end at toy size (``--quick``): it trains, evaluates and writes its JSON.

``--quick`` is 2 tasks x 2 episodes x horizon 5 for 2 meta-iterations on HalfCheetahDirection with XLA's backend
optimisation off, so the two MJX programs (meta-step, evaluation) compile in seconds; the point is the
program and its JSON schema, not the numbers.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys

import pytest

pytest.importorskip("mujoco.mjx", reason="MuJoCo MJX not installed (pip install 'jmeta[mjx]')")
pytest.importorskip("gymnasium", reason="gymnasium (ships the MJCF models) not installed (pip install 'jmeta[mjx]')")

REPO = pathlib.Path(__file__).resolve().parents[2]


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
