"""Fault injection on whole runs: concurrent writers, SIGINT/SIGTERM, a full disk, read-only output, pickles.

Each test reproduces a failure of issue 20 (items 3, 6, 7, 8) and checks the promise: one line (``error: ...``
or the interruption notice), the exit status, and that nothing already written is lost.

The full-disk and read-only cases run on a real small tmpfs and a read-only bind mount where this machine
allows mounting (root with CAP_SYS_ADMIN); elsewhere those tests are skipped with the reason, and the
in-process simulations below (a file object whose writes fail with ENOSPC, ``savefig`` failing with EROFS)
still run.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import io
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from test_faults import REPO, _cfg, _one_line_error  # noqa: E402

from jmeta.run.cli import main  # noqa: E402
from jmeta.run.logs import MetricsLog  # noqa: E402

QUIET = ["--no-progress", "--no-plots", "--no-tensorboard", "--no-eval"]
SMALL_CLI = ["--set", "train.meta_batch_size=5", "--set", "train.log_every=10", "--set", "train.checkpoint_every=10"]
KW = dict(progress=False, evaluate_at_end=False, plots=False, tensorboard=False)


def _records(run):
    return [{k: v for k, v in r.items() if k != "time"} for r in MetricsLog.read(pathlib.Path(run) / "metrics.jsonl")]


def _final_state(run, cfg):
    from jmeta.run.experiment import build
    from jmeta.run.checkpoint import Checkpointer
    from jmeta.run.runner import run_keys
    from jmeta.train.step import init_train_state

    exp = build(cfg)
    template = init_train_state(exp.algorithm, exp.model.params, exp.model.state, exp.meta_optimizer,
                                key=run_keys(cfg.train.seed)[2])
    ck = Checkpointer(pathlib.Path(run) / "checkpoints")
    try:
        return ck.all_steps(), ck.restore(None, template)
    finally:
        ck.close()


def _assert_same_state(a, b):
    for x, y in zip(jax.tree.leaves(jax.tree.map(np.asarray, (a.meta_params, a.opt_state, a.step))),
                    jax.tree.leaves(jax.tree.map(np.asarray, (b.meta_params, b.opt_state, b.step)))):
        np.testing.assert_array_equal(x, y)  # bit-identical


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: 30 meta-steps, records every 10, checkpoints every 10."""
    from jmeta.run.runner import train

    run = tmp_path_factory.mktemp("ref") / "run"
    cfg = _cfg("train.steps=30")
    train(cfg, run, **KW)
    return run, cfg


def _lock_module():
    """jmeta/run/lock.py loaded alone (a child process holding a lock needs neither jax nor jmeta)."""
    return str(REPO / "jmeta" / "run" / "lock.py")


_HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("lock", sys.argv[1]); lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)
try:
    l = lock.RunLock(sys.argv[2], "holder").acquire()
    print("locked", flush=True)
except lock.RunLockedError:
    print("refused", flush=True)
    sys.exit(3)
import os.path
deadline = time.time() + 600
while not os.path.exists(sys.argv[3]) and time.time() < deadline:  # held until the parent says so
    time.sleep(0.05)
