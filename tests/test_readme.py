"""The README's library examples run as written (the docs are the first thing a researcher copies)."""

from __future__ import annotations

import pathlib
import re

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]


def _python_blocks() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_readme_has_the_two_library_examples():
    blocks = _python_blocks()
    assert len(blocks) == 3, (f"expected the sinusoid, the Omniglot and the meta-gradient example, found "
                              f"{len(blocks)} python blocks")
    assert "jmeta.MAML" in blocks[0] and "load_omniglot" in blocks[1] and "jmeta.meta_grad" in blocks[2]


def test_readme_sinusoid_example_runs_and_learns():
    ns: dict = {}
    exec(compile(_python_blocks()[0], "README.md[python block 0]", "exec"), ns)
    result, state = ns["result"], ns["state"]
    assert int(state.step) == 10_000
    assert result["num_tasks"] == 600 and result["num_steps"] == 10
    loss = np.asarray(result["loss"]["mean"])
    assert loss.shape == (11,), loss.shape  # 0..10 inner steps
    assert len(result["loss"]["ci95"]) == 11 and len(result["loss"]["median"]) == 11
    assert np.all(np.isfinite(loss))
    # What the README's comment says (3.05 -> 0.65 -> 0.21 on the 2-core CPU), with room for other machines'
    # rounding: one step of adaptation removes most of the error, and further steps keep improving.
    assert loss[1] < 0.4 * loss[0], loss
    assert loss[10] < 0.7 * loss[1], loss


def test_readme_omniglot_example_runs(data_dir, monkeypatch):
    monkeypatch.setenv("JMETA_DATA_DIR", str(data_dir))  # the decoded cache is the one the other image tests use
    ns: dict = {}
    # The second block continues the first (it uses its `import`s and `key`), as a reader runs them.
    exec(compile("import jax, optax, jmeta\nkey = jax.random.key(0)\n", "README.md[prelude]", "exec"), ns)
    exec(compile(_python_blocks()[1], "README.md[python block 1]", "exec"), ns)
    metrics, state = ns["metrics"], ns["state"]
    assert int(state.step) == 1
    assert ns["store"].images.shape == (4800, 20, 28, 28, 1)
    loss = float(np.asarray(metrics["loss"]))
    # 5-way cross-entropy after one inner step from a random Conv4: finite and near log(5) = 1.61.
    assert np.isfinite(loss) and 0.5 < loss < 3.0, loss


def test_readme_meta_grad_example_runs():
    import jax

    import jmeta

    ns: dict = {}
    exec(compile("import jax, optax, jmeta\n", "README.md[prelude]", "exec"), ns)
    exec(compile(_python_blocks()[2], "README.md[python block 2]", "exec"), ns)
    loss, grads, maml, mp, tasks = ns["loss"], ns["grads"], ns["maml"], ns["meta_params"], ns["tasks"]
    assert jax.tree.structure(grads) == jax.tree.structure(mp)
    # the same numbers as the batched objective with the per-task keys split from that one key
    keys = jax.random.split(jax.random.key(1), 25)
    obj, g2, _, _ = jmeta.train.batched_loss_and_grad(maml, mp, ns["model"].state, tasks, keys, 0)
    np.testing.assert_allclose(float(loss), float(obj), rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, g2)
    assert np.isfinite(float(loss)) and float(loss) > 0
