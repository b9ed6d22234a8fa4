"""Fixtures for the data-layer tests.

Real data is read from ``$JMETA_DATA_DIR`` or, failing that,
``<repo>/../shared/data``; tests that need it skip with a reason when it is
absent. Every decoded cache goes to a per-session temporary folder, and the
only network traffic is to a loopback HTTP server started here.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _shared_data() -> Path | None:
    env = os.environ.get("JMETA_DATA_DIR")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if (cand / "omniglot").is_dir() or (cand / "miniimagenet").is_dir():
            return cand
    return None


SHARED = _shared_data()


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache_dir(tmp_path_factory):
    """Points JMETA_CACHE_DIR at a temporary folder for the whole session."""
    mp = pytest.MonkeyPatch()
    mp.setenv("JMETA_CACHE_DIR", str(tmp_path_factory.mktemp("jmeta_cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder with omniglot/ and miniimagenet/ (skips if absent)."""
    if SHARED is None:
        pytest.skip("shared datasets not found: set JMETA_DATA_DIR or provide <repo>/../shared/data")
    return SHARED


@pytest.fixture(scope="session")
def omniglot_data(shared_data) -> Path:
    if not (shared_data / "omniglot" / "npz" / "images_background.npz").is_file():
        pytest.skip(f"Omniglot npz files not found under {shared_data}/omniglot/npz")
    return shared_data


@pytest.fixture(scope="session")
def mini_data(shared_data) -> Path:
    if not (shared_data / "miniimagenet" / "val.zip").is_file():
        pytest.skip(f"mini-ImageNet zips not found under {shared_data}/miniimagenet")
    return shared_data


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """A cache folder shared by the session's loads of the real datasets."""
    return tmp_path_factory.mktemp("decoded")


@pytest.fixture(scope="session")
def omniglot_all(omniglot_data, session_cache):
    """All 1623 Omniglot characters at 28x28 from the npz source (decoded once)."""
    from jmeta.data import load_omniglot
    return load_omniglot("all", data_dir=omniglot_data, source="npz", cache_dir=session_cache)


# -- loopback HTTP server -----------------------------------------------------------------------

class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves files from ``directory``; ``/truncated/<file>`` lies about Content-Length."""

    requests: list[str] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        type(self).requests.append(self.path)
        if self.path.startswith("/truncated/"):
            path = Path(self.directory) / self.path[len("/truncated/"):]
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


class LoopbackServer:
    def __init__(self, root: Path):
        self.root = root
        handler = functools.partial(_Handler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests(self) -> list[str]:
        return _Handler.requests

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def http_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("http_root")


@pytest.fixture(scope="session")
def http_server(http_root):
    """A loopback HTTP server serving ``http_root`` (127.0.0.1, free port)."""
    server = LoopbackServer(http_root)
    yield server
    server.close()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


_REBUILD: dict = {}


def _rebuild_script() -> Path | None:
    script = SHARED / "omniglot" / "rebuild_zips.py" if SHARED is not None else None
    return script if script is not None and script.is_file() else None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist the data-layer tests run on one worker: they share the session's decoded datasets,
    rebuilt zips and loopback server (see ``tests/conftest.py``)."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group("tests/data"))


def pytest_collection_finish(session):
    """Starts rebuilding the Omniglot zips in the background if a selected test needs them.

    ``rebuild_zips.py`` takes ~10 s of one core; started here it overlaps with
    the tests that run before the first one that needs the zips. An xdist
    worker collects every test but runs only some: it rebuilds when a test of
    its own asks for the zips.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if any("rebuilt_omniglot_zips" in getattr(item, "fixturenames", ()) for item in session.items):
        _start_rebuild()


def pytest_sessionfinish(session, exitstatus):
    """Stops a rebuild that no test waited for (e.g. an interrupted run) and removes its output."""
    proc = _REBUILD.get("proc")
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
    if "out" in _REBUILD:
        shutil.rmtree(_REBUILD["out"], ignore_errors=True)


def _start_rebuild() -> None:
    script = _rebuild_script()
    if script is None or "proc" in _REBUILD:
        return
    out = Path(tempfile.mkdtemp(prefix="jmeta_omniglot_zips_"))
    _REBUILD.update(out=out, proc=subprocess.Popen(
        [sys.executable, str(script), str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))


@pytest.fixture(scope="session")
def rebuilt_omniglot_zips(omniglot_data) -> Path:
    """The official-layout Omniglot zips, rebuilt from the npz files (~10 s, once)."""
    script = _rebuild_script()
    if script is None:
        pytest.skip(f"{omniglot_data}/omniglot/rebuild_zips.py not found")
    _start_rebuild()  # no-op if started at collection time
    _, err = _REBUILD["proc"].communicate()
    if _REBUILD["proc"].returncode != 0:
        pytest.fail(f"{script} failed: {err.decode(errors='replace')[-2000:]}")
    yield _REBUILD["out"]
    shutil.rmtree(_REBUILD["out"], ignore_errors=True)


@pytest.fixture(scope="session")
def downloaded_omniglot_root(rebuilt_omniglot_zips, http_server, tmp_path_factory) -> Path:
    """A data root whose omniglot/ zips were fetched from the loopback server."""
    from jmeta.data import download_omniglot
    served = http_server.root / "omniglot"
    served.mkdir(exist_ok=True)
    sums = {}
    for part in ("images_background", "images_evaluation"):
        src = rebuilt_omniglot_zips / f"{part}.zip"
        shutil.copyfile(src, served / f"{part}.zip")
        sums[part] = sha256_of(src)
    root = tmp_path_factory.mktemp("downloaded_root")
    download_omniglot(root, base_url=f"{http_server.url}/omniglot/", sha256=sums)
    return root
