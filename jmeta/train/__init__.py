"""Meta-training and evaluation.

* :func:`make_meta_step` -- the one compiled meta-step (``vmap``/``map``/chunked
  over tasks, optionally sharded over a device mesh, optionally mixed precision);
* :func:`evaluate` -- held-out tasks, mean and 95% CI per adaptation step;
* :mod:`.distributed` -- meshes and multi-host set-up; :mod:`.precision` --
  bfloat16 compute; :mod:`.sweep` -- several configurations in one program.

The run-level machinery (:mod:`.runner`, :mod:`.checkpoint`, :mod:`.logging`,
:mod:`.tensorboard`, the run-folder :mod:`.lock`, SIGINT/SIGTERM handling in
:mod:`.interrupt`) is imported on use.
"""

from jmeta.train.evaluate import evaluate, mean_ci95
from jmeta.train.step import (ChunkChoice, TrainState, batched_loss_and_grad, choose_chunk_size,
                              compiled_memory_bytes, default_memory_budget, init_train_state, make_meta_step,
                              meta_grad, sharded_loss_and_grad)

__all__ = ["ChunkChoice", "TrainState", "batched_loss_and_grad", "choose_chunk_size", "compiled_memory_bytes",
           "default_memory_budget", "evaluate", "init_train_state", "make_meta_step", "mean_ci95", "meta_grad",
           "sharded_loss_and_grad"]
