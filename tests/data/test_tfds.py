"""from_tfds(): TFDS omniglot built offline (array_record, no TensorFlow) -> ClassStore.

Needs ``pip install tensorflow-datasets array-record`` (skips otherwise). The
dataset is prepared from the shared files with
``shared/data/omniglot/tfds_prepare_offline.py DIR --no-tf``; the official-layout
zips that it needs are reused from the session's rebuilt zips.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets is not installed")
pytest.importorskip("array_record", reason="array-record is not installed (needed by tfds.data_source)")
pytest.importorskip("importlib_resources", reason="importlib_resources is not installed")


@pytest.fixture(scope="session")
def tfds_omniglot_dir(omniglot_data, rebuilt_omniglot_zips, tmp_path_factory):
    script = omniglot_data / "omniglot" / "tfds_prepare_offline.py"
    if not script.is_file():
        pytest.skip(f"{script} not found")
    out = tmp_path_factory.mktemp("tfds")
    manual = out / "manual_omniglot"
    manual.mkdir()
    for part in ("images_background", "images_evaluation"):
        os.symlink(rebuilt_omniglot_zips / f"{part}.zip", manual / f"{part}.zip")
    proc = subprocess.run([sys.executable, str(script), str(out), "--no-tf"], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.fail(f"{script} --no-tf failed:\n{proc.stderr[-3000:]}")
    return out


def _digest(img: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()


def test_from_tfds_small1_matches_npz(tfds_omniglot_dir, omniglot_data):
    from jmeta.data import from_tfds, load_omniglot
    store = from_tfds("omniglot", "small1", data_dir=tfds_omniglot_dir, binary_to_255=True)
    assert store.info["reader"] == "data_source"
    assert store.num_per_class == 20 and store.image_shape == (105, 105, 3)
    labels = store.info["labels"]
    assert store.num_classes == len(labels) == 2720 // 20
    ref = load_omniglot("background", data_dir=omniglot_data, image_size=105, cache=False)
    # TFDS label = global character id - 1 (background ids: npz row); TFDS names "<alphabet>_<i>".
    for i in (0, len(labels) // 2, len(labels) - 1):
        lab = labels[i]
        assert store.class_names[i].startswith(ref.class_names[lab].split("/")[0])
        tf_imgs = store.images[i, ..., 0]
        assert np.array_equal(store.images[i, ..., 0], store.images[i, ..., 2])  # grey as RGB
        ours = 255 - ref.images[lab, ..., 0]  # back to white background
        # TFDS shuffles example order: compare the sets of drawings.
        assert sorted(map(_digest, tf_imgs)) == sorted(map(_digest, ours))


def test_from_tfds_max_per_class_and_errors(tfds_omniglot_dir):
    from jmeta.data import from_tfds
    store = from_tfds("omniglot", "small2", data_dir=tfds_omniglot_dir, max_per_class=3)
    assert store.num_per_class == 3 and store.images.max() == 1  # Pillow decodes 1-bit PNGs to {0, 1}
    with pytest.raises(ValueError, match="no feature 'img'"):
        from_tfds("omniglot", "small2", data_dir=tfds_omniglot_dir, image_key="img")
    with pytest.raises(ValueError, match="unknown reader"):
        from_tfds("omniglot", "small2", data_dir=tfds_omniglot_dir, reader="fast")
