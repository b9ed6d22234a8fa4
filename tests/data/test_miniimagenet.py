"""mini-ImageNet loader: zip decoding, class split, subset warning, pickle/npz variants, errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from jmeta.data import (MINIIMAGENET_CLASSES, CorruptDataError, DataNotFoundError, load_miniimagenet,
                        save_store)
from jmeta.data import miniimagenet as mini_mod

PER_CLASS = 40  # decode a subset per class to keep the suite fast


@pytest.fixture(scope="session")
def mini_val(mini_data, session_cache):
    return load_miniimagenet("val", data_dir=mini_data, cache_dir=session_cache,
                             max_per_class=PER_CLASS)


def test_val_layout(mini_val):
    s = mini_val
    assert s.images.shape == (16, PER_CLASS, 84, 84, 3) and s.images.dtype == np.uint8
    assert s.class_names == MINIIMAGENET_CLASSES["val"] == tuple(sorted(s.class_names))
    assert s.info["available_per_class"] == 600 and not s.info["subset"]
    assert 20 < s.images.mean() < 235 and s.images.std() > 10  # real photos, not blank


def test_first_image_matches_pil(mini_val, mini_data):
    import io
    import zipfile
    from PIL import Image
    with zipfile.ZipFile(mini_data / "miniimagenet" / "val.zip") as z:
        wnid = mini_val.class_names[3]
        first = sorted(n for n in z.namelist() if n.startswith(f"val/{wnid}/"))[0]
        ref = np.asarray(Image.open(io.BytesIO(z.read(first))).convert("RGB"))
    np.testing.assert_array_equal(mini_val.images[3, 0], ref)


@pytest.mark.filterwarnings("ignore:mini-ImageNet 'train'")
@pytest.mark.parametrize("split, n", [("train", 64), ("test", 20)])
def test_class_counts(mini_data, session_cache, split, n):
    store = load_miniimagenet(split, data_dir=mini_data, cache_dir=session_cache, max_per_class=2)
    assert store.num_classes == n and store.class_names == MINIIMAGENET_CLASSES[split]
    assert store.info["available_per_class"] == (100 if split == "train" else 600)


def test_train_subset_warns_once(mini_data, session_cache, monkeypatch):
    monkeypatch.setattr(mini_mod, "_WARNED", set())
    with pytest.warns(UserWarning, match="100 images per class"):
        store = load_miniimagenet("train", data_dir=mini_data, cache_dir=session_cache, max_per_class=2)
    assert store.info["subset"]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_miniimagenet("train", data_dir=mini_data, cache_dir=session_cache, max_per_class=2)


def test_cache_reuse(mini_data, mini_val, session_cache, monkeypatch):
    monkeypatch.setattr(mini_mod, "_decode_zip", lambda *a: (_ for _ in ()).throw(AssertionError))
    again = load_miniimagenet("val", data_dir=mini_data, cache_dir=session_cache, max_per_class=PER_CLASS)
    assert again.info["cache_hit"]
    np.testing.assert_array_equal(again.images, mini_val.images)


def _flat(store):
    """Images shuffled across classes (order within a class kept), wnid labels, class_dict."""
    n, m = store.num_classes, store.num_per_class
    order = np.random.default_rng(0).permutation(n * m)
    data = store.images.reshape(n * m, 84, 84, 3)[order]
    labels = np.repeat(np.asarray(store.class_names), m)[order]
    where = np.argsort(order)  # new position of original flat index j
    class_dict = {w: where[c * m:(c + 1) * m].tolist() for c, w in enumerate(store.class_names)}
    return data, labels, class_dict


def test_pickle_needs_opt_in(mini_val, tmp_path):
    data, labels, class_dict = _flat(mini_val)
    (tmp_path / "miniimagenet").mkdir()
    with open(tmp_path / "miniimagenet" / "mini-imagenet-cache-val.pkl", "wb") as f:
        pickle.dump({"image_data": data, "class_dict": class_dict}, f)
    with pytest.raises(ValueError, match="allow_pickle=True") as e:
        load_miniimagenet("val", data_dir=tmp_path)
    assert "arbitrary code" in str(e.value)
    with pytest.warns(UserWarning, match="40 images per class"):
        store = load_miniimagenet("val", data_dir=tmp_path, allow_pickle=True)
    assert store.info["source"] == "pickle"
    np.testing.assert_array_equal(store.images, mini_val.images)


def test_npz_variants(mini_val, tmp_path):
    d = tmp_path / "miniimagenet"
    d.mkdir()
    n, m = mini_val.num_classes, mini_val.num_per_class
    # labels-only npz: images of a class must appear in their original relative order
    data = mini_val.images.transpose(1, 0, 2, 3, 4).reshape(n * m, 84, 84, 3)  # interleaved classes
    labels = np.tile(np.asarray(mini_val.class_names), m)
    np.savez(d / "mini-imagenet-cache-val.npz", image_data=data, labels=labels)
    with pytest.warns(UserWarning, match="40 images per class"):
        store = load_miniimagenet("val", data_dir=tmp_path)
    assert store.info["source"] == "npz"
    np.testing.assert_array_equal(store.images, mini_val.images)
    save_store(mini_val, d / "mini-imagenet-cache-val.npz")
    store = load_miniimagenet("val", data_dir=tmp_path, source="npz", max_per_class=5)
    np.testing.assert_array_equal(store.images, mini_val.images[:, :5])


def test_resize(mini_data, tmp_path):
    store = load_miniimagenet("val", data_dir=mini_data, image_size=32, max_per_class=1, cache=False)
    assert store.images.shape == (16, 1, 32, 32, 3)


def test_missing_and_corrupt(mini_data, tmp_path):
    with pytest.raises(DataNotFoundError, match="val.zip"):
        load_miniimagenet("val", data_dir=tmp_path)
    (tmp_path / "miniimagenet").mkdir()
    bad = tmp_path / "miniimagenet" / "val.zip"
    with open(mini_data / "miniimagenet" / "val.zip", "rb") as f:
        bad.write_bytes(f.read(1 << 20))
    with pytest.raises(CorruptDataError, match="val.zip"):
        load_miniimagenet("val", data_dir=tmp_path, cache=False)


def test_wrong_split_file(mini_data, tmp_path):
    (tmp_path / "miniimagenet").mkdir()
    (tmp_path / "miniimagenet" / "test.zip").symlink_to(mini_data / "miniimagenet" / "val.zip")
    with pytest.raises(CorruptDataError, match="no members named test/"):
        load_miniimagenet("test", data_dir=tmp_path, cache=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(split="meta-train"), "unknown split"), (dict(split="val", source="hdf5"), "unknown source"),
    (dict(split="val", max_per_class=0), "max_per_class"), (dict(split="val", image_size=-1), "image_size"),
])
def test_bad_arguments(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        load_miniimagenet(data_dir=tmp_path, **kwargs)


def test_a_cache_of_the_wrong_shape_is_decoded_again(mini_data, mini_val, session_cache, tmp_path):
    """A readable cache holding fewer images per class than asked for is not trusted."""
    (src,) = session_cache.glob(f"miniimagenet-val-zip-84px-{PER_CLASS}-*.npz")
    with np.load(src) as z:
        np.savez(tmp_path / src.name, images=z["images"][:, :5], class_names=z["class_names"],
                 available=z["available"])
    with pytest.warns(UserWarning, match="ignoring cache"):
        store = load_miniimagenet("val", data_dir=mini_data, cache_dir=tmp_path, max_per_class=PER_CLASS)
    assert store.info["cache_hit"] is False
    np.testing.assert_array_equal(store.images, mini_val.images)
