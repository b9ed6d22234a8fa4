"""Omniglot loader: counts, splits, pixel convention, sources, caching, errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from jmeta.data import (ChecksumError, CorruptDataError, DataNotFoundError, OMNIGLOT_SPLITS,
                        load_omniglot)
from jmeta.data import omniglot as omniglot_mod


def test_counts_and_layout(omniglot_all):
    assert omniglot_all.images.shape == (1623, 20, 28, 28, 1)
    assert omniglot_all.images.dtype == np.uint8
    assert omniglot_all.image_shape == (28, 28, 1)
    names = omniglot_all.class_names
    assert names[0] == "Arcadian/character01" and names[963] == "Tifinagh/character55"
    assert names[964] == "Angelic/character01" and names[-1] == "ULOG/character26"
    assert len(set(names)) == 1623


def test_ink_is_bright(omniglot_all):
    img = omniglot_all.images[0, 0, ..., 0]
    # Strokes are thin: most pixels are background (0), the strokes reach 255.
    assert np.median(img) == 0 and img.max() == 255
    assert (omniglot_all.images == 0).mean() > 0.7


@pytest.mark.parametrize("split, n, first", [
    ("background", 964, 0), ("evaluation", 659, 964), ("train", 1200, 0), ("val", 100, 1100),
    ("train_minus_val", 1100, 0), ("test", 423, 1200), ("all", 1623, 0),
])
def test_splits(omniglot_data, session_cache, omniglot_all, split, n, first):
    store = load_omniglot(split, data_dir=omniglot_data, source="npz", cache_dir=session_cache)
    assert store.num_classes == n and store.num_per_class == 20
    assert store.class_names == omniglot_all.class_names[first:first + n]
    np.testing.assert_array_equal(store.images, omniglot_all.images[first:first + n])
    assert store.name == f"omniglot/{split}"
    assert store.info["cache_hit"]  # decoded once by the omniglot_all fixture


def test_split_table_is_consistent():
    train, val, tmv, test = (OMNIGLOT_SPLITS[s][1] for s in ("train", "val", "train_minus_val", "test"))
    assert (train.stop, test.start, test.stop) == (1200, 1200, 1623)
    assert val.stop == train.stop and tmv.stop == val.start


def test_rotations(omniglot_data, session_cache):
    store = load_omniglot("val", data_dir=omniglot_data, rotations=True, cache_dir=session_cache)
    assert store.num_classes == 400
    base = store.images[:100]
    for r in range(1, 4):
        np.testing.assert_array_equal(store.images[100 * r:100 * (r + 1)], np.rot90(base, r, axes=(2, 3)))
    assert store.class_names[100] == store.class_names[0] + "/rot90"


def test_cache_reuse_skips_decoding(omniglot_all, omniglot_data, session_cache, monkeypatch):
    # omniglot_all decoded both files and wrote one cache per source file ...
    assert omniglot_all.info["cache_hit"] is False
    names = sorted(p.name for p in session_cache.glob("omniglot-*-npz-28px-*.npz"))
    assert len(names) == 2 and "8bf84167413cd00b" in names[0] and "0b84c7ffd94c4841" in names[1]
    assert not list(session_cache.glob(".*.tmp"))  # atomic writes left no temporary file

    # ... so a second load must not decode.
    def boom(*a, **k):
        raise AssertionError("decoded again despite a cache")
    monkeypatch.setattr(omniglot_mod, "_decode_npz", boom)
    again = load_omniglot("all", data_dir=omniglot_data, cache_dir=session_cache)
    assert again.info["cache_hit"] is True
    np.testing.assert_array_equal(again.images, omniglot_all.images)
    # A different image size is a different cache entry (so it decodes, here: boom).
    with pytest.raises(AssertionError, match="decoded again"):
        load_omniglot("all", data_dir=omniglot_data, cache_dir=session_cache, image_size=32)


def test_corrupt_cache_is_ignored(tmp_path):
    from jmeta.data import _cache
    path = tmp_path / "c.npz"
    _cache.save_npz_atomic(path, {"images": np.arange(6, dtype=np.uint8)})
    assert _cache.cached_arrays(path, ("images",))["images"].tolist() == list(range(6))
    assert _cache.cached_arrays(tmp_path / "absent.npz", ("images",)) is None
    path.write_bytes(path.read_bytes()[:40])
    with pytest.warns(UserWarning, match="unreadable cache"):
        assert _cache.cached_arrays(path, ("images",)) is None


def test_failed_cache_write_leaves_nothing(tmp_path):
    from jmeta.data import _cache
    with pytest.raises(RuntimeError):
        with _cache.atomic_write(tmp_path / "x.npz") as f:
            f.write(b"partial")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_full_resolution_matches_raw(omniglot_data, tmp_path):
    store = load_omniglot("evaluation", data_dir=omniglot_data, image_size=105, cache=False)
    raw = np.load(omniglot_data / "omniglot" / "npz" / "images_evaluation.npz")["images"]
    assert store.images.shape == (659, 20, 105, 105, 1)
    assert np.array_equal(store.images[..., 0] == 255, ~raw)  # ink (False) -> 255
    assert np.array_equal(store.images[..., 0] == 0, raw)


def test_zip_source_matches_npz(downloaded_omniglot_root, omniglot_all, tmp_path):
    # The evaluation half only, to keep the suite fast; both halves share the code path.
    store = load_omniglot("evaluation", data_dir=downloaded_omniglot_root, source="zip",
                          cache_dir=tmp_path, download=False)
    assert store.info["source"] == "zip"
    assert store.class_names == omniglot_all.class_names[964:]
    np.testing.assert_array_equal(store.images, omniglot_all.images[964:])


def test_zip_class_names_match_table(downloaded_omniglot_root):
    import zipfile
    with zipfile.ZipFile(downloaded_omniglot_root / "omniglot" / "images_background.zip") as z:
        dirs = {n.rsplit("/", 1)[0].split("/", 1)[1] for n in z.namelist() if n.endswith(".png")}
    assert dirs == set(omniglot_mod._class_names("images_background"))


def test_auto_source_prefers_npz(omniglot_data, session_cache):
    store = load_omniglot("background", data_dir=omniglot_data, cache_dir=session_cache)
    assert store.info["source"] == "npz"


def test_missing_files(tmp_path):
    with pytest.raises(DataNotFoundError, match="images_background.npz"):
        load_omniglot("train", data_dir=tmp_path, source="npz")
    with pytest.raises(DataNotFoundError, match="images_background.zip") as e:
        load_omniglot("background", data_dir=tmp_path, download=False)
    assert "JMETA_DATA_DIR" in str(e.value)


def test_truncated_npz_names_file(omniglot_data, tmp_path):
    (tmp_path / "omniglot" / "npz").mkdir(parents=True)
    src = omniglot_data / "omniglot" / "npz" / "images_evaluation.npz"
    bad = tmp_path / "omniglot" / "npz" / "images_evaluation.npz"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(CorruptDataError, match="images_evaluation.npz"):
        load_omniglot("evaluation", data_dir=tmp_path, cache=False)


def test_truncated_zip_names_file(downloaded_omniglot_root, tmp_path):
    (tmp_path / "omniglot").mkdir()
    src = downloaded_omniglot_root / "omniglot" / "images_evaluation.zip"
    bad = tmp_path / "omniglot" / "images_evaluation.zip"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(CorruptDataError, match="images_evaluation.zip"):
        load_omniglot("evaluation", data_dir=tmp_path, source="zip", cache=False, download=False)


def test_zip_with_missing_members(downloaded_omniglot_root, tmp_path):
    import zipfile
    (tmp_path / "omniglot").mkdir()
    src = zipfile.ZipFile(downloaded_omniglot_root / "omniglot" / "images_evaluation.zip")
    with zipfile.ZipFile(tmp_path / "omniglot" / "images_evaluation.zip", "w") as dst:
        for info in src.infolist()[:-3]:
            dst.writestr(info, src.read(info))
    with pytest.raises(CorruptDataError, match="found 13177"):
        load_omniglot("evaluation", data_dir=tmp_path, source="zip", cache=False, download=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(split="training"), "unknown split 'training'.*'train'"),
    (dict(split="train", source="tfrecord"), "unknown source"),
    (dict(split="train", image_size=0), "image_size"),
    (dict(split="train", image_size=28.0), "image_size"),
])
def test_bad_arguments(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        load_omniglot(data_dir=tmp_path, **kwargs)


def test_data_dir_from_env(omniglot_data, session_cache, monkeypatch):
    monkeypatch.setenv("JMETA_DATA_DIR", str(omniglot_data))
    store = load_omniglot("test", cache_dir=session_cache)
    assert store.num_classes == 423


def sha256_of(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_download_omniglot_from_loopback(downloaded_omniglot_root, rebuilt_omniglot_zips):
    for part in ("images_background", "images_evaluation"):
        got = downloaded_omniglot_root / "omniglot" / f"{part}.zip"
        assert sha256_of(got) == sha256_of(rebuilt_omniglot_zips / f"{part}.zip")


def test_download_omniglot_rejects_wrong_official_checksum(http_server, rebuilt_omniglot_zips,
                                                          downloaded_omniglot_root, tmp_path):
    # The rebuilt zips differ byte-wise from brendenlake's, so the official sha256 must reject them.
    from jmeta.data import download_omniglot
    with pytest.raises(ChecksumError, match="ad41ab67"):
        download_omniglot(tmp_path, base_url=f"{http_server.url}/omniglot",
                          parts=("images_background",))
    assert not (tmp_path / "omniglot" / "images_background.zip").exists()


def test_a_cache_of_the_wrong_shape_is_decoded_again(omniglot_all, omniglot_data, session_cache, tmp_path):
    """A readable cache that does not hold the part's characters (here: 10 of 659) is not trusted."""
    (src,) = session_cache.glob("omniglot-images_evaluation-npz-28px-*.npz")
    with np.load(src) as z:
        np.savez(tmp_path / src.name, images=z["images"][:10], class_names=z["class_names"][:10])
    with pytest.warns(UserWarning, match="ignoring cache"):
        store = load_omniglot("evaluation", data_dir=omniglot_data, cache_dir=tmp_path)
    assert store.info["cache_hit"] is False
    np.testing.assert_array_equal(store.images, omniglot_all.images[964:])
    assert store.class_names == omniglot_all.class_names[964:]
    assert load_omniglot("evaluation", data_dir=omniglot_data, cache_dir=tmp_path).info["cache_hit"]  # rewritten
