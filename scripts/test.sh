#!/usr/bin/env bash
# Installs jmeta with its test extras and runs the whole test suite.
# This is the README's test command; .ci/run calls exactly this. The tests run on 2 pytest-xdist workers
# (JMETA_TEST_WORKERS=N for another number, 0 for one process; plain `python -m pytest` works too), one test file per
# worker at a time (--dist loadgroup: see tests/conftest.py), so module-scoped fixtures are built once. The files
# go out in tests/conftest.py's order, the longest first (--no-loadscope-reorder: xdist would otherwise order them
# by their number of tests, and a long file of one test would start last while the other worker idles).
set -euo pipefail
cd "$(dirname "$0")/.."
# The `mjx` extra (MuJoCo MJX + gymnasium's MJCF models) is installed here rather than folded into `test`,
# so `.[test]` stays free of MuJoCo for whoever wants it; the locomotion tests skip without it.
python -m pip install --quiet --disable-pip-version-check -e ".[test,mjx]"
exec python -m pytest -q -n "${JMETA_TEST_WORKERS:-2}" --dist loadgroup --no-loadscope-reorder "$@"
