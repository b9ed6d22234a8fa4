"""Learned optimizers (Andrychowicz et al., 2016), in the shape of google/learned_optimization.

* :mod:`.lstm`: the coordinate-wise LSTM optimizer as an optax transformation
  (``LSTMOptimizer(...).init(key) -> theta``, ``.opt_fn(theta)``).
* :mod:`.estimators`: meta-gradient estimators (truncated BPTT, ES, PES),
  apart from the optimizer.
* :mod:`.train`: the jitted meta-step and a small meta-training loop.
* :mod:`.optimizees`: optimizee task families (quadratics, MLPs and conv nets on
  MNIST digits).
* :mod:`.evaluate`: loss curves and learning-rate tuning of baselines.
* :mod:`.meta_lstm`: the Meta-LSTM few-shot learner (Ravi & Larochelle, 2017),
  an algorithm with the ``init`` / ``adapt`` / ``task_loss`` contract of
  :mod:`jmeta.algorithms`.
"""

from jmeta.learned_optim.estimators import ES, META_LOSSES, PES, PESWorkerState, TruncatedBPTT, UnrollState
from jmeta.learned_optim.evaluate import baseline_optimizers, loss_curves, steps_to_reach, tune_learning_rate
from jmeta.learned_optim.meta_lstm import META_LSTM_BN_MODES, MetaLSTM, MetaLSTMCarry
from jmeta.learned_optim.lstm import LSTMOptimizer, LSTMOptimizerState, lstm_optimizer, preprocess_gradients
from jmeta.learned_optim.optimizees import (
    ConvFamily,
    ConvTask,
    MLPFamily,
    MLPTask,
    QuadraticFamily,
    QuadraticTask,
    load_digits,
)
from jmeta.learned_optim.train import (
    MetaTrainState,
    default_meta_optimizer,
    init_meta_train,
    make_meta_step,  # deprecated name of make_optimizer_meta_step (not in __all__)
    make_optimizer_meta_step,
    meta_train,
)

__all__ = [
    "ES",
    "META_LOSSES",
    "PES",
    "PESWorkerState",
    "TruncatedBPTT",
    "UnrollState",
    "baseline_optimizers",
    "loss_curves",
    "steps_to_reach",
    "tune_learning_rate",
    "LSTMOptimizer",
    "LSTMOptimizerState",
    "lstm_optimizer",
    "preprocess_gradients",
    "META_LSTM_BN_MODES",
    "MetaLSTM",
    "MetaLSTMCarry",
    "ConvFamily",
    "ConvTask",
    "MLPFamily",
    "MLPTask",
    "QuadraticFamily",
    "QuadraticTask",
    "load_digits",
    "MetaTrainState",
    "default_meta_optimizer",
    "init_meta_train",
    "make_optimizer_meta_step",
    "meta_train",
]
