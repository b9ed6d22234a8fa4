#!/usr/bin/env bash
# The paper tables on one GPU and jmeta against PyTorch on the same GPU, in one call of about 9.5 minutes
# (issue 19; the stages, their budgets and what comes back: scripts/gpu_tables.py).
#
# Here, once: python scripts/gpu_tables.py --prepare   (builds .devdata/, 48 MiB, ignored by git: the Omniglot
#   npz (5.5 MiB), mini-ImageNet's train.zip (26 MiB) and test.zip cut to 200 images per class (16 MiB), the
#   pure-Python code of `higher` 0.2.1 and of learn2learn 0.2.0's MAML; the tool carries 64 MiB with the tree)
# Rehearsal on the CPU (2 meta-steps per stage, several minutes on 2 cores):
#   PYTHONPATH=$PWD python scripts/gpu_tables.py --rehearse --out /tmp/gpu_tables_rehearsal
# The GPU run, with the device tool (one call; the driver's deadline is 540 s, stages stop at their budgets):
#   run(command="bash scripts/gpu_tables.sh", carry=[".devdata"], timeout_s=600)
# nav2d MAML-TRPO, jmeta vs plain JAX vs PyTorch MAML-RL (issue 18), a call of its own (no carry needed):
#   run(command="bash scripts/gpu_tables.sh --stages rl-throughput", timeout_s=420)
# The tool sends the checkout the session was started in: have this script there and run --prepare there.
# It writes $OUT/summary.txt (the machine in '#' lines, then one line per stage as it finishes) and
# $OUT/NN-STAGE.tar.gz (each stage's run folder without checkpoints, its log and stage.json): 8 files, all
# that the tool brings back. Then here: python scripts/results_tables.py --import-gpu <files_at folder>
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?OUT must be set (the device tool sets it); elsewhere run scripts/gpu_tables.py --out DIR}"
export PYTHONPATH="$PWD:$PWD/.devdata/site${PYTHONPATH:+:$PYTHONPATH}"
export JMETA_DATA_DIR="${JMETA_DATA_DIR:-$PWD/.devdata/data}"
export PYTHONUNBUFFERED=1
PY="$(command -v python3 || command -v python)"
{
  echo "gpu_tables: $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2
  "$PY" -c 'import jax, sys; print("python", sys.version.split()[0], "jax", jax.__version__, jax.devices())' 2>&1 | tail -1
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' 2>&1 | tail -1
} | sed 's/^/# /' | tee "$OUT/summary.txt"
exec "$PY" scripts/gpu_tables.py --out "$OUT" --deadline "${GPU_TABLES_DEADLINE:-540}" "$@"
