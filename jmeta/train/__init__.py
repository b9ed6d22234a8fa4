"""Meta-training and evaluation."""

from jmeta.train.evaluate import evaluate, mean_ci95
from jmeta.train.step import TrainState, batched_loss_and_grad, init_train_state, make_meta_step

__all__ = ["TrainState", "batched_loss_and_grad", "evaluate", "init_train_state", "make_meta_step", "mean_ci95"]
