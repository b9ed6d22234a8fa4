"""Returns, advantages and the linear feature baseline (all masked, all along the last = time axis).

* :func:`discounted_returns`: ``G_t = sum_{t' >= t} gamma^{t'-t} r_t'`` within the episode.
* :func:`gae`: generalized advantage estimation (Schulman et al. 2016) with values ``V(s_t)`` and a zero
  value after the last step (rllab's convention: paths end at the horizon or at ``done``); masked steps are
  skipped. The one GAE of jmeta.rl: MAML-RL/ProMP use it per episode, RL^2 (:func:`jmeta.rl.rl2.trial_gae`)
  over a whole trial.
* :func:`normalize_advantages`: ``(A - mean) / (std + eps)`` over the valid steps (rllab's ``center_adv``).
* :func:`fit_linear_baseline` / :func:`linear_baseline_values`: the linear feature baseline of Duan et al.
  (2016) as rllab's ``LinearFeatureBaseline``: features ``[o, o^2, t/100, (t/100)^2, (t/100)^3, 1]`` with
  ``o = clip(obs, -10, 10)``, least squares on the discounted returns of one task's episodes, ridge
  ``reg_coeff = 1e-5`` (multiplied by 10, up to 5 times, while the solution is not finite).

The baseline's solves run one matrix at a time even when vmapped over tasks (:func:`_solve`): jaxlib
0.10.x's batched CPU LAPACK kernels split the batch over XLA's intra-op thread pool and block a pool worker
until the pieces finish, which deadlocks once every worker of the pool waits so (see :func:`_solve`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["discounted_returns", "gae", "normalize_advantages", "baseline_features", "fit_linear_baseline",
           "linear_baseline_values"]


def _reverse_scan(f, init, xs):
    """``lax.scan`` of ``f`` over the last axis of each ``xs`` leaf, from the end."""
    xs_t = jax.tree.map(lambda a: jnp.moveaxis(a, -1, 0), xs)
    _, ys = jax.lax.scan(f, init, xs_t, reverse=True)
    return jnp.moveaxis(ys, 0, -1)


def discounted_returns(rewards, mask, gamma: float):
    """Discounted reward-to-go of each step; 0 at masked steps. Shapes ``[..., T]``."""
    r = rewards * mask

    def f(g, x):
        r_t, m_t = x
        g = r_t + gamma * g * m_t
        return g, g

    return _reverse_scan(f, jnp.zeros(r.shape[:-1], r.dtype), (r, mask))


def gae(rewards, values, mask, gamma: float, lam: float):
    """Generalized advantage estimates ``A_t = sum_k (gamma lam)^k delta_{t+k}``; 0 at masked steps.

    ``delta_t = r_t + gamma V(s_{t+1}) - V(s_t)`` with ``V = 0`` after the last valid step. With ``lam = 1``,
    ``A_t = G_t - V(s_t)``. Masked steps (``mask`` 0/False) are skipped: on the valid steps the result equals
    GAE of the sequence with the masked steps removed. For the done-masks of :func:`jmeta.rl.rollout` (1 up to
    ``done``, 0 after) each episode ends at its ``done``; for an RL^2 trial (episodes concatenated, each masked
    after its own ``done``, :func:`jmeta.rl.rl2.trial_gae`) the estimate runs on across episode boundaries.

    Args:
      rewards, values: ``[..., T]``.
      mask: ``[..., T]`` valid steps (bool or 0/1); ``None``: all valid.
      gamma, lam: discount and GAE parameter.
    """
    dtype = jnp.result_type(rewards, values)
    valid = jnp.ones(jnp.shape(rewards), bool) if mask is None else jnp.asarray(mask).astype(bool)

    def f(carry, x):
        adv_next, v_next = carry
        r_t, v_t, m_t = x
        adv = r_t + gamma * v_next - v_t + gamma * lam * adv_next
        return (jnp.where(m_t, adv, adv_next), jnp.where(m_t, v_t, v_next)), jnp.where(m_t, adv, 0.0).astype(dtype)

    zero = jnp.zeros(jnp.shape(rewards)[:-1], dtype)
    return _reverse_scan(f, (zero, zero), (jnp.asarray(rewards, dtype), jnp.asarray(values, dtype), valid))


def normalize_advantages(adv, mask=None, eps: float = 1e-8):
    """``(adv - mean) / (std + eps)`` over all valid entries of ``adv`` (masked entries become 0).

    ``mask`` (bool or 0/1, the shape of ``adv``) marks the valid entries; ``None``: all of them.
    """
    if mask is None:
        mask = jnp.ones_like(adv)
    mask = jnp.asarray(mask, adv.dtype)
    n = jnp.maximum(jnp.sum(mask), 1.0)
    mean = jnp.sum(adv * mask) / n
    var = jnp.sum(((adv - mean) * mask) ** 2) / n
    return (adv - mean) / (jnp.sqrt(var) + eps) * mask


def baseline_features(obs, mask):
    """rllab's features ``[o, o^2, t/100, (t/100)^2, (t/100)^3, 1]`` of ``obs [..., T, obs_size]``, masked."""
    o = jnp.clip(obs, -10.0, 10.0)
    t = jnp.arange(obs.shape[-2], dtype=o.dtype) / 100.0
    t = jnp.broadcast_to(t[:, None], (*obs.shape[:-1], 1))
    feats = jnp.concatenate([o, o * o, t, t ** 2, t ** 3, jnp.ones_like(t)], axis=-1)
    return feats * mask[..., None]


