"""``benchmarks/rl_throughput.py``: the PyTorch MAML-TRPO equals the plain-JAX reference (float64, same weights,
goals and noise), the benchmark runs without torch, and ``--torch`` / ``--check`` without torch fail clearly.

The main CI environment has no torch: the cross-check skips there with its reason; run it in an environment
with torch (e.g. a venv with ``--system-site-packages`` and ``pip install torch``).
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("_bench_rl_throughput", REPO / "benchmarks" / "rl_throughput.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


rt = _load()


def _torch_or_skip():
    try:
        import torch  # noqa: F401
    except ImportError as e:
        pytest.skip(f"PyTorch is not importable in this environment ({e}); jmeta does not depend on it, so the "
                    f"cross-check runs only where torch is installed")


def test_torch_maml_trpo_equals_the_plain_jax_reference_in_float64():
    _torch_or_skip()
    res = rt.check(n=2, episodes=3, horizon=10, seed=3)
    diffs = res["max_rel_diff"]
    assert set(diffs) == set(rt.CHECK_RTOL)
    # the inner-adapted parameters and the outer surrogate gradient: 1e-10 relative (measured ~1e-14)
    assert diffs["adapted"] <= 1e-10 and diffs["grad"] <= 1e-10 and diffs["fvp_grad"] <= 1e-10, diffs
    assert all(v <= rt.CHECK_RTOL[k] for k, v in diffs.items()), diffs
    assert res["line_search_accepted"]["jax"] == res["line_search_accepted"]["torch"]


def test_the_cross_check_fails_when_the_torch_side_is_slightly_off(monkeypatch):
    _torch_or_skip()
    orig = rt.TorchMAMLRL.advantages
    monkeypatch.setattr(rt.TorchMAMLRL, "advantages", lambda self, o, r: orig(self, o, r) * (1 + 1e-6))
    diffs = rt.check(n=2, episodes=3, horizon=10, seed=3)["max_rel_diff"]
    assert diffs["pre_obs"] <= 1e-10 and diffs["pre_adv"] > 1e-7 and diffs["adapted"] > 1e-10, diffs


def test_quick_run_without_torch_writes_jmeta_and_plain_numbers(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # as in the main CI environment
    out = tmp_path / "rl.json"
    assert rt.main(["--quick", "--rollout-sizes", "2x2", "--meta-tasks", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    (roll,) = res["rollouts"]
    assert roll["env_steps"] == 2 * 2 * 100 and roll["env_steps_per_s"] > 0 and roll["plain_env_steps_per_s"] > 0
    (meta,) = res["meta_step"]
    assert meta["tasks"] == 1 and meta["jmeta_median_s"] > 0 and meta["plain_median_s"] > 0
    assert "torch_median_s" not in meta and "torch_device" not in res


@pytest.mark.parametrize("flag", ["--torch", "--check"])
def test_torch_flags_without_torch_fail_with_one_clear_message(flag, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(SystemExit) as e:
        rt.main([flag, "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--torch and --check need PyTorch" in err and "cannot import" in err, err
    assert not (tmp_path / "x.json").exists()


def test_bad_torch_threads_gets_one_clear_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        rt.main(["--torch-threads", "0", "--out", str(tmp_path / "x.json")])
    assert e.value.code == 2 and "--torch-threads must be an integer >= 1, got 0" in capsys.readouterr().err
