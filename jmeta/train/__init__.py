"""Meta-training and evaluation.

* :func:`make_meta_step` -- the one compiled meta-step (``vmap``/``map``/chunked
  over tasks, optionally sharded over a device mesh, optionally mixed precision);
* :func:`evaluate` -- held-out tasks, mean and 95% CI per adaptation step;
* :mod:`.distributed` -- meshes and multi-host set-up; :mod:`.precision` --
  bfloat16 compute; :mod:`.vectorized` -- several configurations in one program.

The run-level machinery (runner, checkpoints, logs, TensorBoard, the run-folder
lock, SIGINT/SIGTERM handling) is :mod:`jmeta.run`, above this package; the old
paths (``jmeta.train.runner`` ...) are deprecated aliases for one release.
"""

from jmeta._deprecation import renamed_module
from jmeta.train.evaluation import evaluate, mean_ci95
from jmeta.train.step import (ChunkChoice, TrainState, batched_loss_and_grad, choose_chunk_size,
                              compiled_memory_bytes, default_memory_budget, init_train_state, make_meta_step,
                              meta_grad, sharded_loss_and_grad)

__all__ = ["ChunkChoice", "TrainState", "batched_loss_and_grad", "choose_chunk_size", "compiled_memory_bytes",
           "default_memory_budget", "evaluate", "init_train_state", "make_meta_step", "mean_ci95", "meta_grad",
           "sharded_loss_and_grad"]

# The module jmeta/train/evaluate.py is now evaluation.py (``jmeta.train.evaluate`` is the function);
# ``from jmeta.train.evaluate import ...`` still works for one release, with a DeprecationWarning.
renamed_module("jmeta.train.evaluate", "jmeta.train.evaluation")