l.release()
"""


def _holder(folder, release):
    return subprocess.Popen([sys.executable, "-c", _HOLDER, _lock_module(), str(folder), str(release)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# -- item 3: the run-folder lock -------------------------------------------------------------------------------

def test_lock_is_exclusive_released_on_exit_and_a_killed_owner_is_taken_over(tmp_path):
    from jmeta.run.lock import LOCK_NAME, RunLock, RunLockedError

    d = tmp_path / "run"
    with RunLock(d, "first") as held:
        assert held.held and json.loads((d / LOCK_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(RunLockedError, match="in use by this process"):
            RunLock(d).acquire()  # a second open file description: refused even in one process
    assert not (d / LOCK_NAME).exists()  # released and removed
    # Another process holds it: refused, naming that process; SIGKILL leaves the file, and the next taker says so.
    child = _holder(d, tmp_path / "never")
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError) as e:
            RunLock(d).acquire()
        assert f"process {child.pid} on " in str(e.value) and "(holder, since" in str(e.value)
    finally:
        child.kill()
        child.wait()
    assert json.loads((d / LOCK_NAME).read_text())["pid"] == child.pid  # left behind by the kill
    notice = io.StringIO()
    with RunLock(d, notice=notice):
        pass
    lines = notice.getvalue().splitlines()
    assert len(lines) == 1 and f"left by process {child.pid}" in lines[0] and "no longer running" in lines[0]
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        RunLock(f).acquire()


def test_processes_racing_for_one_folder_exactly_one_wins(tmp_path):
    d = tmp_path / "run"
    children = [_holder(d, tmp_path / "release") for _ in range(4)]
    outs = [c.stdout.readline().strip() for c in children]  # the winner holds on until all have tried
    (tmp_path / "release").touch()
    for c in children:
        c.communicate(timeout=120)
    assert sorted(outs) == ["locked", "refused", "refused", "refused"], outs
    assert not (d / ".jmeta.lock").exists()


def test_lock_without_flock_falls_back_to_the_pid(tmp_path, monkeypatch):
    from jmeta.run import lock as L

    monkeypatch.setattr(L, "fcntl", None)
    d = tmp_path / "run"
    d.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (d / L.LOCK_NAME).write_text(json.dumps({"pid": sleeper.pid, "host": L.socket.gethostname()}))
        with pytest.raises(L.RunLockedError, match=f"process {sleeper.pid} on"):
            L.RunLock(d).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    notice = io.StringIO()
    with L.RunLock(d, notice=notice):  # its owner is dead: taken over, once
        with pytest.raises(L.RunLockedError, match="in use by this process"):
            L.RunLock(d).acquire()
    assert f"left by process {sleeper.pid}" in notice.getvalue() and not (d / L.LOCK_NAME).exists()
    (d / L.LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))  # another host: never taken over
    with pytest.raises(L.RunLockedError, match="if that process is gone, remove"):
        L.RunLock(d).acquire()


def test_sweep_folders_and_trials_are_locked(tmp_path, capsys):
    from jmeta.run.lock import RunLock

    out = tmp_path / "sweep"
    argv = ["sweep", "--grid", "algorithm.inner_lr=0.01,0.02", "--steps", "5", "--out", str(out), "--no-progress",
            "--no-tensorboard", "--set", "train.meta_batch_size=5", "--set", "eval.num_tasks=5"]
    with RunLock(out, "another sweep"):
        assert "in use by this process" in _one_line_error(capsys, argv)
    for vectorize in ([], ["--vectorize"]):
        with RunLock(out / "trial_000", "jmeta train --resume"):
            line = _one_line_error(capsys, argv + vectorize)
        assert f"{out / 'trial_000'} is in use" in line, line
        assert not (out / "trial_000" / "metrics.jsonl").exists() and not (out / "results.json").exists()


# -- items 3 and 7: a second writer refuses; SIGTERM checkpoints; the resume is bit-identical -----------------

def test_sigterm_checkpoints_and_resumes_bit_identically_while_other_writers_are_refused(tmp_path, capsys):
    from jmeta.run.runner import train

    run = tmp_path / "run"
    args = ["--set", "train.meta_batch_size=5", "--set", "train.log_every=50", "--set", "train.checkpoint_every=0"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "jmeta", "train", "--out", str(run), "--steps", "1000000", *args,
                             *QUIET], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").stat().st_size):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
        # Every other writer of the folder is refused in one line, exit 2, naming the owner.
        for argv in (["train", "--out", str(run), "--steps", "10", *args, *QUIET],
                     ["train", "--resume", str(run), *QUIET], ["eval", str(run), "--no-progress"],
                     ["export", str(run), "--platforms", "native"]):
            line = _one_line_error(capsys, argv)
            assert f"{run} is in use by process {proc.pid} on " in line, (argv, line)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    step = int(lines[0].split(" at step ")[1].split(";")[0])
    assert lines[0] == (f"jmeta: interrupted (SIGTERM) at step {step}; checkpoint {step} written to "
                        f"{run / 'checkpoints'}; resume with `jmeta train --resume {run}`")
    assert step > 0 and step % 50 == 0 and not (run / ".jmeta.lock").exists()
    recs = _records(run)
    assert [r["step"] for r in recs] == list(range(50, step + 1, 50))  # one writer: no interleaving
    # The documented resume (for 50 more steps) equals an uninterrupted run of as many steps, bit for bit.
    assert main(["train", "--resume", str(run), "--steps", str(step + 50), *QUIET]) == 0
    cfg = _cfg("train.log_every=50", "train.checkpoint_every=0", f"train.steps={step + 50}")
    train(cfg, tmp_path / "whole", **KW)
    assert _records(run) == _records(tmp_path / "whole")
    (steps_a, a), (steps_b, b) = _final_state(run, cfg), _final_state(tmp_path / "whole", cfg)
    assert steps_a == [step, step + 50] and steps_b == [step + 50]
    _assert_same_state(a, b)


class _Signaller:
    """A metrics sink that sends this process ``signum`` (``times`` times) when the record of ``at`` is written."""

    def __init__(self, at, signum=signal.SIGINT, times=1):
        self.at, self.signum, self.times = at, signum, times

    def write(self, step, record):
        if step == self.at:
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)

    def close(self):
        pass


@pytest.fixture
def sigint_handled():
    """SIGINT as an interactive shell leaves it: a suite started in the background (``pytest ... &`` from a
    script) inherits SIGINT ignored, and jmeta rightly leaves an ignored SIGINT ignored (module docstring of
    :mod:`jmeta.run.interrupt`); these tests are about what a delivered SIGINT does."""
    old = signal.getsignal(signal.SIGINT)
    if old is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_sigint_in_process_checkpoints_the_current_step(tmp_path, reference, sigint_handled):
    """SIGINT as SIGTERM (the subprocess test above): the checkpoint of the step reached (not a periodic one),
    then a resume that equals the uninterrupted reference."""
    from jmeta.run.interrupt import Interrupted
    from jmeta.run.runner import train

    signum = signal.SIGINT
    run = tmp_path / "run"
    cfg = _cfg("train.steps=30", "train.checkpoint_every=0")  # without the signal: one checkpoint, at 30
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as e:
        train(cfg, run, sinks=[_Signaller(10, signum)], **KW)
    name = signal.Signals(signum).name
    assert e.value.signum == signum and e.value.step == 10
    assert str(e.value) == (f"interrupted ({name}) at step 10; checkpoint 10 written to {run / 'checkpoints'}; "
                            f"resume with `jmeta train --resume {run}`")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # restored
    train(cfg, run, resume=True, **KW)
    ref_run, ref_cfg = reference
    assert _records(run) == _records(ref_run)
    _assert_same_state(_final_state(run, cfg)[1], _final_state(ref_run, ref_cfg)[1])


def test_a_second_signal_stops_at_once_and_the_cli_says_what_holds(tmp_path, capsys, monkeypatch, sigint_handled):
    from jmeta.run import runner

    run = tmp_path / "run"
    real = runner.train
    monkeypatch.setattr(runner, "train", lambda *a, **k: real(*a, **{**k, "sinks": [_Signaller(10, times=2)]}))
    assert main(["train", "--out", str(run), "--steps", "30", *SMALL_CLI, "--set", "train.checkpoint_every=20",
                 *QUIET]) == 130
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert err == [f"jmeta: interrupted (SIGINT) again at once, before step 10 was checkpointed; resume with "
                   f"`jmeta train --resume {run}` (no checkpoint yet: it starts over)"]
    assert [r["step"] for r in _records(run)] == [10] and not (run / ".jmeta.lock").exists()


# -- item 6: a full disk and read-only output ------------------------------------------------------------------

class _FailingFile:
    """A file object whose writes fail with ENOSPC, as a full disk's would (no file name in the error)."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)


