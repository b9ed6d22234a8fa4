"""A short meta-training run on quadratics beats tuned SGD on held-out quadratics."""

import jax
import numpy as np
import optax

from jmeta.learned_optim import (
    LSTMOptimizer,
    QuadraticFamily,
    TruncatedBPTT,
    default_meta_optimizer,
    loss_curves,
    meta_train,
    tune_learning_rate,
)


def test_short_meta_training_beats_tuned_sgd_on_heldout_quadratics():
    fam = QuadraticFamily()
    lopt = LSTMOptimizer()
    est = TruncatedBPTT(lopt, fam, num_tasks=16, horizon=100, truncation_length=20, meta_loss="mean_log")
    state, history = meta_train(
        est, num_steps=200, key=jax.random.key(0), meta_opt=default_meta_optimizer(3e-3), log_every=100
    )
    assert len(history) == 2 and all(np.isfinite(h["meta_loss"]) for h in history)

    # SGD's learning rate tuned on training tasks (keys disjoint from the held-out ones).
    lr, _ = tune_learning_rate(
        optax.sgd, np.logspace(-3, 0, 10), fam, key=jax.random.key(1), num_tasks=64, num_steps=100
    )
    heldout = jax.random.key(2)
    sgd = loss_curves(optax.sgd, lr, fam, key=heldout, num_tasks=100, num_steps=100)
    learned = loss_curves(lopt.opt_fn, state.theta, fam, key=heldout, num_tasks=100, num_steps=100)
    sgd_final, learned_final = np.median(sgd[:, -1]), np.median(learned[:, -1])
    assert learned_final < sgd_final, (learned_final, sgd_final, lr)
