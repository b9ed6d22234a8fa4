"""The PRNG keys of a run, derived from its seed in one place."""

from __future__ import annotations

import jax

__all__ = ["run_keys"]


def run_keys(seed: int):
    """``(k_train, k_eval, k_init)`` of a run with this seed: the meta-training stream, the held-out
    evaluation and the initialisation. Every tool that re-creates part of a run (``jmeta eval``,
    :func:`jmeta.run.experiment.load_run`, sweeps, diagnostics) derives its keys here."""
    return tuple(jax.random.split(jax.random.key(seed), 3))
