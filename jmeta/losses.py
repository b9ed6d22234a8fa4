"""Per-task losses and metrics: ``loss(pred, y) -> scalar``."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.core import Tracer as _Tracer


def mse(pred, y):
    """Mean squared error; ``pred`` and ``y`` must have the same shape."""
    if pred.shape != y.shape:
        raise ValueError(
            f"model output shape {pred.shape} does not match the targets' shape {y.shape} "
            f"(for regression the model must output one value per target)")
    return jnp.mean(jnp.square(pred - y))


def cross_entropy(logits, y):
    """Softmax cross-entropy with integer labels ``y`` of shape ``logits.shape[:-1]``.

    Labels must be in ``[0, n_classes)``: called on concrete arrays (outside ``jit``), labels outside
    are a ``ValueError``; under ``jit`` they cannot be checked and give NaN (jmeta's samplers only draw
    labels in range).
    """
    if logits.shape[:-1] != y.shape:
        raise ValueError(
            f"model output shape {logits.shape} does not match integer labels of shape {y.shape} "
            f"(expected logits of shape {(*y.shape, 'n_classes')})")
    if not isinstance(y, _Tracer) and getattr(y, "size", 0):
        n = logits.shape[-1]
        labels = np.asarray(y)  # on the host: inside a trace, jnp.min of a constant would be staged, not computed
        lo, hi = (int(labels.min()), int(labels.max())) if np.issubdtype(labels.dtype, np.integer) else (0, 0)
        if lo < 0 or hi >= n:
            raise ValueError(f"cross_entropy: labels must be class indices in [0, {n}) for {n} logits; got labels "
                             f"in [{lo}, {hi}]")
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def accuracy(logits, y):
    """Classification accuracy with integer labels."""
    return jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))


LOSSES: dict[str, Callable] = {"mse": mse, "cross_entropy": cross_entropy}


def get_loss(loss: str | Callable) -> Callable:
    """Resolves a loss by name (``"mse"``, ``"cross_entropy"``) or returns the callable."""
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)} or a callable, got {loss!r}")
    return LOSSES[loss]


def metrics_for(loss: str | Callable, pred, y) -> dict:
    """Loss plus accuracy for classification losses."""
    fn = get_loss(loss)
    out = {"loss": fn(pred, y)}
    if fn is cross_entropy:
        out["accuracy"] = accuracy(pred, y)
    return out


__all__ = ["mse", "cross_entropy", "accuracy", "get_loss", "metrics_for", "LOSSES"]

del jax
