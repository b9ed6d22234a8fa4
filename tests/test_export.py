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

from jmeta.run.cli import main  # noqa: E402

# Runs in a fresh interpreter that can import only the standard library and what the docs list (jax with the
# packages jax requires, numpy, flatbuffers; argv[4], JSON): as in a fresh `pip install jax numpy flatbuffers`
# environment, every other import fails (jax's optional ones then fall back as they would there), so the
# loader works only if it needs nothing else -- not jmeta, flax, optax or orbax.
STANDALONE = r"""
import importlib.machinery, json, sys
art, inputs, outputs, allowed = sys.argv[1], sys.argv[2], sys.argv[3], set(json.loads(sys.argv[4]))
class _OnlyDocumented:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in allowed or top.startswith("jax") or "." in name:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        third_party = spec is not None and "-packages" in str(spec.origin or spec.submodule_search_locations)
        if third_party or top in ("jmeta", "flax", "optax", "orbax"):  # jmeta: an editable install's finder
            raise ImportError(f"{name} is not installed (the loader may need only the documented packages)")
sys.meta_path.insert(0, _OnlyDocumented())
sys.path.insert(0, art)
import load
import numpy as np
predict = load.load(art)
with np.load(inputs) as z:
    res = {f"out{k}": np.asarray(predict(z[f"sx{k}"], z[f"sy{k}"], z[f"qx{k}"])) for k in (3, 10)}
np.savez(outputs, **res)
assert not any(m.split(".")[0] in ("jmeta", "flax", "optax", "orbax") for m in sys.modules)
assert "flatbuffers" in sys.modules  # why the docs must list it
print("ok", sorted(res))
"""


def _documented_requirements() -> set[str]:
    """What the export's docs say a loader needs: jax (with the packages jax itself requires), numpy and
    flatbuffers, as import names."""
    import importlib.metadata as md
    import re

    names = {"jax", "numpy", "flatbuffers"}
    for req in md.requires("jax") or []:
        if "extra ==" not in req:
            names.add(re.split(r"[ ;<>=!~\[]", req, maxsplit=1)[0].replace("-", "_").lower())
    return names


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("export") / "run"
    assert main(["train", "--out", str(d), "--steps", "30", "--set", "train.log_every=30",
                 "--set", "train.meta_batch_size=5", "--set", "algorithm.eval_steps=3",
                 "--no-progress", "--no-eval", "--no-plots", "--no-tensorboard"]) == 0
    return d


def _reference(run_dir: pathlib.Path, tasks, num_steps):
    """jmeta's own adapt + predict on the restored checkpoint."""
    from jmeta.run.experiment import load_run

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
                           str(tmp_path / "out.npz"), json.dumps(sorted(_documented_requirements()))],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    want, state = _reference(run_dir, tasks, 3)
    with np.load(tmp_path / "out.npz") as z:
        for k in (3, 10):
            assert z[f"out{k}"].shape == (7 + k, 1)
            np.testing.assert_allclose(z[f"out{k}"], want[k], rtol=1e-5, atol=1e-6)

    # Adaptation really happens inside the program: 0 steps would predict differently.
    from jmeta.run.export import load_exported

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
    from jmeta.run.export import export_run
    from jmeta.run.checkpoint import CheckpointError

    out = export_run(run_dir, tmp_path / "a", num_steps=1, platforms=None)
    assert json.loads((out / "export.json").read_text())["adaptation_steps"] == 1
    # The default is the run's evaluation (eval.steps, what eval.json reports), also in a config file whose
    # algorithm.eval_steps says otherwise (written before the two were tied, or by hand).
    import shutil

    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["eval"].update(steps=2, report_steps=[1, 2])
    assert "eval_steps" not in cfg["algorithm"]  # the evaluation's steps are eval.steps
    cfg["algorithm"]["eval_steps"] = 3  # as a config.json of an earlier jmeta held them
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
    from jmeta.run.experiment import load_run

    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_run(tmp_path)


