r"""Euclidean projections used by projected-gradient inner solvers (differentiable almost everywhere)."""

from __future__ import annotations

import jax.numpy as jnp


def projection_simplex(x, scale: float = 1.0):
    r"""Projection onto the simplex :math:`\{p \ge 0,\ \sum_k p_k = s\}` along the last axis.

    .. math:: \Pi(x)_k = \max(x_k - \tau, 0),\quad \tau \text{ such that } \sum_k \Pi(x)_k = s,

    computed by sorting (Held et al. 1974; Duchi et al. 2008), :math:`O(K \log K)`
    per row. Its Jacobian (automatic differentiation through the sort) is the
    projection onto the face: :math:`I_S - \mathbf{1}_S\mathbf{1}_S^\top/|S|`
    on the support :math:`S`, zero elsewhere.

    Args:
      x: array ``[..., K]``.
      scale: the simplex's total mass :math:`s > 0`.
    """
    x = jnp.asarray(x)
    k = x.shape[-1]
    u = jnp.flip(jnp.sort(x, axis=-1), axis=-1)
    css = jnp.cumsum(u, axis=-1) - scale
    ind = jnp.arange(1, k + 1, dtype=x.dtype)
    rho = jnp.sum((u - css / ind > 0).astype(jnp.int32), axis=-1, keepdims=True)
    rho = jnp.maximum(rho, 1)
    tau = jnp.take_along_axis(css, rho - 1, axis=-1) / rho.astype(x.dtype)
    return jnp.maximum(x - tau, 0.0)


__all__ = ["projection_simplex"]
