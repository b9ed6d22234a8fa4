"""A short real run: Prototypical Networks on Omniglot, 5-way 1-shot, held-out characters.

Meta-trains a Conv4-64 ProtoNet embedding for ``STEPS`` meta-steps on the 1200
training characters (20-way 1-shot training episodes with 5 queries per class,
as Snell et al. train with more ways than they test) and evaluates 5-way
1-shot accuracy on ``EVAL_TASKS`` episodes of the 423 held-out test characters.

Threshold: mean test accuracy >= 0.90 (Snell et al. report 98.8% after full
training; a few hundred steps on 2 CPU cores clear 90% with a margin).

Data: ``$JMETA_DATA_DIR`` or ``../shared/data`` (the repo's sibling); the test
is skipped when the Omniglot npz files are not there.
"""

import os
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

THRESHOLD = 0.90
STEPS = 300
EVAL_TASKS = 300


def _data_root() -> Path:
    env = os.environ.get("JMETA_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _load_split(split: str, root: Path) -> np.ndarray:
    """uint8 ``[classes, 20, 28, 28, 1]``, ink = 255 (jmeta.data when available, else the npz directly)."""
    try:
        from jmeta.data import load_omniglot
    except ImportError:
        load_omniglot = None
    if load_omniglot is not None:
        return load_omniglot(split, data_dir=root).images
    from PIL import Image

    parts = [np.load(root / "omniglot" / "npz" / f"images_{p}.npz")["images"] for p in ("background", "evaluation")]
    allc = np.concatenate(parts)  # bool [1623, 20, 105, 105], True = background
    sel = allc[:1200] if split == "train" else allc[1200:]
    out = np.empty(sel.shape[:2] + (28, 28, 1), np.uint8)
    for i, j in np.ndindex(*sel.shape[:2]):
        img = Image.fromarray(np.where(sel[i, j], 0, 255).astype(np.uint8), "L").resize((28, 28), Image.LANCZOS)
        out[i, j, :, :, 0] = np.asarray(img)
    return out


def test_protonet_omniglot_5way_1shot_short_run():
    root = _data_root()
    if not (root / "omniglot" / "npz" / "images_background.npz").exists():
        pytest.skip(f"Omniglot npz not found under {root}")
    from jmeta.algorithms.protonet import ProtoNet
    from jmeta.models.conv import conv4
    from jmeta.tasks.episodes import EpisodeSampler
    from jmeta.train.evaluation import evaluate
    from jmeta.train.step import init_train_state, make_meta_step

    train = jax.device_put(_load_split("train", root))
    test = jax.device_put(_load_split("test", root))
    assert train.shape[1:] == (20, 28, 28, 1) and test.shape[0] == 423

    model = conv4(None, hidden=64, conv_impl="lax", key=jax.random.key(0))
    algo = ProtoNet(model.apply, n_way=20)
    train_sampler = EpisodeSampler(n_way=20, k_shot=1, q_query=5)
    opt = optax.adam(1e-3)
    state = init_train_state(algo, model.params, model.state, opt)
    step = make_meta_step(algo, train_sampler.sample, opt, meta_batch_size=2)
    key = jax.random.key(1)
    for _ in range(STEPS):
        state, metrics = step(state, key, train)
    assert np.isfinite(float(metrics["loss"]))

    eval_algo = ProtoNet(model.apply, n_way=5)
    test_sampler = EpisodeSampler(n_way=5, k_shot=1, q_query=15)
    res = evaluate(eval_algo, state.meta_params, state.model_state, test_sampler.sample,
                   jax.random.key(2), num_tasks=EVAL_TASKS, batch_size=100, data=test)
    acc = res["accuracy"]["mean"][0]
    print(f"ProtoNet Omniglot 5-way 1-shot after {STEPS} steps: {acc:.4f} +- {res['accuracy']['ci95'][0]:.4f}")
    assert acc >= THRESHOLD, f"test accuracy {acc:.3f} below {THRESHOLD}"
