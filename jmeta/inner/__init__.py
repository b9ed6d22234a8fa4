"""Inner-loop machinery: differentiable adaptation by any optax transformation."""

from jmeta.inner.loop import (REMAT_POLICIES, InnerResult, inner_loop, nan_derivative_at_zero_gradient, remat_policy,
                              update_opposes_gradient)
from jmeta.inner.lr import LR_KINDS, ScaleByLearnedLRState, init_log_lr, scale_by_learned_lr

__all__ = [
    "InnerResult",
    "LR_KINDS",
    "REMAT_POLICIES",
    "ScaleByLearnedLRState",
    "init_log_lr",
    "inner_loop",
    "nan_derivative_at_zero_gradient",
    "remat_policy",
    "scale_by_learned_lr",
    "update_opposes_gradient",
]