@jax.custom_batching.sequential_vmap
def _solve(a, b):
    """``jnp.linalg.solve(a, b)`` for one ``[n, n]`` matrix; under ``vmap`` a ``lax.map`` of unbatched solves.

    Why: on the CPU, jaxlib 0.10.x's LAPACK kernels (``lapack_sgetrf_ffi`` -> ``jax::ParallelBatchMap``)
    split a batch whose cost ``batch * n^3`` exceeds 2e5 flops into chunks scheduled on XLA's intra-op
    thread pool and then block the calling thread on a counter until the chunks are done. When the
    calling thread is itself a worker of that pool (XLA's thunk executor runs independent thunks and
    loop bodies there) and every worker blocks so at once, nothing is left to run the chunks: the
    program never finishes, all threads idle, the host waits in ``block_until_ready``. On a 2-core CPU
    the pool has 2 workers and the linear baseline of a meta-batch (5 retries of a ``[tasks, 38, 38]``
    solve for HalfCheetah) triggered it within a few meta-iterations (``benchmarks/lapack_deadlock.py``).
    One matrix per call takes the kernel's inline path (a batch of one is never split). jax >= 0.11.1
    no longer splits LAPACK batches in open-source builds; results are identical either way (the batched
    kernel runs the same LAPACK routine per matrix).
    """
    return jnp.linalg.solve(a, b)


def fit_linear_baseline(obs, returns, mask, reg_coeff: float = 1e-5):
    """Coefficients of the linear feature baseline fitted to ``returns [E, T]`` of one task (closed form).

    Args:
      obs: ``[E, T, obs_size]`` observations of the task's episodes.
      returns: ``[E, T]`` discounted returns (the regression targets).
      mask: ``[E, T]`` valid steps (masked steps do not enter the fit).
      reg_coeff: ridge term; as in rllab it is multiplied by 10 (at most 5 tries) while the solution has NaNs.
    """
    f = baseline_features(obs, mask).reshape(-1, obs.shape[-1] * 2 + 4)
    y = (returns * mask).reshape(-1)
    # No gradient flows through the fit (rllab's baseline is a constant of the surrogate); stopping it at the
    # inputs keeps the solves out of autodiff.
    f, y = jax.lax.stop_gradient((f, y))
    ftf, fty = f.T @ f, f.T @ y
    eye = jnp.eye(ftf.shape[0], dtype=ftf.dtype)
    coeffs = _solve(ftf + reg_coeff * eye, fty)
    for i in range(1, 5):
        retry = _solve(ftf + reg_coeff * 10.0 ** i * eye, fty)
        coeffs = jnp.where(jnp.all(jnp.isfinite(coeffs)), coeffs, retry)
    return jax.lax.stop_gradient(coeffs)


def linear_baseline_values(coeffs, obs, mask):
    """Baseline values ``[..., T]`` of the fitted coefficients (0 at masked steps)."""
    return baseline_features(obs, mask) @ coeffs
