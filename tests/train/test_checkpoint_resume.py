"""Checkpoints a researcher can trust: kill -9 and resume is bit-identical, torn writes never load.

(a) A real ``python -m jmeta train`` subprocess is SIGKILLed after its first
checkpoint; ``jmeta train --resume`` finishes it; its final parameters equal
an uninterrupted run's bit for bit. (c) Its ``metrics.jsonl`` (and the
TensorBoard scalars) then hold exactly one record per logging step, equal to
the uninterrupted run's. (b) A checkpoint write that dies midway (orbax's
final rename fails) or a step folder without orbax's commit marker is never
listed or restored; the previous checkpoint stays loadable.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta.run import config as C
from jmeta.run.checkpoint import COMMIT_MARKER, CheckpointError, Checkpointer, check_orbax_version
from jmeta.run.logs import MetricsLog

REPO = pathlib.Path(__file__).resolve().parents[2]
STEPS = 3000
OVERRIDES = ["train.meta_batch_size=5", "train.log_every=100", "train.checkpoint_every=100",
             "train.keep_checkpoints=2", "train.seed=7"]


def _cfg():
    cfg = C.load("sinusoid-maml")
    for o in OVERRIDES + [f"train.steps={STEPS}"]:
        cfg = C.apply_override(cfg, o)
    return cfg


def _final_state(run_dir, cfg, step):
    from jmeta.run.experiment import build
    from jmeta.train.step import init_train_state

    exp = build(cfg)
    template = init_train_state(exp.algorithm, exp.model.params, exp.model.state, exp.meta_optimizer,
                                key=jax.random.split(jax.random.key(cfg.train.seed), 3)[2])
    ck = Checkpointer(pathlib.Path(run_dir) / "checkpoints")
    try:
        assert ck.latest_step() == step
        return ck.restore(step, template)
    finally:
        ck.close()


def _complete_steps(ckpt_dir: pathlib.Path) -> list[int]:
    if not ckpt_dir.is_dir():
        return []
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit() and (p / COMMIT_MARKER).is_file())


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    from jmeta.run.cli import main
    from jmeta.run.runner import train

    killed, whole = tmp_path / "killed", tmp_path / "whole"
    cmd = [sys.executable, "-m", "jmeta", "train", "--config", "sinusoid-maml", "--steps", str(STEPS),
           "--out", str(killed), "--no-progress", "--no-eval", "--no-plots"]
    for o in OVERRIDES:
        cmd += ["--set", o]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Meanwhile, the uninterrupted reference run in this process.
        train(_cfg(), whole, progress=False, evaluate_at_end=False, plots=False)
        deadline = time.monotonic() + 240
        while not _complete_steps(killed / "checkpoints"):
            if proc.poll() is not None:
                pytest.fail(f"the training subprocess ended (rc {proc.returncode}) before its first checkpoint: "
                            f"{proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint within 240 s")
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    done = _complete_steps(killed / "checkpoints")
    assert done and done[-1] < STEPS, f"the run was not interrupted mid-way (checkpoints {done})"

    assert main(["train", "--resume", str(killed), "--no-progress", "--no-eval", "--no-plots"]) == 0

    a, b = _final_state(whole, _cfg(), STEPS), _final_state(killed, _cfg(), STEPS)
    assert int(a.step) == int(b.step) == STEPS
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))

    # (c) one record per logging step after the resume, identical to the uninterrupted run's.
    ra, rb = MetricsLog.read(whole / "metrics.jsonl"), MetricsLog.read(killed / "metrics.jsonl")
    assert [r["step"] for r in rb] == list(range(100, STEPS + 1, 100))
    strip = [{k: v for k, v in r.items() if k != "time"} for r in ra], \
        [{k: v for k, v in r.items() if k != "time"} for r in rb]
    assert strip[0] == strip[1]

    # ... and TensorBoard shows each step once (stale steps of the killed process purged).
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(str(killed))
    acc.Reload()
    tb = acc.Scalars("loss")
    assert [e.step for e in tb] == list(range(100, STEPS + 1, 100))
    np.testing.assert_allclose([e.value for e in tb], [r["loss"] for r in rb], rtol=1e-6)


def test_interrupted_write_never_loads_and_previous_stays(tmp_path, monkeypatch):
    from orbax.checkpoint._src.path import async_path

    tree = {"w": jnp.arange(4.0), "n": jnp.asarray(3, jnp.int32)}
    ck = Checkpointer(tmp_path, keep=5)
    ck.save(100, tree)
    ck.save(200, jax.tree.map(lambda x: x * 2, tree))

    async def crash(*args, **kwargs):  # the process dies between writing the files and the final rename
        raise OSError("simulated crash before the checkpoint was committed")

    monkeypatch.setattr(async_path, "rename", crash)
    with pytest.raises(OSError, match="simulated crash"):
        ck.save(300, jax.tree.map(lambda x: x * 3, tree))
    monkeypatch.undo()
    ck.close()
    leftovers = [p.name for p in tmp_path.iterdir() if not p.name.isdigit()]
    assert any(".orbax-checkpoint-tmp" in n for n in leftovers), leftovers  # orbax's temporary folder

    # A step folder without the commit marker (e.g. half copied) is not a checkpoint either.
    (tmp_path / "400").mkdir()
    (tmp_path / "400" / "_CHECKPOINT_METADATA").write_text("{}")

    ck = Checkpointer(tmp_path, keep=5)
    assert ck.all_steps() == [100, 200]
    assert ck.latest_step() == 200
    got = ck.restore(None, tree)
    np.testing.assert_array_equal(got["w"], np.arange(4.0) * 2)
    assert int(got["n"]) == 6

    # The next save of that step replaces the leftovers.
    ck.save(400, jax.tree.map(lambda x: x * 4, tree))
    assert ck.all_steps() == [100, 200, 400]
    np.testing.assert_array_equal(ck.restore(None, tree)["w"], np.arange(4.0) * 4)
    assert not any(".orbax-checkpoint-tmp" in p.name for p in tmp_path.iterdir())
    ck.close()


def test_restore_into_other_structure_is_a_clear_error(tmp_path):
    from jmeta.run.checkpoint import CheckpointError

    ck = Checkpointer(tmp_path)
    ck.save(1, {"w": jnp.ones(3)})
    with pytest.raises(CheckpointError, match=r"checkpoint 1 in .* does not match the config \(it lacks 1 array"):
        ck.restore(1, {"w": jnp.ones(3), "extra": jnp.zeros(2)})
    ck.close()
    empty = Checkpointer(tmp_path / "none")
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        empty.restore(None, {"w": jnp.ones(3)})
    empty.close()


@pytest.mark.parametrize("version", ["0.12.3", "0.12.8", "0.13.0rc1", "1.0", "dev", None])
def test_orbax_versions_that_write_the_commit_marker_pass(version):
    check_orbax_version(version)


@pytest.mark.parametrize("version", ["0.12.2", "0.11.40", "0.6.0"])
def test_older_orbax_is_refused_with_the_version_to_install(version):
    with pytest.raises(CheckpointError, match=rf"orbax-checkpoint {version} is too old.*>= 0\.12\.3.*"
                                              r"pip install -U 'orbax-checkpoint>=0\.12\.3'"):
        check_orbax_version(version)


def test_installed_orbax_writes_the_commit_marker(tmp_path):
    """The orbax this environment resolved is new enough, and really writes the marker jmeta relies on."""
    import orbax.checkpoint as ocp

    check_orbax_version(ocp.__version__)
    ck = Checkpointer(tmp_path / "ck", keep=2)
    ck.save(7, {"w": jnp.arange(3.0)})
    assert (tmp_path / "ck" / "7" / COMMIT_MARKER).is_file()
    assert ck.latest_step() == 7


def test_checkpointer_and_cli_refuse_an_old_orbax(tmp_path, monkeypatch, capsys):
    import orbax.checkpoint as ocp

    from jmeta.run.cli import main

    monkeypatch.setattr(ocp, "__version__", "0.12.2")
    with pytest.raises(CheckpointError, match="too old"):
        Checkpointer(tmp_path / "ck")
    assert not (tmp_path / "ck").exists()
    rc = main(["train", "--out", str(tmp_path / "run"), "--steps", "2", "--no-progress", "--no-plots"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "orbax-checkpoint 0.12.2 is too old" in err and "Traceback" not in err
