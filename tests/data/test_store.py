"""ClassStore: validation, select/split, rotations, save/load."""

from __future__ import annotations

import numpy as np
import pytest

from jmeta.data import ClassStore, CorruptDataError, load_store, save_store


def _store(c=6, m=4, h=5, w=5, ch=1):
    images = np.arange(c * m * h * w * ch, dtype=np.int64).reshape(c, m, h, w, ch) % 251
    return ClassStore(images.astype(np.uint8), [f"c{i}" for i in range(c)], "toy")


def test_properties():
    s = _store()
    assert (s.num_classes, s.num_per_class, s.image_shape, len(s)) == (6, 4, (5, 5, 1), 6)
    assert isinstance(s.class_names, tuple)
    assert "num_classes=6" in repr(s)


@pytest.mark.parametrize("images, names, match", [
    (np.zeros((2, 3, 4, 4), np.uint8), ["a", "b"], "5 axes"),
    (np.zeros((2, 3, 4, 4, 1), np.float32), ["a", "b"], "uint8"),
    (np.zeros((2, 3, 4, 4, 1), np.uint8), ["a"], "1 names but images has 2 classes"),
])
def test_validation(images, names, match):
    with pytest.raises(ValueError, match=match):
        ClassStore(images, names)
    with pytest.raises(TypeError, match="numpy array"):
        ClassStore([[1]], ["a"])


def test_split_consecutive_and_rest():
    s = _store()
    a, b, c = s.split([2, -1, 1])
    assert a.class_names == ("c0", "c1") and b.class_names == ("c2", "c3", "c4") and c.class_names == ("c5",)
    np.testing.assert_array_equal(b.images, s.images[2:5])
    assert a.name == "toy/part0"


def test_split_seeded_is_disjoint_and_deterministic():
    s = _store()
    a1, b1 = s.split([4, 2], seed=3, names=["tr", "va"])
    a2, _ = s.split([4, 2], seed=3)
    assert a1.class_names == a2.class_names and a1.name == "tr"
    assert sorted(a1.class_names + b1.class_names) == sorted(s.class_names)


@pytest.mark.parametrize("sizes, match", [([2, 2], "sum to 4"), ([-1, -1], "at most one -1"),
                                          ([7, -1], "exceed"), ([], "at least one")])
def test_split_errors(sizes, match):
    with pytest.raises(ValueError, match=match):
        _store().split(sizes)


def test_select_errors():
    with pytest.raises(IndexError, match=r"\[0, 6\)"):
        _store().select([0, 6])
    with pytest.raises(TypeError, match="flatnonzero"):  # a mask read as indices 0/1 would pick the wrong classes
        _store().select(np.array([True, False, True, False, False, True]))
    assert _store().select(np.flatnonzero([True, False, True, False, False, True])).num_classes == 3


def test_with_rotations():
    s = _store()
    r = s.with_rotations()
    assert r.num_classes == 24 and r.class_names[6] == "c0/rot90" and r.class_names[23] == "c5/rot270"
    for k in range(4):
        np.testing.assert_array_equal(r.images[6 * k:6 * (k + 1)], np.rot90(s.images, k, axes=(2, 3)))
    with pytest.raises(ValueError, match="square"):
        ClassStore(np.zeros((1, 1, 2, 3, 1), np.uint8), ["a"]).with_rotations()


def test_take_per_class():
    s = _store().take_per_class(2)
    assert s.num_per_class == 2
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        _store().take_per_class(5)


def test_save_load_roundtrip(tmp_path):
    s = _store()
    save_store(s, tmp_path / "s.npz")
    t = load_store(tmp_path / "s.npz")
    np.testing.assert_array_equal(t.images, s.images)
    assert t.class_names == s.class_names and t.name == "toy"
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CorruptDataError, match="bad.npz"):
        load_store(tmp_path / "bad.npz")


def test_import_is_cheap():
    import subprocess
    import sys
    code = ("import sys, jmeta.data, jmeta.data.tfds; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'tensorflow_datasets')]; print(bad); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_rotated_store_refuses_to_split():
    """Rotations of one character are classes c, c+n, c+2n, c+3n: any split would put some on both sides."""
    s = _store(c=4, h=5, w=5).with_rotations()
    for sizes, seed in (([-1, 4], None), ([12, 4], 0)):
        with pytest.raises(ValueError, match="rotations of one character on both sides"):
            s.split(sizes, seed=seed)
    a, b = _store(c=4).split([3, 1])  # the right order: split, then rotate each part
    ra, rb = a.with_rotations(), b.with_rotations()
    assert not {n.split("/")[0] for n in ra.class_names} & {n.split("/")[0] for n in rb.class_names}
