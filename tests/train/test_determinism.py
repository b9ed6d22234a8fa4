"""GPU determinism switch (jmeta.train.determinism), its config key and CLI wiring; robust task statistics."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jmeta.run import config as C
from jmeta.train import determinism as det
from jmeta.train.evaluation import task_statistics

FLAG = "--xla_gpu_deterministic_ops=true"
# one small run shape for every training below (library and CLI), so that the train step and the evaluation
# programs compiled by the first test are loaded from the compile cache by the others
SMALL = ["train.steps=2", "train.log_every=1", "eval.num_tasks=4", "eval.shots=[5]", "eval.steps=2",
         "eval.report_steps=[1,2]"]
SMALL_CLI = ["--steps", "2"] + [a for o in SMALL[1:] for a in ("--set", o)]


def _cpu_only():
    import jax

    if jax.default_backend() != "cpu":
        pytest.skip("exercises an in-process CPU backend; on a GPU the in-process call is the RuntimeError case")


@pytest.mark.parametrize("flags, value", [
    ("", None),
    ("--xla_force_host_platform_device_count=4", None),
    ("--xla_gpu_deterministic_ops", True),
    ("--xla_gpu_deterministic_ops=true", True),
    ("--xla_gpu_deterministic_ops=1", True),
    ("--xla_gpu_deterministic_ops=false", False),
    ("--xla_gpu_deterministic_ops=true --xla_gpu_deterministic_ops=false", False),  # the last one wins
    ("--xla_gpu_deterministic_ops_other=true", None),
])
def test_flag_parsing(flags, value):
    assert det._flag_value(flags) is value


def test_flag_parsing_rejects_non_boolean():
    with pytest.raises(ValueError, match="not a boolean"):
        det._flag_value("--xla_gpu_deterministic_ops=maybe")


def test_enable_before_jax_starts_sets_the_flag_in_a_fresh_process():
    code = textwrap.dedent("""
        import os
        import jax  # imported, but no backend started yet
        from jmeta.train.determinism import enable_determinism, deterministic_ops_enabled
        assert not deterministic_ops_enabled()
        first = enable_determinism()
        second = enable_determinism()          # idempotent: the flag is not added twice
        print(first, second, os.environ["XLA_FLAGS"], float(jax.numpy.ones(3).sum()))
    """)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    first, second, *flags, total = out.stdout.split()
    assert (first, second) == ("True", "True")
    assert flags == ["--xla_force_host_platform_device_count=2", FLAG]
    assert float(total) == 3.0


def test_enable_after_cpu_backend_started_is_harmless(monkeypatch):
    import jax

    _cpu_only()
    jax.numpy.zeros(1).block_until_ready()  # the CPU backend is running in this process
    monkeypatch.setenv("XLA_FLAGS", "")
    assert det.enable_determinism() is False  # nothing to do on the CPU ...
    assert os.environ["XLA_FLAGS"] == FLAG  # ... but subprocesses get the flag


def test_enable_after_gpu_backend_started_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setattr(det, "_initialized_platforms", lambda: ["cpu", "cuda"])
    with pytest.raises(RuntimeError, match=r"already running on cuda.*XLA_FLAGS=--xla_gpu_deterministic_ops=true"):
        det.enable_determinism()
    assert os.environ["XLA_FLAGS"] == ""


def test_explicit_false_contradicts_the_request(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=false")
    with pytest.raises(ValueError, match="train.deterministic=false"):
        det.enable_determinism()


def test_warning_only_for_a_gpu_without_the_flag(monkeypatch):
    import jax

    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert det.nondeterminism_warning(True) is None  # CPU: deterministic anyway
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert "not reproducible" in det.nondeterminism_warning(True)
    assert det.nondeterminism_warning(False) is None  # asked for speed
    monkeypatch.setenv("XLA_FLAGS", FLAG)
    assert det.nondeterminism_warning(True) is None


def test_train_warns_on_a_gpu_without_the_flag(monkeypatch, tmp_path):
    import jax

    from jmeta.run.runner import train

    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    cfg = C.apply_overrides(C.load("sinusoid-maml"), SMALL)
    with pytest.warns(UserWarning, match="not reproducible"):
        train(cfg, tmp_path / "run", progress=False, evaluate_at_end=False, tensorboard=False, plots=False)


def test_train_warns_once_and_library_evaluation_warns(monkeypatch, tmp_path):
    """evaluate_run and the vectorised sweep, called as a library, warn too; train() warns once, not twice."""
    import warnings

    import jax

    from jmeta.run import search as S
    from jmeta.run.experiment import build, load_run
    from jmeta.run.runner import evaluate_run, train

    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    cfg = C.apply_overrides(C.load("sinusoid-maml"), SMALL)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train(cfg, tmp_path / "run", progress=False, tensorboard=False, plots=False)
    assert sum("not reproducible" in str(w.message) for w in seen) == 1
    _, exp, state = load_run(tmp_path / "run")
    with pytest.warns(UserWarning, match="not reproducible"):
        ev = evaluate_run(cfg, exp, state, jax.random.key(0))
    assert ev["xla_gpu_deterministic_ops"] is False
    with warnings.catch_warnings(record=True) as seen:  # not when the caller has warned, or asked for speed
        warnings.simplefilter("always")
        evaluate_run(cfg, exp, state, jax.random.key(0), warn_nondeterminism=False)
        evaluate_run(C.apply_override(cfg, "train.deterministic=false"), exp, state, jax.random.key(0))
    assert not any("not reproducible" in str(w.message) for w in seen)
    with pytest.warns(UserWarning, match="not reproducible"):
        S.run_vectorized(cfg, [{"algorithm.inner_lr": 0.01}, {"algorithm.inner_lr": 0.02}], tmp_path / "vec",
                         progress=False, tensorboard=False, log=lambda *a: None)


def test_config_key():
    assert C.load("sinusoid-maml").train.deterministic is True
    assert C.apply_override(C.load("sinusoid-maml"), "train.deterministic=false").train.deterministic is False
    with pytest.raises(C.ConfigError, match="train.deterministic"):
        C.apply_override(C.load("sinusoid-maml"), "train.deterministic=3")


def test_cli_sets_the_flag_and_records_it(monkeypatch, tmp_path):
    from jmeta.run.cli import main

    _cpu_only()
    monkeypatch.setenv("XLA_FLAGS", "")
    rc = main(["train", *SMALL_CLI, "--out", str(tmp_path / "a"), "--no-progress", "--no-plots",
               "--no-tensorboard"])
    assert rc == 0
    assert det.deterministic_ops_enabled()
    assert json.loads((tmp_path / "a" / "eval.json").read_text())["xla_gpu_deterministic_ops"] is True

    monkeypatch.setenv("XLA_FLAGS", "")
    rc = main(["train", *SMALL_CLI, "--out", str(tmp_path / "b"), "--no-progress", "--no-plots",
               "--no-tensorboard", "--no-eval", "--set", "train.deterministic=false"])
    assert rc == 0
    assert os.environ["XLA_FLAGS"] == ""


def test_cli_reports_the_contradiction_as_one_line(monkeypatch, tmp_path, capsys):
    from jmeta.run.cli import main

    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=false")
    assert main(["train", "--steps", "2", "--out", str(tmp_path / "c"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: XLA_FLAGS sets --xla_gpu_deterministic_ops=false") and err.count("\n") == 1
    assert not (tmp_path / "c").exists()


def test_task_statistics_with_diverged_tasks():
    losses = np.array([[1.0, 0.5], [2.0, np.nan], [3.0, 0.1], [4.0, np.inf], [5.0, 0.3]])
    st = task_statistics(losses)
    assert st["nonfinite"] == [0, 2]
    assert st["mean"][0] == pytest.approx(3.0)
    assert st["ci95"][0] == pytest.approx(1.96 * np.std([1, 2, 3, 4, 5], ddof=1) / np.sqrt(5))
    assert np.isnan(st["mean"][1]) and np.isnan(st["ci95"][1])  # the mean does not hide a diverged task
    assert st["median"] == [3.0, 0.5]  # ranks: 0.1, 0.3, 0.5, inf, inf
    acc = np.array([0.2, np.nan, 0.6, 0.8])
    assert task_statistics(acc, higher_is_better=True)["median"] == [0.4]  # -inf, 0.2, 0.6, 0.8
    with pytest.raises(ValueError, match="at least one task"):
        task_statistics(np.zeros((0, 3)))


def test_cli_prints_diverged_tasks(capsys):
    from jmeta.run.cli import _print_eval

    _print_eval({"summary": {"K=5 loss after 10 step(s)": {"mean": float("nan"), "ci95": float("nan"),
                                                             "median": 0.129, "nonfinite": 1},
                             "K=5 loss after 1 step(s)": {"mean": 0.5, "ci95": 0.05, "median": 0.3,
                                                          "nonfinite": 0}}})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "  K=5 loss after 10 step(s): nan ± nan (1 task(s) diverged to NaN/inf; median 0.1290)"
    assert out[1] == "  K=5 loss after 1 step(s): 0.5000 ± 0.0500"
