#!/usr/bin/env bash
# Runs the MetaWorld ML1 adapter's tests in their own virtual environment: metaworld pins mujoco==3.3.0,
# which cannot share an environment with the `mjx` extra (mujoco-mjx>=3.17) that scripts/test.sh installs.
# The tests train the metaworld-ml1-reach-maml-trpo preset for two tiny steps (checkpoints: orbax; rl_returns.png:
# matplotlib). The venv is $JMETA_METAWORLD_VENV (default .venv-metaworld/ in the repo, git-ignored) and is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${JMETA_METAWORLD_VENV:-.venv-metaworld}"
[ -x "$venv/bin/python" ] || python -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[metaworld,plots,checkpoint]" "pytest>=8"
exec "$venv/bin/python" -m pytest -q tests/rl/test_metaworld.py "$@"
