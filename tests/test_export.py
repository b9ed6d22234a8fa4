"""`jmeta export`: the adapt-then-predict program runs in a fresh process without jmeta, same predictions."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("flatbuffers")  # jax.export serialization needs it

from jmeta.cli import main  # noqa: E402

# Runs in a fresh interpreter: importing jmeta there is made impossible.
STANDALONE = r"""
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "jmeta" or name.startswith("jmeta."):
            raise ImportError("jmeta must not be needed to run an export")
sys.meta_path.insert(0, _Block())
art, inputs, outputs = sys.argv[1:4]
sys.path.insert(0, art)
import load
import numpy as np
predict = load.load(art)
with np.load(inputs) as z:
    res = {f"out{k}": np.asarray(predict(z[f"sx{k}"], z[f"sy{k}"], z[f"qx{k}"])) for k in (3, 10)}
np.savez(outputs, **res)
assert not any(m == "jmeta" or m.startswith("jmeta.") for m in sys.modules)
print("ok", sorted(res))
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("export") / "run"
    assert main(["train", "--out", str(d), "--steps", "30", "--set", "train.log_every=30",
                 "--set", "train.meta_batch_size=5", "--set", "algorithm.eval_steps=3",
                 "--no-progress", "--no-eval", "--no-plots", "--no-tensorboard"]) == 0
    return d


def _reference(run_dir: pathlib.Path, tasks, num_steps):
    """jmeta's own adapt + predict on the restored checkpoint."""
    from jmeta.experiment import load_run

    cfg, exp, state = load_run(run_dir)
    algo = exp.algorithm

    @jax.jit
    def f(sx, sy, qx):
        adapted = algo.adapt(state.meta_params, state.model_state, sx, sy, num_steps=num_steps)
        return algo.predict(state.meta_params, adapted, state.model_state, qx)

    return {k: np.asarray(f(*t)) for k, t in tasks.items()}, state


def test_export_runs_standalone_with_same_predictions(run_dir, tmp_path, capsys):
    art = tmp_path / "artifact"
    assert main(["export", str(run_dir), "--out", str(art)]) == 0
    assert "load.py" in capsys.readouterr().out
    meta = json.loads((art / "export.json").read_text())
    assert meta["adaptation_steps"] == 3 and meta["checkpoint_step"] == 30
    assert meta["inputs"]["support_x"] == {"shape": ["k", 1], "dtype": "float32"}
    assert meta["inputs"]["query_x"]["shape"] == ["q", 1]
    assert set(meta["platforms"]) >= {"cpu"}

    rng = np.random.default_rng(0)
    tasks = {}
    for k in (3, 10):  # one artifact, two support sizes (symbolic shapes)
        sx = rng.uniform(-5, 5, (k, 1)).astype(np.float32)
        qx = rng.uniform(-5, 5, (7 + k, 1)).astype(np.float32)
        amp, phase = rng.uniform(0.1, 5.0), rng.uniform(0, np.pi)
        tasks[k] = (sx, (amp * np.sin(sx - phase)).astype(np.float32), qx)
    np.savez(tmp_path / "in.npz", **{f"{n}{k}": a for k, t in tasks.items() for n, a in zip(("sx", "sy", "qx"), t)})

    proc = subprocess.run([sys.executable, "-c", STANDALONE, str(art), str(tmp_path / "in.npz"),
                           str(tmp_path / "out.npz")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    want, state = _reference(run_dir, tasks, 3)
    with np.load(tmp_path / "out.npz") as z:
        for k in (3, 10):
            assert z[f"out{k}"].shape == (7 + k, 1)
            np.testing.assert_allclose(z[f"out{k}"], want[k], rtol=1e-5, atol=1e-6)

    # Adaptation really happens inside the program: 0 steps would predict differently.
    from jmeta.export import load_exported

    predict = load_exported(art)
    np.testing.assert_allclose(np.asarray(predict(*tasks[3])), want[3], rtol=1e-5, atol=1e-6)
    zero, _ = _reference(run_dir, {3: tasks[3]}, 0)
    assert np.abs(zero[3] - want[3]).max() > 1e-3

    # The parameters file holds the checkpoint's leaves in the listed order.
    leaves = jax.tree.leaves((state.meta_params, state.model_state))
    with np.load(art / "params.npz") as z:
        assert [tuple(z[x["name"]].shape) for x in meta["leaves"]] == [tuple(x.shape) for x in leaves]
        for x, leaf in zip(meta["leaves"], leaves):
            np.testing.assert_array_equal(z[x["name"]], np.asarray(leaf))


def test_export_steps_override_and_missing_checkpoint(run_dir, tmp_path):
    from jmeta.export import export_run
    from jmeta.train.checkpoint import CheckpointError

    out = export_run(run_dir, tmp_path / "a", num_steps=1, platforms=None)
    assert json.loads((out / "export.json").read_text())["adaptation_steps"] == 1
    # The default is the run's evaluation (eval.steps, what eval.json reports), also in a config file whose
    # algorithm.eval_steps says otherwise (written before the two were tied, or by hand).
    import shutil

    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["eval"].update(steps=2, report_steps=[1, 2])
    assert cfg["algorithm"]["eval_steps"] == 3
    (other / "config.json").write_text(json.dumps(cfg))
    out = export_run(other, tmp_path / "c", platforms=None)
    assert json.loads((out / "export.json").read_text())["adaptation_steps"] == 2
    with pytest.raises(ValueError, match="num_steps must be an integer >= 0"):
        export_run(run_dir, tmp_path / "b", num_steps=-1)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((run_dir / "config.json").read_text())
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        export_run(empty)


def test_load_run_names_what_is_missing(tmp_path):
    from jmeta.experiment import load_run

    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_run(tmp_path)