def test_disk_full_in_the_metrics_flush_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    """Simulated in-process (runs everywhere): the second record cannot be written."""
    init = MetricsLog.__init__
    writes = []

    def patched_init(self, *a, **k):
        init(self, *a, **k)
        real_write = self.write

        def write(step, metrics):
            writes.append(step)
            if len(writes) == 2:
                self._f = _FailingFile(self._f)
            return real_write(step, metrics)
        self.write = write

    monkeypatch.setattr(MetricsLog, "__init__", patched_init)
    run = tmp_path / "run"
    line = _one_line_error(capsys, ["train", "--out", str(run), "--steps", "30", *SMALL_CLI, *QUIET])
    assert line == (f"error: cannot write {run / 'metrics.jsonl'}: No space left on device (the disk is full: free "
                    f"space there, or write elsewhere)")
    assert [r["step"] for r in _records(run)] == [10] and not (run / ".jmeta.lock").exists()


def test_disk_full_in_tensorboard_names_the_event_file(tmp_path):
    from jmeta.run.tensorboard import TensorBoardSink

    sink = TensorBoardSink(tmp_path)
    sink.write(1, {"loss": 1.0})
    size = sink.path.stat().st_size
    sink._f = _FailingFile(sink._f)
    with pytest.raises(OSError) as e:
        sink.write(2, {"loss": 0.5})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(sink.path)
    sink._f = sink._f._f
    sink.close()
    assert sink.path.stat().st_size == size  # the records written before are intact


