"""fetch(): checksums, atomic writes and clear errors, against a loopback server only."""

from __future__ import annotations

import hashlib
import os
import socket
import zipfile

import pytest

from jmeta.data import (ChecksumError, CorruptDataError, DataNotFoundError, DownloadError,
                        UnsafeArchiveError, fetch, safe_extract)


def sha256_of(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()

PAYLOAD = os.urandom(300_000)


@pytest.fixture(scope="module")
def served(http_server):
    (http_server.root / "good.bin").write_bytes(PAYLOAD)
    return http_server


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_good_download_verifies_and_is_reused(served, tmp_path):
    dest = tmp_path / "sub" / "good.bin"
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    seen = []
    out = fetch(f"{served.url}/good.bin", dest, sha, progress=lambda d, t: seen.append((d, t)))
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert _leftovers(dest.parent) == ["good.bin"]  # no temporary file left behind
    n = len(served.requests)
    fetch(f"{served.url}/good.bin", dest, sha)  # verified copy present: no request
    assert len(served.requests) == n


def test_wrong_checksum_leaves_no_file(served, tmp_path):
    dest = tmp_path / "good.bin"
    with pytest.raises(ChecksumError, match="expected 0{64}") as e:
        fetch(f"{served.url}/good.bin", dest, "0" * 64)
    assert str(dest) in str(e.value)
    assert not dest.exists() and _leftovers(tmp_path) == []


def test_stale_file_is_replaced(served, tmp_path):
    dest = tmp_path / "good.bin"
    dest.write_bytes(b"stale")
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    fetch(f"{served.url}/good.bin", dest, sha)
    assert dest.read_bytes() == PAYLOAD


def test_truncated_download_leaves_no_file(served, tmp_path):
    dest = tmp_path / "good.bin"
    with pytest.raises(DownloadError, match="truncated") as e:
        fetch(f"{served.url}/truncated/good.bin", dest, None)
    assert f"{served.url}/truncated/good.bin" in str(e.value)
    assert not dest.exists() and _leftovers(tmp_path) == []


def test_http_404_names_url_and_manual_placement(served, tmp_path):
    dest = tmp_path / "missing.zip"
    with pytest.raises(DownloadError) as e:
        fetch(f"{served.url}/missing.zip", dest, None)
    msg = str(e.value)
    assert "404" in msg and f"{served.url}/missing.zip" in msg
    assert str(dest) in msg and "JMETA_DATA_DIR" in msg
    assert not dest.exists()


def test_unreachable_host_is_a_clear_error(tmp_path):
    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/images_background.zip"
    with pytest.raises(DownloadError, match="offline or host unreachable") as e:
        fetch(url, tmp_path / "x.zip", None, timeout=5)
    assert url in str(e.value) and "JMETA_DATA_DIR" in str(e.value)
    assert isinstance(e.value, OSError)


@pytest.mark.parametrize("url, sha, match", [
    ("ftp://example.invalid/x", None, "http:// or https://"),
    ("http://127.0.0.1:1/x", "abc", "64 hex digits"),
])
def test_bad_arguments(url, sha, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        fetch(url, tmp_path / "x", sha)


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name in members:
            z.writestr(name, b"data:" + name.encode())
    return path


def test_safe_extract_good(tmp_path):
    arc = _zip(tmp_path / "ok.zip", ["a/b.txt", "c.txt"])
    out = safe_extract(arc, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in out) == ["a/b.txt", "c.txt"]
    assert (tmp_path / "out" / "a" / "b.txt").read_bytes() == b"data:a/b.txt"


@pytest.mark.parametrize("bad", ["../evil.txt", "a/../../evil.txt", "/abs/evil.txt", "C:/evil.txt"])
def test_safe_extract_refuses_escaping_members(tmp_path, bad):
    arc = _zip(tmp_path / "bad.zip", ["fine.txt", bad])
    with pytest.raises(UnsafeArchiveError, match="refusing") as e:
        safe_extract(arc, tmp_path / "out")
    assert repr(bad) in str(e.value)
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "out" / "fine.txt").exists()  # checked before anything is written


def test_safe_extract_corrupt_and_missing(tmp_path):
    arc = _zip(tmp_path / "ok.zip", ["a.txt"] * 1)
    trunc = tmp_path / "trunc.zip"
    trunc.write_bytes(arc.read_bytes()[:20])
    with pytest.raises(CorruptDataError, match="trunc.zip"):
        safe_extract(trunc, tmp_path / "out")
    with pytest.raises(DataNotFoundError, match="nope.zip"):
        safe_extract(tmp_path / "nope.zip", tmp_path / "out")


def test_download_omniglot_checks_every_part_it_is_not_told_to_skip(http_server, tmp_path):
    """A checksum mapping that names only some parts keeps the official checksums for the others."""
    from jmeta.data import download_omniglot

    (http_server.root / "mirror").mkdir(exist_ok=True)
    (http_server.root / "mirror" / "images_evaluation.zip").write_bytes(b"not the Omniglot zip")
    url = f"{http_server.url}/mirror/"
    with pytest.raises(ChecksumError, match="images_evaluation"):
        download_omniglot(tmp_path, base_url=url, sha256={"images_background": "0" * 64},
                          parts=("images_evaluation",))
    assert not (tmp_path / "omniglot" / "images_evaluation.zip").exists()
    (path,) = download_omniglot(tmp_path, base_url=url, sha256={"images_evaluation": None},
                                parts=("images_evaluation",))  # None: explicitly unchecked
    assert path.read_bytes() == b"not the Omniglot zip"
