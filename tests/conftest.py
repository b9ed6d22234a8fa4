"""Shared fixtures for the jmeta test suite."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import jax
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def x64_enabled():
    """Float64 on for the block, restored afterwards (works on jax 0.10-0.12)."""
    old = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


@pytest.fixture
def x64():
    """Runs the test with float64 enabled."""
    with x64_enabled():
        yield


def shared_data_dir() -> pathlib.Path | None:
    """``$JMETA_DATA_DIR`` or ``<repo>/../shared/data`` if present."""
    env = os.environ.get("JMETA_DATA_DIR")
    for p in ([pathlib.Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if p.is_dir():
            return p
    return None


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("real datasets not found: set JMETA_DATA_DIR or place shared/data beside the repo")
    return d


_CACHE_DIR_ENV = "JAX_COMPILATION_CACHE_DIR"
_CACHE_ENV = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}


def pytest_configure(config):
    """One JAX persistent compilation cache for the whole run: a fresh temporary folder (removed at the end), shared
    through the environment with the pytest-xdist workers and with every ``jmeta`` subprocess the tests start, so a
    program that one test, worker or subprocess compiled is loaded, not compiled again, by the next (the cache key is
    the program's HLO plus compile options, so a loaded program is the one XLA would have compiled: same numerics).
    An existing ``JAX_COMPILATION_CACHE_DIR`` is used as it is; ``JMETA_TEST_JAX_CACHE=0`` turns this off."""
    _configure_xla_flags()
    if os.environ.get("JMETA_TEST_JAX_CACHE", "1") == "0":
        return
    if not os.environ.get(_CACHE_DIR_ENV):  # the xdist controller (or a plain run): workers inherit the variable
        config._jmeta_jax_cache = os.environ[_CACHE_DIR_ENV] = tempfile.mkdtemp(prefix="jmeta-tests-jax-cache-")
    for name, value in _CACHE_ENV.items():
        os.environ.setdefault(name, value)
    # jax read the variables when conftest imported it: set the options too (no program is compiled before this)
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_DIR_ENV])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                      int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))


#: XLA:CPU options the suite compiles with (``JMETA_TEST_XLA_CPU_FLAGS`` replaces them; empty for none). XLA:CPU's
#: newer fusion emitters cost ~35% more CPU per compile than the legacy ones on this suite's programs, and compiling
#: is most of the suite's time. Measured side by side (shared 2-core machine, CPU user+sys of
#: tests/algorithms/test_per_step_bn.py + tests/learned_optim/test_meta_lstm.py, 14 passed each): 126/111/103 s with
#: them, 76/84 s without; the execution-bound tests/test_omniglot_short_run.py 107 s with, 111 s without. The flag
#: changes how XLA generates machine code for a fusion, not the program (the same HLO), so float32 results may differ
#: in the last bits, which the tests' tolerances allow for. A jaxlib that does not know the flag aborts on it, so it is
#: probed once in a subprocess and left out if unknown.
#: ``--xla_gpu_deterministic_ops=true`` changes nothing on the CPU, but JAX's persistent-cache key hashes ``XLA_FLAGS``:
#: ``jmeta train/eval/sweep`` (in-process or as a subprocess) add this flag when a config asks for determinism (the
#: default), so without it here their programs never matched the same programs compiled by library calls. Measured side
#: by side (tests/train, test_faults, test_sweep_cli, test_export; 247 passed each): 79 -> 87 cache hits, CPU user+sys
#: 138.0 -> 132.6 s.
_SUITE_XLA_FLAGS = "--xla_cpu_use_fusion_emitters=false --xla_gpu_deterministic_ops=true"


def _xla_flags_work(flags: str) -> bool:
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    probe = "import jax, jax.numpy as jnp; jnp.ones(3).sum().block_until_ready()"
    try:
        return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _configure_xla_flags():
    """Adds the suite's XLA:CPU flags to ``XLA_FLAGS`` before JAX starts its backend (the xdist controller probes and
    sets them; the workers and the subprocesses the tests start inherit the variable)."""
    if os.environ.get("_JMETA_TEST_XLA_FLAGS_DONE"):
        return
    os.environ["_JMETA_TEST_XLA_FLAGS_DONE"] = "1"
    flags = os.environ.get("JMETA_TEST_XLA_CPU_FLAGS", _SUITE_XLA_FLAGS).strip()
    if flags and _xla_flags_work(flags):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()


def pytest_unconfigure(config):
    path = getattr(config, "_jmeta_jax_cache", None)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under ``pytest -n N`` (pytest-xdist, ``--dist loadgroup``, as ``scripts/test.sh`` runs it) one test file runs
    on one worker, so the module- and session-scoped fixtures that share compiled programs and decoded data are built
    once, not once per worker. A test that already has an ``xdist_group`` keeps it (``tests/data`` puts its files in
    one group: they share the decoded datasets). Without xdist the marker does nothing.

    ``tryfirst``: xdist reads the ``xdist_group`` markers in its own ``pytest_collection_modifyitems`` (it appends
    ``@group`` to the node ids it schedules by); run after it, these markers were never seen, the tests of one file
    went out one by one to both workers, and every module fixture was built twice (measured: the MJX meta-step
    fixture of tests/rl/test_locomotion_meta_step.py set up on both workers, 20 s each)."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
    # The longest files first (xdist hands out the groups in this order), so that no long file starts last and
    # leaves the other worker idle at the end; the order inside a file is kept (a stable sort).
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


# Files whose tests take the longest in total, longest first (seconds of wall time of each file's tests in a profiled
# run of the whole suite on 2 xdist workers on the shared 2-core machine, 2026-12-03, at 341cdfc; files under 6 s follow
# in collection order). A static list: the order only balances the two workers (xdist hands the files out in this order,
# and a long file that started last would leave the other worker idle at the end); it changes no result. In that run
# the two workers' sums came out within a second of each other (587 s each) and pytest took 606 s.
LONGEST_FILES = (
    "tests/test_omniglot_short_run.py",           # 108
    "tests/test_image_experiments.py",            # 55
    "tests/test_gpu_tables.py",                   # 48
    "tests/algorithms/test_conformance.py",       # 48
    "tests/algorithms/test_maml_gradients.py",    # 44
    "tests/rl/test_rl_cli.py",                    # 41
    "tests/learned_optim/test_meta_lstm.py",      # 38
    "tests/models/test_conv4.py",                 # 38
    "tests/rl/test_locomotion_reduced.py",        # 36
    "tests/rl/test_rl_sharding.py",               # 34
    "tests/rl/test_rl_conformance.py",            # 32
    "tests/rl/test_maml_rl.py",                   # 31
    "tests/learned_optim/test_estimators.py",     # 31
    "tests/ops/test_conv.py",                     # 27
    "tests/test_readme.py",                       # 26
    "tests/algorithms/test_per_step_bn.py",       # 26
    "tests/test_core_training.py",                # 23
    "tests/rl/test_rl2.py",                       # 21
    "tests/algorithms/test_metaoptnet.py",        # 21
    "tests/rl/test_maml_rl_learning.py",          # 20
    "tests/learned_optim/test_tasks.py",          # 19
    "tests/data/test_omniglot.py",                # 18
    "tests/algorithms/test_imaml_custom_vjp.py",  # 17
    "tests/rl/test_locomotion.py",                # 16
    "tests/test_sweep_cli.py",                    # 15
    "tests/test_faults.py",                       # 15
    "tests/train/test_checkpoint_integrity.py",   # 15
    "tests/train/test_distributed.py",            # 13
    "tests/data/test_episodes.py",                # 13
    "tests/train/test_determinism.py",            # 13
    "tests/learned_optim/test_train.py",          # 12
    "tests/models/test_resnet.py",                # 11
    "tests/rl/test_nav2d_rollout.py",             # 11
    "tests/rl/test_bandit_mdp.py",                # 11
    "tests/algorithms/test_imaml.py",             # 11
    "tests/learned_optim/test_lstm.py",           # 11
    "tests/test_rl_throughput.py",                # 11
    "tests/train/test_run_faults.py",             # 11
    "tests/models/test_model_dtypes.py",          # 11
    "tests/train/test_sweep.py",                  # 10
    "tests/test_export.py",                       # 10
    "tests/train/test_checkpoint_resume.py",      # 10
    "tests/algorithms/test_anil_head.py",         # 10
    "tests/implicit/test_root.py",                # 9
    "tests/algorithms/test_r2d2.py",              # 9
    "tests/algorithms/test_pytree.py",            # 8
    "tests/train/test_benchmark_suite.py",        # 8
    "tests/train/test_chunking.py",               # 8
    "tests/rl/test_rl_estimators.py",             # 8
    "tests/test_sinusoid_stability.py",           # 8
    "tests/data/test_tfds.py",                    # 7
    "tests/train/test_precision.py",              # 7
    "tests/rl/test_returns.py",                   # 6
)


@pytest.fixture(autouse=True)
def _restore_xla_flags():
    """`jmeta train/eval/sweep` called in-process add the GPU determinism flag to XLA_FLAGS; keep tests apart."""
    old = os.environ.get("XLA_FLAGS")
    yield
    if old is None:
        os.environ.pop("XLA_FLAGS", None)
    else:
        os.environ["XLA_FLAGS"] = old