def test_read_only_png_is_one_line_naming_it_after_the_numbers(tmp_path, capsys, monkeypatch):
    """Simulated in-process (runs everywhere): matplotlib cannot write; the evaluation was printed first."""
    pytest.importorskip("matplotlib")
    import matplotlib.figure

    def savefig(self, fname, *a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(fname))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--steps", "0", *SMALL_CLI, "--set", "eval.num_tasks=5",
                 "--set", "eval.shots=[5]", "--no-progress", "--no-tensorboard"]) == 2
    cap = capsys.readouterr()
    assert cap.err.strip() == (f"error: cannot write {run / 'adaptation_curves.png'}: Read-only file system (the "
                               f"file system is mounted read-only: write elsewhere)")
    assert "K=5 loss after 1 step(s)" in cap.out and (run / "eval.json").is_file()
    assert not list(run.glob(".*.tmp.png"))


def test_a_full_disk_in_orbax_is_not_reported_as_device_memory():
    from jmeta._io import output_error
    from jmeta.run.runner import _is_oom

    e = ValueError("RESOURCE_EXHAUSTED: Error writing \"x\" in OCDBT database at local file \"/r/c/10.orbax-"
                   "checkpoint-tmp/\": ... Failed to write 276 bytes to file 8: No space left on device "
                   "[os_error_code='28']")
    assert not _is_oom(e)
    err = output_error(RuntimeError("wrapped"), "/r/c/10")
    assert err is None
    try:
        try:
            raise e
        except ValueError as inner:
            raise RuntimeError("orbax failed") from inner
    except RuntimeError as outer:
        err = output_error(outer, "/r/c/10")
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC and err.filename == "/r/c/10"