def test_printed_hint_runs_as_printed_in_a_folder_with_spaces(run_dir, tmp_path, capsys):
    """The `python .../load.py ...` line the CLI prints is shell-quoted: pasted as is, it runs."""
    import shlex

    art = tmp_path / "my exports" / "it's here"
    assert main(["export", str(run_dir), "--out", str(art), "--platforms", "native"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if "load.py" in x][-1]
    assert "flatbuffers" in line
    argv = shlex.split(line.split(": ", 2)[-1])
    assert argv[0] == "python" and argv[1] == str(art / "load.py") and argv[2] == str(art)
    sx = np.linspace(-3, 3, 5, dtype=np.float32)[:, None]
    np.savez(tmp_path / "inputs.npz", support_x=sx, support_y=np.sin(sx), query_x=sx)
    proc = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert np.load(tmp_path / "outputs.npy").shape == (5, 1)


NO_FLATBUFFERS = r"""
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "flatbuffers":
            raise ImportError("No module named 'flatbuffers'")
sys.meta_path.insert(0, _Block())
sys.path.insert(0, sys.argv[1])
import load
try:
    load.load(sys.argv[1])
except ImportError as e:
    print("ImportError:", e)
"""


def test_loader_without_flatbuffers_says_what_to_install(run_dir, tmp_path):
    from jmeta.run.export import export_run

    art = export_run(run_dir, tmp_path / "a", platforms=None)
    proc = subprocess.run([sys.executable, "-c", NO_FLATBUFFERS, str(art)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "needs the flatbuffers package" in proc.stdout and "pip install flatbuffers" in proc.stdout, proc.stdout


@pytest.fixture(scope="module")
def classifier_artifact(tmp_path_factory):
    """A small classification artifact in the export format (3 classes, float images that training scaled from
    uint8), written without a training run: the loader's input checks are what is tested."""
    from jmeta.run.export import LOADER_SOURCE

    d = tmp_path_factory.mktemp("classifier")
    w = np.linspace(-1, 1, 4 * 3, dtype=np.float32).reshape(4, 3)

    def f(leaves, sx, sy, qx):
        proto = jax.nn.one_hot(sy, 3).T @ sx.reshape(sx.shape[0], -1)  # per-class sums
        return qx.reshape(qx.shape[0], -1) @ leaves[0] + proto.sum() * 0.0

    k, q = jax.export.symbolic_shape("k, q")
    exp = jax.export.export(jax.jit(f))([jax.ShapeDtypeStruct(w.shape, w.dtype)],
                                        jax.ShapeDtypeStruct((k, 2, 2, 1), np.float32),
                                        jax.ShapeDtypeStruct((k,), np.int32),
                                        jax.ShapeDtypeStruct((q, 2, 2, 1), np.float32))
    (d / "predict.jaxexport").write_bytes(bytes(exp.serialize()))
    np.savez(d / "params.npz", leaf_0000=w)
    meta = {"format": "jmeta-export/1", "program": "predict.jaxexport", "params": "params.npz",
            "inputs": {"support_x": {"shape": ["k", 2, 2, 1], "dtype": "float32"},
                       "support_y": {"shape": ["k"], "dtype": "int32"},
                       "query_x": {"shape": ["q", 2, 2, 1], "dtype": "float32"}},
            "leaves": [{"name": "leaf_0000"}], "num_classes": 3,
            "input_preprocessing": "uint8 images x -> float32 x / 255"}
    (d / "export.json").write_text(json.dumps(meta))
    (d / "load.py").write_text(LOADER_SOURCE)
    return d


@pytest.mark.parametrize("labels, images, message", [
    (np.array([0.0, 0.9, 2.0]), None, r"support_y must hold integer class labels; got float64 values that are not "
                                      r"whole numbers"),
    (np.array([0, 1, 3]), None, r"support_y must be class labels in \[0, 3\); got values in \[0, 3\]"),
    (np.array([-1, 1, 2]), None, r"support_y must be class labels in \[0, 3\); got values in \[-1, 2\]"),
    (np.array([True, False, True]), None, "support_y must hold integer class labels; got dtype bool"),
    (None, np.full((3, 2, 2, 1), 200, np.uint8), r"support_x is uint8 but the program takes float32 inputs "
                                                 r"preprocessed as in training \(uint8 images x -> float32 x / 255\)"),
])
def test_exported_predict_refuses_what_a_cast_would_silently_change(classifier_artifact, labels, images, message):
    from jmeta.run.export import load_exported

    predict = load_exported(classifier_artifact)
    sx = np.full((3, 2, 2, 1), 0.5, np.float32) if images is None else images
    sy = np.array([0, 1, 2], np.int32) if labels is None else labels
    with pytest.raises(ValueError, match=message):
        predict(sx, sy, np.zeros((4, 2, 2, 1), np.float32))
    # what is valid goes through: integral float labels are labels, scaled float images are images
    out = predict(np.full((3, 2, 2, 1), 0.5, np.float32), np.array([0.0, 1.0, 2.0]), np.ones((4, 2, 2, 1)))
    assert out.shape == (4, 3)


def test_cross_entropy_refuses_labels_outside_the_classes():
    """On concrete labels (outside jit) a label that is no class is an error, not a NaN loss."""
    import jax.numpy as jnp

    from jmeta.losses import cross_entropy

    logits = jnp.zeros((3, 5))
    assert float(cross_entropy(logits, jnp.array([0, 4, 2]))) == pytest.approx(np.log(5))
    for bad in ([0, 5, 2], [-1, 0, 0]):
        with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 5\) for 5 logits; got labels"):
            cross_entropy(logits, jnp.array(bad))
    # under jit the labels are traced: the check cannot run there and the program is unchanged
    assert float(jax.jit(cross_entropy)(logits, jnp.array([0, 4, 2]))) == pytest.approx(np.log(5))
    # labels closed over by a traced function are constants: checked while tracing (grad of a jitted loss)
    good, bad = jnp.array([0, 4, 2]), jnp.array([0, 7, 2])
    assert float(jax.jit(jax.grad(lambda z: cross_entropy(z, good).sum()))(logits).sum()) == pytest.approx(0.0,
                                                                                                          abs=1e-6)
    with pytest.raises(ValueError, match=r"got labels in \[0, 7\]"):
        jax.jit(jax.grad(lambda z: cross_entropy(z, bad)))(logits)
