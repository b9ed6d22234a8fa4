"""Export a trained meta-learner as a standalone JAX program (``jmeta export RUN_DIR``).

The exported function is *adapt, then predict* on one task::

    predict(support_x, support_y, query_x) -> outputs
        adapted = algorithm.adapt(meta_params, model_state, support_x, support_y, num_steps=N)
        outputs = algorithm.predict(meta_params, adapted, model_state, query_x, num_steps=N)

with ``N`` the run's evaluation steps (``eval.steps``, what ``eval.json`` reports), the
parameters of a run's checkpoint as inputs, serialized with
:mod:`jax.export` (StableHLO; loadable by any later jax, without jmeta,
without the Python code of the model or the algorithm). The numbers of
support and query examples are symbolic (``k``, ``q``): one artifact serves
any shot count; the feature shape is fixed by the config.

The artifact folder::

    predict.jaxexport   jax.export.Exported.serialize() of predict(leaves, support_x, support_y, query_x)
    params.npz          the parameter leaves leaf_0000, leaf_0001, ... (meta-params, then model state)
    export.json         format, inputs/outputs (shapes with "k"/"q", dtypes), leaves (name, path, shape,
                        dtype) in call order, adaptation steps, run config, jax version
    load.py             a self-contained loader (imports only json, numpy and jax)

Requirements to load it: ``jax`` (with its own dependencies), ``numpy`` and ``flatbuffers``: jax's
deserializer (``jax.export.deserialize``) imports ``flatbuffers``, which jax does not install itself, so
``pip install jax numpy flatbuffers`` (jmeta is not needed; ``tests/test_export.py`` runs the loader in a
process where importing jmeta, flax, optax and orbax fails).

The loader checks its inputs before calling the program: class labels must be integers (integral
floats are accepted) in ``[0, n_classes)``, and images the program takes as floats must be given
preprocessed as in training (``export.json``'s ``input_preprocessing``: uint8 images are refused, not
silently cast to 0..255 floats).

Use without jmeta::

    import sys; sys.path.insert(0, "ARTIFACT"); import load
    predict = load.load("ARTIFACT")
    y = predict(support_x, support_y, query_x)     # numpy/jax arrays of one task

or from the shell: ``python ARTIFACT/load.py ARTIFACT inputs.npz outputs.npy``
(``inputs.npz`` with arrays ``support_x``, ``support_y``, ``query_x``).
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import textwrap
from typing import Any

import jax
import numpy as np

from jmeta import validate
from jmeta._io import atomic_write, atomic_write_text, check_writable

FORMAT = "jmeta-export/1"
PROGRAM = "predict.jaxexport"
PARAMS = "params.npz"
META = "export.json"
LOADER = "load.py"
#: Platforms the program is lowered for (a multi-platform artifact runs on each).
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")

PyTree = Any

# The loader written next to the artifact: no jmeta import, only json + numpy + jax.
LOADER_SOURCE = textwrap.dedent('''\
    """Standalone loader of a jmeta export (imports only json, numpy and jax).

    Needs: pip install jax numpy flatbuffers   (jax.export's deserializer imports flatbuffers; jmeta is not needed)

        python load.py ARTIFACT_DIR inputs.npz outputs.npy
        # or: import load; predict = load.load(ARTIFACT_DIR); predict(support_x, support_y, query_x)
    """
    import json
    import pathlib
    import sys

    import jax
    import numpy as np


    def _deserialize(data):
        try:
            import flatbuffers  # noqa: F401  (jax.export.deserialize needs it; jax does not install it)
        except ImportError:
            raise ImportError("loading a jmeta export needs the flatbuffers package, which jax's deserializer "
                              "uses but does not install: pip install flatbuffers") from None
        return jax.export.deserialize(data)


    def _check(name, a, spec, num_classes, preprocessing):
        """``a`` as the program's input dtype, refusing what a cast would silently change."""
        a = np.asarray(a)
        want = np.dtype(spec["dtype"])
        if want.kind in "iu":  # class labels
            if a.dtype.kind == "f":
                if not (np.all(np.isfinite(a)) and np.array_equal(a, np.round(a))):
                    raise ValueError(f"{name} must hold integer class labels; got {a.dtype} values that are not "
                                     f"whole numbers (e.g. {a.reshape(-1)[:3].tolist()})")
            elif a.dtype.kind not in "iu":
                raise ValueError(f"{name} must hold integer class labels; got dtype {a.dtype}")
            if num_classes and a.size and (a.min() < 0 or a.max() >= num_classes):
                raise ValueError(f"{name} must be class labels in [0, {num_classes}); got values in "
                                 f"[{a.min()}, {a.max()}]")
        elif want.kind == "f" and a.dtype.kind in "biu" and preprocessing:
            raise ValueError(f"{name} is {a.dtype} but the program takes {want} inputs preprocessed as in "
                             f"training ({preprocessing or 'as given to the model'}); convert it first, e.g. "
                             f"uint8 images as x / 255")
        return a.astype(want)


    def load(directory):
        """``predict(support_x, support_y, query_x) -> outputs`` of the exported meta-learner."""
        d = pathlib.Path(directory)
        meta = json.loads((d / "export.json").read_text())
        if meta.get("format") != "jmeta-export/1":
            raise ValueError(f"{d}: not a jmeta-export/1 artifact (format {meta.get('format')!r})")
        exported = _deserialize(bytearray((d / meta["program"]).read_bytes()))
        with np.load(d / meta["params"]) as z:
            leaves = [np.asarray(z[leaf["name"]]) for leaf in meta["leaves"]]
        names = ("support_x", "support_y", "query_x")
        num_classes, prep = meta.get("num_classes"), meta.get("input_preprocessing")

        def predict(support_x, support_y, query_x):
            args = [_check(n, a, meta["inputs"][n], num_classes, prep)
                    for n, a in zip(names, (support_x, support_y, query_x))]
            return exported.call(leaves, *args)

        predict.metadata = meta
        return predict


    if __name__ == "__main__":
        if len(sys.argv) != 4:
            sys.exit("usage: python load.py ARTIFACT_DIR inputs.npz outputs.npy")
        fn = load(sys.argv[1])
        with np.load(sys.argv[2]) as z:
            out = fn(z["support_x"], z["support_y"], z["query_x"])
        np.save(sys.argv[3], np.asarray(out))
    ''')


def _example_task(exp, cfg):
    """One task of the evaluation distribution (its shapes and dtypes define the inputs)."""
    from jmeta.tasks.base import sample_tasks

    shots = cfg.eval.shots[0] if cfg.eval.shots else cfg.task.k_support
    sample = exp.eval_samples.get(shots) or next(iter(exp.eval_samples.values()))
    key = jax.random.key(0)
    batch = sample_tasks(sample, key, 1, exp.eval_data)
    return jax.tree.map(lambda a: a[0], batch)


def _preprocessing(cfg) -> str | None:
    """How training turned raw inputs into the model's inputs (``None``: used as given, e.g. sinusoid x)."""
    if cfg.task.family == "sinusoid":
        return None
    text = "uint8 images x -> float32 x / 255"
    if cfg.task.family == "miniimagenet":
        from jmeta.run.experiment import MINIIMAGENET_MEAN, MINIIMAGENET_STD

        text += (f", then (x - mean) / std per channel with mean={[round(m, 6) for m in MINIIMAGENET_MEAN]}, "
                 f"std={[round(v, 6) for v in MINIIMAGENET_STD]}")
    return text


def predict_fn(algorithm, num_steps: int):
    """``f(meta_params, model_state, support_x, support_y, query_x)``: adapt ``num_steps`` steps, then predict."""
    def f(meta_params, model_state, support_x, support_y, query_x):
        adapted = algorithm.adapt(meta_params, model_state, support_x, support_y, num_steps=num_steps)
        return algorithm.predict(meta_params, adapted, model_state, query_x, num_steps=num_steps)

    return f


def export_run(run_dir, out_dir=None, *, num_steps: int | None = None, step: int | None = None,
               platforms=DEFAULT_PLATFORMS, data_dir=None) -> pathlib.Path:
    """Writes the adapt-then-predict program of a run's checkpoint (module docstring).

    Args:
      run_dir: a jmeta run folder.
      out_dir: the artifact folder (default ``RUN_DIR/export``).
      num_steps: adaptation steps (default the run's ``eval.steps``, as in its ``eval.json``).
      step: the checkpoint (default the latest complete one).
      platforms: platforms to lower for (``None``: the current backend only).
      data_dir: dataset root (image families).

    Returns:
      The artifact folder.

    Raises:
      FileNotFoundError: ``run_dir`` is not a run folder.
      CheckpointError: no (complete) checkpoint to export.
      ValueError: a bad ``num_steps``, or parameters that are not plain arrays.
      RunLockedError: another process is writing ``run_dir`` (it is locked while exporting).
      OSError: the artifact folder cannot be written (read-only, disk full); it names the path.
    """
    run = pathlib.Path(run_dir)
    out = pathlib.Path(out_dir) if out_dir is not None else run / "export"
    new = not out.exists()
    with contextlib.ExitStack() as stack:
        if (run / "config.json").is_file():
            _lock_run(run, out, stack)
            check_writable(out)  # before loading and lowering: a read-only or full disk fails at once
        try:
            return _export(run_dir, out, num_steps=num_steps, step=step, platforms=platforms, data_dir=data_dir)
        except BaseException:
            if new:  # the folder made for the write test, left empty
                with contextlib.suppress(OSError):
                    out.rmdir()
            raise


def _lock_run(run: pathlib.Path, out: pathlib.Path, stack: contextlib.ExitStack) -> None:
    """Locks ``run`` until ``stack`` closes; a read-only run folder exported elsewhere is only checked to be
    unlocked (no process here can be writing it)."""
    from jmeta.run.lock import RunLock, RunLockedError, is_locked

    try:
        stack.enter_context(RunLock(run, "jmeta export"))
    except OSError:
        if out.resolve().is_relative_to(run.resolve()):
            raise
        owner = is_locked(run)
        if owner is not None:
            raise RunLockedError(f"{run} is in use by process {owner.get('pid', '?')} on {owner.get('host', '?')}; "
                                 f"export it once that has finished") from None


def _export(run_dir, out: pathlib.Path, *, num_steps, step, platforms, data_dir) -> pathlib.Path:
    """:func:`export_run` with the run folder locked and ``out`` found writable."""
    from jmeta.run.experiment import load_run

    from jmeta.run import config as C
    from jmeta.run.registry import ConfigError, is_rl

    if (pathlib.Path(run_dir) / "config.json").is_file() and is_rl(C.load(str(run_dir))):
        raise ConfigError(f"{run_dir}: jmeta export writes a supervised adapt-then-predict function, and this run is "
                          f"meta-RL (load its policy parameters with jmeta.run.experiment.load_run)")
    cfg, exp, state = load_run(run_dir, step=step, data_dir=data_dir)
    if num_steps is None:  # the run's evaluation (what eval.json reports)
        num_steps = cfg.eval.steps
    num_steps = validate.integer("num_steps", num_steps, min=0)

    tree = (state.meta_params, state.model_state)
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    leaves = []
    for path, leaf in with_paths:
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            raise ValueError(f"cannot export PRNG-key parameter {jax.tree_util.keystr(path)}")
        leaves.append(np.asarray(leaf))
    f = predict_fn(exp.eval_algorithm, num_steps)

    def flat(leaves_, sx, sy, qx):
        mp, ms = jax.tree.unflatten(treedef, leaves_)
        return f(mp, ms, sx, sy, qx)

    task = _example_task(exp, cfg)
    k, q = jax.export.symbolic_shape("k, q")

    def sds(x, n):
        return jax.ShapeDtypeStruct((n, *x.shape[1:]), x.dtype)

    args = ([jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves],
            sds(task.support_x, k), sds(task.support_y, k), sds(task.query_x, q))
    exporter = jax.export.export(jax.jit(flat), platforms=tuple(platforms) if platforms else None)
    try:
        exported = exporter(*args)
    except Exception as e:  # a platform whose lowering rules are missing in this jaxlib
        if not platforms:
            raise
        exported = jax.export.export(jax.jit(flat))(*args)
        print(f"jmeta: lowered for {exported.platforms} only ({type(e).__name__}: {str(e).splitlines()[0][:200]})")

    # Atomic writes: a full disk or a kill leaves an earlier export in place, never half a file.
    with atomic_write(out / PROGRAM) as f:
        f.write(bytes(exported.serialize()))
    with atomic_write(out / PARAMS) as f:
        np.savez(f, **{f"leaf_{i:04d}": x for i, x in enumerate(leaves)})

    def spec(x, n):
        return {"shape": [n, *map(int, x.shape[1:])], "dtype": str(x.dtype)}

    out_aval = exported.out_avals[0]
    meta = {
        "format": FORMAT,
        "program": PROGRAM,
        "params": PARAMS,
        "signature": "predict(leaves, support_x, support_y, query_x) -> outputs",
        "inputs": {"support_x": spec(task.support_x, "k"), "support_y": spec(task.support_y, "k"),
                   "query_x": spec(task.query_x, "q")},
        "output": {"shape": [str(d) for d in out_aval.shape], "dtype": str(out_aval.dtype)},
        "leaves": [{"name": f"leaf_{i:04d}", "path": "meta_params" + jax.tree_util.keystr(p[1:]) if p[0].idx == 0
                    else "model_state" + jax.tree_util.keystr(p[1:]), "shape": list(x.shape), "dtype": str(x.dtype)}
                   for i, ((p, _), x) in enumerate(zip(with_paths, leaves))],
        "num_classes": (int(out_aval.shape[-1]) if jax.dtypes.issubdtype(task.support_y.dtype, np.integer)
                        and out_aval.shape and isinstance(out_aval.shape[-1], int) else None),
        "input_preprocessing": _preprocessing(cfg),
        "adaptation_steps": num_steps,
        "algorithm": cfg.algorithm.name,
        "checkpoint_step": int(state.step),
        "platforms": list(exported.platforms),
        "jax_version": jax.__version__,
        "config": cfg.to_dict(),
    }
    atomic_write_text(out / META, json.dumps(meta, indent=2) + "\n")
    atomic_write_text(out / LOADER, LOADER_SOURCE)
    return out


def load_exported(directory):
    """``predict(support_x, support_y, query_x)`` from an artifact folder (the same code as its ``load.py``)."""
    namespace: dict = {"__name__": "jmeta_export_loader"}
    d = pathlib.Path(directory)
    if not (d / META).is_file():
        raise FileNotFoundError(f"{d}: no {META} there (not a jmeta export)")
    exec(compile(LOADER_SOURCE, str(d / LOADER), "exec"), namespace)
    return namespace["load"](d)


__all__ = ["DEFAULT_PLATFORMS", "FORMAT", "LOADER_SOURCE", "export_run", "load_exported", "predict_fn"]