def _can_mount() -> str | None:
    """Why mounting is impossible here, or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"):
        return "mounting a tmpfs / read-only bind mount needs root and the mount command"
    return None


@contextlib.contextmanager
def _mounted(kind, target, source=None):
    target.mkdir(parents=True, exist_ok=True)
    cmd = (["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(target)] if kind == "tmpfs"
           else ["mount", "--bind", "-o", "ro", str(source), str(target)])
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        pytest.skip(f"cannot mount a {kind} here ({' '.join(cmd)}: {p.stderr.strip()}); the in-process "
                    f"simulations cover the messages")
    try:
        if kind != "tmpfs":  # older kernels ignore ro on the first bind: make sure
            subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], capture_output=True)
            probe = subprocess.run(["touch", str(target / ".probe")], capture_output=True)
            if probe.returncode == 0:
                pytest.skip("the bind mount is not read-only here")
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture(scope="module")
def tmpfs(tmp_path_factory):
    why = _can_mount()
    if why:
        pytest.skip(why)
    with _mounted("tmpfs", tmp_path_factory.mktemp("tmpfs")) as d:
        yield d


@contextlib.contextmanager
def _disk_full(folder):
    """Fills the file system of ``folder`` to the last byte; frees it afterwards."""
    path = folder / "filler"
    chunk = b"\0" * (1 << 16)
    with open(path, "wb", buffering=0) as f:
        while chunk:
            try:
                f.write(chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC
                chunk = chunk[:len(chunk) // 2]
    try:
        yield
    finally:
        path.unlink()


def test_full_disk_before_the_start_refuses_before_any_work(tmpfs, capsys, monkeypatch):
    from jmeta.run import experiment

    monkeypatch.setattr(experiment, "build", lambda *a, **k: pytest.fail("built on a full disk"))
    monkeypatch.setattr(experiment, "load_run", lambda *a, **k: pytest.fail("loaded on a full disk"))
    run = tmpfs / "fresh"
    with _disk_full(tmpfs):
        line = _one_line_error(capsys, ["train", "--out", str(run), "--steps", "10", *QUIET])
        assert line.startswith(f"error: cannot write {run / '.jmeta.lock'}: No space left on device"), line
        assert not (run / ".jmeta.lock").exists()


def test_full_disk_mid_run_loses_nothing_and_the_run_resumes(tmpfs, reference, capsys, monkeypatch):
    """The disk fills up after the record of step 20: the checkpoint of step 20 cannot be written. One line
    naming it (not orbax's text, not 'the device ran out of memory'), checkpoint 10 and the records intact,
    no partial checkpoint left; after freeing space the resume ends as the uninterrupted run."""
    from jmeta.run.checkpoint import Checkpointer

    run = tmpfs / "mid"
    save = Checkpointer.save
    filled = contextlib.ExitStack()

    def fill_before_20(self, step, tree, **kw):
        if step == 20:
            filled.enter_context(_disk_full(tmpfs))
        return save(self, step, tree, **kw)

    monkeypatch.setattr(Checkpointer, "save", fill_before_20)
    with filled:
        line = _one_line_error(capsys, ["train", "--out", str(run), "--steps", "30", *SMALL_CLI, *QUIET])
        assert line == (f"error: cannot write {run / 'checkpoints' / '20'}: No space left on device (the disk is "
                        f"full: free space there, or write elsewhere)")
        assert [r["step"] for r in _records(run)] == [10, 20]
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["10"]  # no partial checkpoint left
        assert (run / "config.json").is_file() and not (run / ".jmeta.lock").exists()
        assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(Checkpointer, "save", save)
    assert main(["train", "--resume", str(run), *QUIET]) == 0
    ref_run, ref_cfg = reference
    assert _records(run) == _records(ref_run)
    _assert_same_state(_final_state(run, ref_cfg)[1], _final_state(ref_run, ref_cfg)[1])


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A finished run with eval.json and the PNGs (10 meta-steps, 5 evaluation tasks)."""
    pytest.importorskip("matplotlib")
    run = tmp_path_factory.mktemp("evaluated") / "run"
    assert main(["train", "--out", str(run), "--steps", "10", *SMALL_CLI, "--set", "eval.num_tasks=5",
                 "--set", "eval.shots=[5]", "--no-progress", "--no-tensorboard"]) == 0
    return run


def test_sigterm_during_eval_is_one_line_and_leaves_the_folder_as_it_was(evaluated, capsys, monkeypatch):
    from jmeta.run import runner

    before = (evaluated / "eval.json").read_bytes()

    def killed(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        pytest.fail("SIGTERM did not stop the evaluation")

    monkeypatch.setattr(runner, "evaluate_run", killed)
    assert main(["eval", str(evaluated), "--no-progress"]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip() == "jmeta: interrupted (SIGTERM) while evaluating; nothing was written"
    assert (evaluated / "eval.json").read_bytes() == before and not (evaluated / ".jmeta.lock").exists()


def test_full_disk_in_eval_and_plots_prints_the_numbers_and_keeps_the_old_files(tmpfs, evaluated, capsys,
                                                                                monkeypatch):
    from jmeta.run import plots
    from jmeta.run import runner

    run = tmpfs / "evaluated"
    shutil.copytree(evaluated, run)
    before = (run / "eval.json").read_bytes()
    evaluate_run = runner.evaluate_run
    with contextlib.ExitStack() as filled:
        def full_after(*a, **k):  # the evaluation runs, then the disk is full
            ev = evaluate_run(*a, **k)
            filled.enter_context(_disk_full(tmpfs))
            return ev

        monkeypatch.setattr(runner, "evaluate_run", full_after)
        assert main(["eval", str(run), "--no-progress"]) == 2
        cap = capsys.readouterr()
        assert cap.err.strip().startswith(f"error: cannot write {run / 'eval.json'}: No space left on device")
        assert "K=5 loss after 1 step(s)" in cap.out  # the numbers, before the write failed
        assert (run / "eval.json").read_bytes() == before and not list(run.glob(".eval.json.*"))
    monkeypatch.setattr(runner, "evaluate_run", evaluate_run)
    pngs = {p.name: p.read_bytes() for p in run.glob("*.png")}
    plot_run = plots.plot_run
    with contextlib.ExitStack() as filled:
        def full_then_plot(d):
            filled.enter_context(_disk_full(tmpfs))
            return plot_run(d)

        monkeypatch.setattr(plots, "plot_run", full_then_plot)
        line = _one_line_error(capsys, ["plot", str(run)])
        assert line.startswith(f"error: cannot write {run / 'learning_curves.png'}: No space left on device"), line
        assert {p.name: p.read_bytes() for p in run.glob("*.png")} == pngs  # the old PNGs are intact
        assert not list(run.glob(".*.tmp.png"))


@pytest.fixture(scope="module")
def read_only_run(evaluated, tmp_path_factory):
    why = _can_mount()
    if why:
        pytest.skip(why)
    src = tmp_path_factory.mktemp("ro-src") / "run"
    shutil.copytree(evaluated, src)
    with _mounted("bind", tmp_path_factory.mktemp("ro") / "run", source=src) as d:
        yield d


def test_read_only_run_folder_every_command_is_one_line_before_work(read_only_run, tmp_path, capsys, monkeypatch):
    from jmeta.run import experiment

    run = read_only_run
    ro = "Read-only file system (the file system is mounted read-only: write elsewhere)"
    load_run, build = experiment.load_run, experiment.build
    monkeypatch.setattr(experiment, "load_run", lambda *a, **k: pytest.fail("loaded before finding it read-only"))
    monkeypatch.setattr(experiment, "build", lambda *a, **k: pytest.fail("built before finding it read-only"))
    lock = run / ".jmeta.lock"
    assert _one_line_error(capsys, ["eval", str(run), "--no-progress"]) == f"error: cannot write {lock}: {ro}"
    assert _one_line_error(capsys, ["train", "--resume", str(run), "--steps", "20", *QUIET]) == \
        f"error: cannot write {lock}: {ro}"
    assert _one_line_error(capsys, ["train", "--out", str(run / "new"), *QUIET]) == \
        f"error: cannot write {run / 'new'}: {ro}"
    assert _one_line_error(capsys, ["export", str(run)]) == f"error: cannot write {lock}: {ro}"
    assert _one_line_error(capsys, ["plot", str(run)]) == f"error: cannot write {run / 'learning_curves.png'}: {ro}"
    # Exported elsewhere, a read-only run is fine (nothing can be writing it from here).
    monkeypatch.setattr(experiment, "load_run", load_run)
    monkeypatch.setattr(experiment, "build", build)
    assert main(["export", str(run), "--out", str(tmp_path / "x"), "--platforms", "native"]) == 0
    assert (tmp_path / "x" / "predict.jaxexport").is_file()


# -- item 8: a mini-ImageNet pickle needs an explicit opt-in ----------------------------------------------------

def test_miniimagenet_pickle_is_refused_in_one_line_naming_the_opt_in(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "miniimagenet").mkdir(parents=True)
    pkl = data / "miniimagenet" / "mini-imagenet-cache-train.pkl"
    pkl.write_bytes(b"not a pickle at all")
    base = ["train", "--config", "miniimagenet-5w1s-maml", "--data-dir", str(data), "--steps", "1", *QUIET]
    line = _one_line_error(capsys, [*base, "--out", str(tmp_path / "a")])
    assert str(pkl) in line and "--allow-pickle" in line and "task.allow_pickle=true" in line, line
    # The flag and the config key reach the loader: the file is unpickled (and refused as corrupt, one line).
    for opt_in in (["--allow-pickle"], ["--set", "task.allow_pickle=true"]):
        line = _one_line_error(capsys, [*base, "--out", str(tmp_path / opt_in[-1].replace("=", "_")), *opt_in])
        assert "cannot unpickle" in line and str(pkl) in line, line
    assert "task.allow_pickle" in _one_line_error(capsys, ["train", "--set", "task.allow_pickle=1",
                                                           "--out", str(tmp_path / "b")])
