"""Failure handling: NaN stop/skip, out-of-memory hint, bad config keys/values/presets as one-line errors."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from jmeta.run import config as C
from jmeta.run.cli import main
from jmeta.run.checkpoint import Checkpointer
from jmeta.run.logs import MetricsLog

REPO = pathlib.Path(__file__).resolve().parents[1]
SMALL = ["train.meta_batch_size=5", "train.log_every=10", "train.checkpoint_every=10"]


def _cfg(*overrides):
    cfg = C.load("sinusoid-maml")
    for o in SMALL + list(overrides):
        cfg = C.apply_override(cfg, o)
    return cfg


def _one_line_error(capsys, argv, rc=2):
    assert main(argv) == rc
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_nan_stops_the_process_with_a_one_line_error_naming_step_and_checkpoint(tmp_path):
    from jmeta.run.runner import train

    run = tmp_path / "run"
    train(_cfg("train.steps=20"), run, progress=False, evaluate_at_end=False, plots=False)
    # The documented recovery path in reverse: edit config.json, resume; the inner loop now explodes.
    cfg = json.loads((run / "config.json").read_text())
    cfg["algorithm"]["inner_lr"] = 1e6
    cfg["train"]["steps"] = 40
    (run / "config.json").write_text(json.dumps(cfg))
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "jmeta", "train", "--resume", str(run), "--no-progress",
                           "--no-plots"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    err = [x for x in proc.stderr.splitlines() if x.strip()]
    assert "Traceback" not in proc.stderr
    assert len(err) == 1 and err[0].startswith("error: non-finite loss or meta-gradient at meta-step 20;"), err
    assert f"Last good checkpoint: step 20 in {run / 'checkpoints'}" in err[0]
    assert f"Edit {run / 'config.json'}" in err[0] and 'set train.on_nan to "skip"' in err[0]
    assert f"then resume with `jmeta train --resume {run}`" in err[0]
    # Nothing was written past the bad step.
    ck = Checkpointer(run / "checkpoints")
    assert ck.latest_step() == 20
    ck.close()
    assert [r["step"] for r in MetricsLog.read(run / "metrics.jsonl")] == [10, 20]
    assert not (run / "eval.json").exists()
    # The advice works as given (--resume takes no --set, so the edit goes into config.json).
    cfg["train"]["on_nan"] = "skip"
    (run / "config.json").write_text(json.dumps(cfg))
    assert main(["train", "--resume", str(run), "--no-progress", "--no-plots", "--no-eval",
                 "--no-tensorboard"]) == 0
    recs = MetricsLog.read(run / "metrics.jsonl")
    assert [r["step"] for r in recs] == [10, 20, 30, 40] and recs[-1]["skipped_updates"] == 20


def test_nan_skip_drops_updates_and_counts_them(tmp_path):
    from jmeta.run.experiment import build
    from jmeta.run.runner import train
    from jmeta.train.step import init_train_state

    cfg = _cfg("train.steps=20", "train.on_nan=\"skip\"", "algorithm.inner_lr=1e6")
    train(cfg, tmp_path, progress=False, evaluate_at_end=False, plots=False)
    recs = MetricsLog.read(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["skipped_updates"]) for r in recs] == [(10, 10), (20, 20)]
    assert all(r["loss"] == "nan" or not np.isfinite(float(r["loss"])) for r in recs)
    exp = build(cfg)
    init = init_train_state(exp.algorithm, exp.model.params, exp.model.state, exp.meta_optimizer,
                            key=jax.random.split(jax.random.key(cfg.train.seed), 3)[2])
    ck = Checkpointer(tmp_path / "checkpoints")
    final = ck.restore(None, init)
    ck.close()
    assert int(final.step) == 20  # the step counter moved on ...
    for a, b in zip(jax.tree.leaves((final.meta_params, final.opt_state)), jax.tree.leaves((init.meta_params,
                                                                                             init.opt_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # ... but no update was applied


def test_out_of_memory_is_one_line_with_options(monkeypatch, capsys, tmp_path):
    from jmeta.run import runner

    def fake_guarded(step_fn, on_nan):
        def run(*args):
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 123456789 bytes.\n"
                               "BufferAssignment OOM Debugging ...")
        return run

    monkeypatch.setattr(runner, "_guarded_steps", fake_guarded)
    line = _one_line_error(capsys, ["train", "--steps", "5", "--out", str(tmp_path), "--no-progress"], rc=1)
    assert "ran out of memory" in line and "train.meta_batch_size" in line and "algorithm.remat=full" in line
    assert "RESOURCE_EXHAUSTED" in line


@pytest.mark.parametrize("argv, fragments", [
    (["--set", "train.nope=1"], ["unknown key 'train.nope'", "valid keys of train:", "meta_lr"]),
    (["--set", "trainer.steps=1"], ["'trainer.steps'", "section one of", "'train'"]),
    (["--set", "train.on_nan=maybe"], ["train.on_nan must be one of ['stop', 'skip']", "'maybe'"]),
    (["--set", "algorithm.inner_steps=two"], ["algorithm.num_steps must be an integer", "'two'"]),
    (["--set", "algorithm.name=maml3"], ["algorithm.name must be one of", "'fomaml'", "'maml3'"]),
    (["--set", "train.steps=-1"], ["train.steps must be >= 0"]),
    (["--set", "inner_lr"], ["must look like section.key=value"]),
    (["--config", "sinusoid-mamI"], ["no preset or config file named 'sinusoid-mamI'", "sinusoid-maml"]),
    (["--algorithm", "nope"], ["algorithm.name must be one of"]),
    (["--set", "train.task_parallel=7"], ["train.task_parallel=7 (a chunk size) must divide", "=25"]),
    (["--set", "train.task_parallel=true"], ["train.task_parallel must be", "got True"]),
    (["--set", "model.activation=\"foo\""], ["model.activation must be one of", "'relu'", "'foo'"]),
    (["--set", "model.hidden=[40, 0]"], ["model.hidden must be a list of positive integers", "[40, 0]"]),
    (["--set", "algorithm.bn_mode=per_step"], ["bn_mode='per_step' is implemented for model.name='conv4' only"]),
    (["--set", "algorithm.adapt_params=nope"], ["algorithm.adapt_params='nope'", "selects no parameter", "layers_2"]),
    (["--algorithm", "reptile", "--set", "algorithm.adapt_params=layers_2"], ["algorithm: Reptile", "ANIL"]),
    (["--seed", "4294967296"], ["train.seed must be an integer in [0, 2**32)"]),
    (["--seed", "-1"], ["train.seed must be an integer in [0, 2**32)"]),
    (["--set", "eval.shots=[]"], ["eval.shots must list at least one shot count"]),
])
def test_bad_config_is_a_one_line_error_naming_key_and_choices(argv, fragments, capsys, tmp_path):
    line = _one_line_error(capsys, ["train", "--out", str(tmp_path), "--no-progress", *argv])
    for f in fragments:
        assert f in line, line
    assert not (tmp_path / "metrics.jsonl").exists()


def test_zero_steps_evaluates_the_initialisation(tmp_path, capsys):
    """--steps 0: no training, no learning curves; the evaluation and its plots are written."""
    pytest.importorskip("matplotlib")
    assert main(["train", "--out", str(tmp_path), "--steps", "0", "--no-progress", "--set", "eval.num_tasks=5",
                 "--set", "eval.shots=[5]"]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "eval.json").read_text())["step"] == 0
    assert (tmp_path / "adaptation_curves.png").is_file() and not (tmp_path / "learning_curves.png").exists()


def _records(run):
    return [{k: v for k, v in r.items() if k != "time"} for r in MetricsLog.read(run / "metrics.jsonl")]


def test_skipped_updates_count_on_across_a_resume(tmp_path):
    from jmeta.run.runner import train

    cfg = _cfg("train.steps=30", "train.on_nan=\"skip\"", "algorithm.inner_lr=1e6")
    train(cfg, tmp_path / "whole", progress=False, evaluate_at_end=False, plots=False, tensorboard=False)
    train(cfg, tmp_path / "split", progress=False, evaluate_at_end=False, plots=False, tensorboard=False,
          stop_after=7)  # inside a window whose (NaN) loss sums are saved with the checkpoint as null
    train(cfg, tmp_path / "split", resume=True, progress=False, evaluate_at_end=False, plots=False,
          tensorboard=False)
    for run in ("whole", "split"):
        assert [(r["step"], r["skipped_updates"]) for r in _records(tmp_path / run)] == [(10, 10), (20, 20), (30, 30)]


def test_records_average_the_whole_window_whatever_the_checkpoints(tmp_path):
    """A record averages every meta-step since the previous one: the same with checkpoints inside the window,
    and after a resume from a checkpoint inside a window (the partial window is saved with the checkpoint)."""
    from jmeta.run.runner import train

    kw = dict(progress=False, evaluate_at_end=False, plots=False, tensorboard=False)
    base = ["train.steps=20", "train.checkpoint_every=0"]
    train(_cfg(*base), tmp_path / "plain", **kw)
    train(_cfg("train.steps=20", "train.checkpoint_every=3"), tmp_path / "ckpt3", **kw)
    train(_cfg(*base), tmp_path / "split", stop_after=7, **kw)  # killed at step 7, inside the first window
    train(_cfg(*base), tmp_path / "split", resume=True, **kw)
    plain = _records(tmp_path / "plain")
    assert [r["step"] for r in plain] == [10, 20]
    for run in ("ckpt3", "split"):  # equal up to float32 rounding of the partial means
        assert _records(tmp_path / run) == [pytest.approx(r, rel=1e-6) for r in plain], run


def test_resume_at_the_final_step_writes_the_last_partial_window(tmp_path):
    """train.steps raised only to a checkpoint inside a logging window: nothing runs, but the record the
    uninterrupted run writes at its last step is written, and a later resume averages as before."""
    from jmeta.run.runner import train

    kw = dict(progress=False, evaluate_at_end=False, plots=False, tensorboard=False)
    ck15 = ["train.checkpoint_every=15", "train.log_every=10"]
    train(_cfg("train.steps=15", *ck15), tmp_path / "whole", **kw)
    train(_cfg("train.steps=30", *ck15), tmp_path / "split", stop_after=15, **kw)
    assert [r["step"] for r in _records(tmp_path / "split")] == [10]
    train(_cfg("train.steps=15", *ck15), tmp_path / "split", resume=True, **kw)
    assert _records(tmp_path / "split") == [pytest.approx(r, rel=1e-6) for r in _records(tmp_path / "whole")]
    train(_cfg("train.steps=30", *ck15), tmp_path / "whole", resume=True, **kw)
    train(_cfg("train.steps=30", *ck15), tmp_path / "split", resume=True, **kw)
    whole = _records(tmp_path / "whole")
    assert [r["step"] for r in whole] == [10, 15, 20, 30]
    assert _records(tmp_path / "split") == [pytest.approx(r, rel=1e-6) for r in whole]


def test_an_infinite_window_mean_stays_infinite_across_a_resume(tmp_path):
    """Window sums are saved with the checkpoint; inf must come back as inf (it came back as NaN)."""
    from jmeta.run.runner import _Carry, _restore_carry, _save_carry

    class Ck:
        def all_steps(self):
            return [5]

    c = _Carry({"loss": float("inf"), "neg": float("-inf"), "bad": float("nan"), "ok": 1.5}, 5, 2)
    _save_carry(Ck(), tmp_path, 5, c)
    json.loads((tmp_path / "runner_state.json").read_text(), parse_constant=lambda n: pytest.fail(n))
    back = _restore_carry(tmp_path, 5)
    assert back.sums["loss"] == float("inf") and back.sums["neg"] == float("-inf") and np.isnan(back.sums["bad"])
    assert back.sums["ok"] == 1.5 and (back.steps, back.skipped) == (5, 2)


def test_resume_refuses_a_run_whose_checkpoints_are_gone(tmp_path, capsys):
    """Without a complete checkpoint a resume starts over: right after a crash before the first checkpoint,
    but a finished (or checkpointed) run whose checkpoints were deleted would lose its metrics."""
    import shutil

    from jmeta.run.runner import train

    kw = dict(progress=False, evaluate_at_end=False, plots=False, tensorboard=False)
    run = tmp_path / "run"
    train(_cfg("train.steps=30"), run, **kw)
    shutil.rmtree(run / "checkpoints")
    before = (run / "metrics.jsonl").read_bytes()
    err = _one_line_error(capsys, ["train", "--resume", str(run), "--no-progress", "--no-plots"], rc=2)
    assert "no complete checkpoint" in err and "reaches meta-step 30" in err and "another --out" in err
    assert (run / "metrics.jsonl").read_bytes() == before
    # A crash before the first checkpoint (metrics up to step 10 of a run checkpointing every 20) restarts.
    early = tmp_path / "early"
    train(_cfg("train.steps=30", "train.checkpoint_every=20"), early, stop_after=10, **kw)
    shutil.rmtree(early / "checkpoints")
    train(_cfg("train.steps=30", "train.checkpoint_every=20"), early, resume=True, **kw)
    assert [r["step"] for r in _records(early)] == [10, 20, 30]


def test_a_fresh_run_never_overwrites_another_config_json(tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    (d / "config.json").write_text('{"my": "precious config"}')
    err = _one_line_error(capsys, ["train", "--out", str(d), "--steps", "5", "--no-progress", "--no-eval",
                                   "--no-plots"], rc=2)
    assert "not a jmeta config" in err and "another --out" in err
    assert (d / "config.json").read_text() == '{"my": "precious config"}'
    # Another run's config (nothing else there yet) is refused too; the same config is this run's own.
    from jmeta.run.runner import train

    kw = dict(progress=False, evaluate_at_end=False, plots=False, tensorboard=False)
    e = tmp_path / "e"
    e.mkdir()
    (e / "config.json").write_text(_cfg("train.steps=5").to_json())
    with pytest.raises(FileExistsError, match="another run's config"):
        train(_cfg("train.steps=6"), e, **kw)
    train(_cfg("train.steps=5"), e, **kw)
    assert [r["step"] for r in _records(e)] == [5]
