"""MAML-RL (Finn et al. 2017) and ProMP (Rothfuss et al. 2019): the whole meta-iteration in one compiled step.

One :meth:`MAMLRL.meta_step` does, for ``num_tasks`` tasks drawn from the environment (``vmap`` over tasks):

1. pre-adaptation rollouts with the meta-parameters ``theta`` (``num_episodes`` x ``horizon``, ``lax.scan``);
2. ``num_inner_steps`` policy-gradient steps ``theta_{k+1} = theta_k + inner_lr * grad surrogate(theta_k)``
   (the surrogate is the chosen estimator, :mod:`jmeta.rl.estimators`, on advantages from the linear feature
   baseline and GAE), each followed by rollouts with ``theta_{k+1}``;
3. the outer objective on the post-adaptation rollouts, as a function of ``theta`` through the inner steps
   (recomputed from the stored samples, so the meta-gradient flows through the inner gradient); and
4. the outer update: TRPO (conjugate gradient on Fisher-vector products of the mean KL between the old and
   new *adapted* policies, step scaled to the KL bound ``max_kl``, backtracking line search that requires a
   surrogate improvement and ``KL <= max_kl``; all inside jit with ``lax.while_loop``) or PPO-clip (Adam,
   ``ppo_epochs`` full-batch epochs). ProMP (:func:`promp`) is the LVC estimator with the PPO-clip outer
   objective and an adaptive KL penalty between the old and new pre-update policies of each inner step.

Both are :class:`jmeta.rl.MetaRLAlgorithm` s (``jmeta.rl.ALGORITHMS["MAMLRL"]``, ``["ProMP"]``); ``meta_step(...,
mesh=...)`` (or :func:`jmeta.rl.make_rl_meta_step`) splits the tasks of the meta-batch over a device mesh.

Meta-SGD: ``learn_inner_lr=True`` adds a per-parameter inner learning rate (initialised at ``inner_lr``) to the
meta-parameters, learned by the outer step.

Surrogates weight samples by importance ratios to the stored behaviour log-probabilities, so the outer
objective is an ordinary function of ``theta`` for fixed samples: its ``jax.grad`` is checked against finite
differences (the DiCE magic box equals these ratios, with all their derivatives, at the sampling point).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from jmeta import validate
from jmeta._struct import static_dataclass
from jmeta.rl.base import check_task_mesh, draw_tasks, shard_tasks
from jmeta.rl.envs.base import check_env, task_axis_size
from jmeta.rl.estimators import ESTIMATORS, dice_surrogate, lvc_surrogate, reinforce_surrogate
from jmeta.rl.returns import (discounted_returns, fit_linear_baseline, gae, linear_baseline_values,
                              normalize_advantages)
from jmeta.rl.rollout import Trajectories, check_policy_env, check_tasks, episode_returns, rollout

PyTree = Any

__all__ = ["MAMLRL", "MetaRLState", "ProMP", "Processed", "promp", "conjugate_gradient"]


class MetaRLState(NamedTuple):
    """Training state of :class:`MAMLRL`.

    Attributes:
      params: meta-parameters ``{"policy": ..., ["inner_lr": ...]}``.
      opt_state: the outer optimizer's state (PPO/ProMP; an empty tuple for TRPO).
      inner_kl_coef: ProMP's KL-penalty coefficient per inner step, ``[num_inner_steps]``.
      step: meta-iterations done.
    """

    params: PyTree
    opt_state: PyTree
    inner_kl_coef: jax.Array
    step: jax.Array


class Processed(NamedTuple):
    """Per-step quantities derived from one task's trajectories (all without gradient)."""

    advantages: jax.Array  # [E, T], normalised if requested
    values: jax.Array  # [E, T] baseline values
    reward_scale: jax.Array  # scalar: 1 / std of the raw advantages (DiCE's reward scale)


def conjugate_gradient(matvec, b, *, iters: int = 10, tol: float = 1e-10):
    """Solves ``A x = b`` for symmetric positive definite ``A`` given by ``matvec`` (flat vectors), in jit.

    Stops after ``iters`` iterations or when ``r.r <= tol`` (rllab's ``cg`` with ``residual_tol``): jmeta's
    :func:`jmeta.implicit.linear_solve.solve_cg` with its relative tolerance set to ``sqrt(tol) / ||b||``.
    """
    from jmeta.implicit.linear_solve import solve_cg

    return solve_cg(matvec, b, tol=jnp.sqrt(tol) / jnp.linalg.norm(b), maxiter=iters)


@static_dataclass
class MAMLRL:
    """MAML-RL with a choice of inner estimator and outer step (see the module docstring).

    Defaults follow MAML-RL's 2D navigation (``maml_trpo_point.py`` and Finn et al. 2017, Sec. 5.3): 20 tasks x
    20 episodes per meta-batch, one inner step of 0.1, linear feature baseline, TRPO with ``max_kl=0.01``.

    Attributes:
      env: a :class:`jmeta.rl.envs.Env` (continuous actions).
      policy: a :class:`jmeta.rl.policies.GaussianPolicy` whose sizes match ``env``.
      num_tasks: tasks per meta-batch.
      num_episodes: episodes per task for each inner step and for the post-adaptation rollouts.
      num_inner_steps: policy-gradient steps of the inner loop (>= 1).
      inner_lr: inner step size (>= 0).
      learn_inner_lr: Meta-SGD: learn a per-parameter inner step size, initialised at ``inner_lr``.
      adapt_params: ANIL-style partial adaptation: path prefixes (``"/"``-joined dict keys of the policy
        parameters, e.g. ``("mean/layers_2", "log_std")`` for the head and the log-std of a 2-hidden-layer MLP)
        of the parameters the inner step updates; the others keep their meta-values. ``None``: all.
      estimator: ``"dice"``, ``"lvc"``, ``"reinforce"`` (MAML-RL's original surrogate, differentiated through) or
        ``"first_order"`` (REINFORCE with the inner gradient stop-gradiented).
      outer: ``"trpo"`` or ``"ppo"``.
      gamma, gae_lambda: discount and GAE parameter (0.99 and 1 in MAML-RL and ProMP).
      baseline: ``"linear"`` (Duan et al. 2016) or ``"none"``.
      normalize_advantages: center and scale advantages per task (rllab's ``center_adv``).
      max_kl, cg_iters, cg_damping, backtrack_ratio, max_backtracks: TRPO (rllab's defaults: 0.01, 10, 1e-5,
        0.8, 15).
      outer_lr, ppo_epochs, clip_eps: PPO-clip's Adam step size, epochs per meta-batch and clip range.
      inner_kl_penalty: initial coefficient of ProMP's KL penalty on the inner step (``None``: no penalty).
      target_inner_kl: the penalty adapts towards this KL (halved below ``target/1.5``, doubled above
        ``1.5 target``), per inner step, as in ProMP.
    """

    env: Any
    policy: Any
    num_tasks: int = 20
    num_episodes: int = 20
    num_inner_steps: int = 1
    inner_lr: float = 0.1
    learn_inner_lr: bool = False
    adapt_params: tuple[str, ...] | None = None
    estimator: str = "dice"
    outer: str = "trpo"
    gamma: float = 0.99
    gae_lambda: float = 1.0
    baseline: str = "linear"
    normalize_advantages: bool = True
    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 1e-5
    backtrack_ratio: float = 0.8
    max_backtracks: int = 15
    outer_lr: float = 1e-3
    ppo_epochs: int = 5
    clip_eps: float = 0.2
    inner_kl_penalty: float | None = None
    target_inner_kl: float = 0.01

    def __post_init__(self):
        check_env(self.env, discrete=False, user="MAMLRL")
        check_policy_env(self.policy, self.env)
        validate.integer("num_tasks", self.num_tasks, min=1)
        validate.integer("num_episodes", self.num_episodes, min=1)
        validate.integer("num_inner_steps", self.num_inner_steps, min=1)
        validate.number("inner_lr", self.inner_lr, min=0)
        validate.flag("learn_inner_lr", self.learn_inner_lr)
        self._adapt_mask()
        validate.choice("estimator", self.estimator, ESTIMATORS)
        validate.choice("outer", self.outer, ("trpo", "ppo"))
        validate.number("gamma", self.gamma, min=0, max=1)
        validate.number("gae_lambda", self.gae_lambda, min=0, max=1)
        validate.choice("baseline", self.baseline, ("linear", "none"))
        validate.flag("normalize_advantages", self.normalize_advantages)
        validate.number("max_kl", self.max_kl, min=0, min_open=True)
        validate.integer("cg_iters", self.cg_iters, min=1)
        validate.number("cg_damping", self.cg_damping, min=0)
        validate.number("backtrack_ratio", self.backtrack_ratio, min=0, max=1, min_open=True, max_open=True)
        validate.integer("max_backtracks", self.max_backtracks, min=1)
        validate.number("outer_lr", self.outer_lr, min=0, min_open=True)
        validate.integer("ppo_epochs", self.ppo_epochs, min=1)
        validate.number("clip_eps", self.clip_eps, min=0, min_open=True)
        validate.number("inner_kl_penalty", self.inner_kl_penalty, min=0, optional=True)
        validate.number("target_inner_kl", self.target_inner_kl, min=0, min_open=True)
        if self.inner_kl_penalty is not None and self.outer != "ppo":
            raise ValueError(f"inner_kl_penalty (ProMP) needs outer='ppo'; got outer={self.outer!r}")

    # ------------------------------------------------------------------ state
    def _adapt_mask(self):
        """Pytree of bools over the policy parameters: which ones the inner step updates."""
        params = self.policy.init()
        if self.adapt_params is None:
            return jax.tree.map(lambda _: True, params)
        prefixes = self.adapt_params
        if isinstance(prefixes, str) or not all(isinstance(p, str) and p for p in prefixes):
            raise ValueError(f"adapt_params must be a tuple of parameter path prefixes such as ('mean/layers_2', "
                             f"'log_std'), or None; got {prefixes!r}")
        paths = ["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
                 for path, _ in jax.tree_util.tree_leaves_with_path(params)]
        for pre in prefixes:
            if not any(p == pre or p.startswith(pre.rstrip("/") + "/") for p in paths):
                raise ValueError(f"adapt_params entry {pre!r} matches no policy parameter; the parameters are "
                                 f"{paths}")
        flags = [any(p == pre or p.startswith(pre.rstrip("/") + "/") for pre in prefixes) for p in paths]
        return jax.tree.unflatten(jax.tree.structure(params), flags)

    def _optimizer(self):
        return optax.adam(self.outer_lr)

    @property
    def meta_batch_size(self) -> int:
        """Tasks per meta-step (``num_tasks``; the :class:`jmeta.rl.MetaRLAlgorithm` name)."""
        return self.num_tasks

    def init(self, key: jax.Array | None = None, params: PyTree | None = None, *,
             policy_params: PyTree | None = None) -> MetaRLState:
        """The initial state from the policy parameters ``params`` (default: ``policy.init()``).

        Args:
          key: unused (the policy carries its initial parameters); part of the shared contract.
          params: initial policy parameters. ``policy_params=`` is the same (the former name); policy
            parameters given as the first positional argument (the former signature ``init(policy_params)``)
            are still accepted, with a ``DeprecationWarning``.
        """
        if key is not None and not (hasattr(key, "dtype") and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)):
            if params is not None:
                raise TypeError(f"key must be a jax.random.key or None; got {validate.describe(key)}")
            warnings.warn("MAMLRL.init(policy_params) is deprecated: pass init(params=policy_params)",
                          DeprecationWarning, stacklevel=2)
            params, key = key, None
        if policy_params is not None:
            if params is not None:
                raise TypeError("give the initial policy parameters once: params= or policy_params=, not both")
            params = policy_params
        p = self.policy.init() if params is None else params
        params = {"policy": p}
        if self.learn_inner_lr:
            params["inner_lr"] = jax.tree.map(lambda a: jnp.full_like(a, self.inner_lr), p)
        opt_state = self._optimizer().init(params) if self.outer == "ppo" else ()
        coef = 0.0 if self.inner_kl_penalty is None else self.inner_kl_penalty
        return MetaRLState(params, opt_state, jnp.full((self.num_inner_steps,), coef, jnp.float32),
                           jnp.zeros((), jnp.int32))

    # ------------------------------------------------------------------ one task
    def process(self, traj: Trajectories) -> Processed:
        """Advantages (GAE on the linear baseline), baseline values and DiCE's reward scale of one task."""
        traj = jax.lax.stop_gradient(traj)
        rets = discounted_returns(traj.rewards, traj.mask, self.gamma)
        if self.baseline == "linear":
            values = linear_baseline_values(fit_linear_baseline(traj.obs, rets, traj.mask), traj.obs, traj.mask)
        else:
            values = jnp.zeros_like(rets)
        adv = gae(traj.rewards, values, traj.mask, self.gamma, self.gae_lambda)
        n = jnp.maximum(jnp.sum(traj.mask), 1.0)
        mean = jnp.sum(adv * traj.mask) / n
        std = jnp.sqrt(jnp.sum(((adv - mean) * traj.mask) ** 2) / n)
        if self.normalize_advantages:
            adv = normalize_advantages(adv, traj.mask)
        scale = 1.0 / (std + 1e-8) if self.normalize_advantages else jnp.ones_like(std)
        return Processed(adv, values, scale)

    def inner_objective(self, policy_params, traj: Trajectories, proc: Processed):
        """The inner estimator's surrogate (higher is better) of one task's trajectories."""
        lp = self.policy.log_prob(policy_params, traj.obs, traj.actions)
        if self.estimator == "dice":
            return dice_surrogate(lp, traj.rewards * proc.reward_scale, traj.mask, gamma=self.gamma,
                                  values=proc.values * proc.reward_scale, behaviour_log_probs=traj.log_probs)
        if self.estimator == "lvc":
            return lvc_surrogate(lp, proc.advantages, traj.mask, behaviour_log_probs=traj.log_probs)
        return reinforce_surrogate(lp, proc.advantages, traj.mask)

    def inner_update(self, meta_params, policy_params, traj: Trajectories, proc: Processed):
        """One inner policy-gradient ascent step from ``policy_params`` (differentiable in both arguments)."""
        g = jax.grad(self.inner_objective)(policy_params, traj, proc)
        if self.estimator == "first_order":
            g = jax.lax.stop_gradient(g)
        if self.adapt_params is not None:
            g = jax.tree.map(lambda d, m: d if m else jnp.zeros_like(d), g, self._adapt_mask())
        lr = meta_params["inner_lr"] if self.learn_inner_lr else self.inner_lr
        if self.learn_inner_lr:
            return jax.tree.map(lambda p, a, d: p + a * d, policy_params, lr, g)
        return jax.tree.map(lambda p, d: p + lr * d, policy_params, g)

    def adapted_params(self, meta_params, pre: tuple) -> list:
        """``[theta_0, ..., theta_K]`` of one task from stored pre-adaptation samples ``((traj, proc), ...)``."""
        p = meta_params["policy"]
        out = [p]
        for traj, proc in pre:
            p = self.inner_update(meta_params, p, traj, proc)
            out.append(p)
        return out

    def sample_task(self, meta_params, task, key, num_steps: int | None = None, num_episodes: int | None = None):
        """Rollouts of one task before and after each inner step, without gradient.

        Returns ``(pre, post)``: ``pre`` a tuple of ``(traj, proc)`` per inner step, ``post`` the ``(traj, proc)``
        of the rollouts with the adapted parameters.
        """
        num_steps = self.num_inner_steps if num_steps is None else num_steps
        num_episodes = self.num_episodes if num_episodes is None else num_episodes
        meta_params = jax.lax.stop_gradient(meta_params)
        keys = jax.random.split(key, num_steps + 1)
        p = meta_params["policy"]
        pre = []
        for k in range(num_steps + 1):
            traj = rollout(self.env, self.policy, p, task, keys[k], num_episodes=num_episodes)
            data = (traj, self.process(traj))
            if k == num_steps:
                return tuple(pre), data
            pre.append(data)
            p = self.inner_update(meta_params, p, *data)

    # ------------------------------------------------------------------ outer objectives (per task)
    def _task_terms(self, meta_params, data, old_post_params, old_pre_params):
        """``(surrogate, kl_post, inner_kls [K])`` of one task as functions of ``meta_params``."""
        pre, (traj, proc) = data
        ps = self.adapted_params(meta_params, pre)
        lp = self.policy.log_prob(ps[-1], traj.obs, traj.actions)
        ratio = jnp.exp(lp - traj.log_probs)
        n = jnp.maximum(jnp.sum(traj.mask), 1.0)
        if self.outer == "trpo":
            surr = jnp.sum(ratio * proc.advantages * traj.mask) / n
        else:
            clipped = jnp.clip(ratio, 1 - self.clip_eps, 1 + self.clip_eps)
            surr = jnp.sum(jnp.minimum(ratio * proc.advantages, clipped * proc.advantages) * traj.mask) / n
        kl = jnp.sum(self.policy.kl(old_post_params, ps[-1], traj.obs) * traj.mask) / n
        inner_kls = [jnp.sum(self.policy.kl(op, p, t.obs) * t.mask) / jnp.maximum(jnp.sum(t.mask), 1.0)
                     for op, p, (t, _) in zip(old_pre_params, ps[:-1], pre)]
        inner_kls = jnp.stack(inner_kls) if inner_kls else jnp.zeros((0,), surr.dtype)
        return surr, kl, inner_kls

    def outer_terms(self, meta_params, data, old):
        """Task means of ``(surrogate, kl, inner_kls)`` over the meta-batch (``data``/``old`` with a task axis)."""
        f = jax.vmap(self._task_terms, in_axes=(None, 0, 0, 0))
        surr, kl, ikl = f(meta_params, data, old[1], old[0])
        return jnp.mean(surr), jnp.mean(kl), jnp.mean(ikl, axis=0)

    def outer_objective(self, meta_params, data, old, inner_kl_coef=None):
        """The sampled outer surrogate (higher is better) whose gradient is the meta-gradient.

        ``data``: the per-task samples of :meth:`sample_task` (task axis first); ``old``: the adapted parameters
        at sampling time ``(pre_params [K], post_params)`` per task. With ``inner_kl_coef`` (ProMP), the KL
        penalty ``sum_k coef_k KL_k`` is subtracted.
        """
        surr, _, ikl = self.outer_terms(meta_params, data, old)
        if inner_kl_coef is not None:
            surr = surr - jnp.sum(inner_kl_coef * ikl)
        return surr

    # ------------------------------------------------------------------ the meta-step
    def sample(self, meta_params, key, *, mesh: jax.sharding.Mesh | None = None,
               task_axis: str | tuple[str, ...] | None = None):
        """Samples a meta-batch: ``(data, old, tasks)`` for :meth:`outer_objective` (task axis first).

        The tasks and per-task keys come from :func:`jmeta.rl.draw_tasks`; ``data`` is :meth:`sample_task`
        over them. With a ``mesh``, the task axis of the tasks, keys, ``data`` and ``old`` is split over the
        mesh's ``task_axis`` (default: all axes), so each device rolls out and adapts its share of the tasks.
        """
        axes = check_task_mesh(mesh, task_axis, self.num_tasks, "num_tasks")
        tasks, keys = shard_tasks(draw_tasks(self.env, key, self.num_tasks), mesh, axes)
        data = jax.vmap(self.sample_task, in_axes=(None, 0, 0))(meta_params, tasks, keys)
        data = shard_tasks(data, mesh, axes)
        sg = jax.lax.stop_gradient(meta_params)
        ps = jax.vmap(self.adapted_params, in_axes=(None, 0))(sg, data[0])
        old = shard_tasks((tuple(ps[:-1]), ps[-1]), mesh, axes)
        return data, old, tasks

    def meta_step(self, state: MetaRLState, key: jax.Array, *, mesh: jax.sharding.Mesh | None = None,
                  task_axis: str | tuple[str, ...] | None = None):
        """One meta-iteration (sampling, inner steps, post-adaptation rollouts, outer update); pure, jit it.

        Returns ``(new_state, metrics)``; metrics are device scalars: ``return_pre``/``return_post`` (mean
        undiscounted episode return before / after the inner steps), ``surrogate_gain``, ``kl`` (outer KL of the
        adapted policies), ``inner_kl`` (per inner step), and TRPO's ``line_search_steps``/``accepted`` or PPO's
        ``inner_kl_coef``. With a ``mesh`` the tasks are split over its devices (:meth:`sample`) and the task
        means of the outer update are reduced across them (:func:`jmeta.rl.make_rl_meta_step`).
        """
        data, old, _ = self.sample(state.params, key, mesh=mesh, task_axis=task_axis)
        return self.outer_update(state, data, old)

    def outer_update(self, state: MetaRLState, data, old):
        """The outer update of a sampled meta-batch: what :meth:`meta_step` does after :meth:`sample`.

        Args:
          state: the training state the samples were drawn with.
          data, old: :meth:`sample`'s per-task samples and adapted parameters at sampling time (task axis
            first).

        Returns:
          ``(new_state, metrics)`` as :meth:`meta_step`.
        """
        pre, (post_traj, _) = data
        metrics = {"return_pre": jnp.mean(episode_returns(pre[0][0])),
                   "return_post": jnp.mean(episode_returns(post_traj))}
        if self.outer == "trpo":
            params, m = self._trpo(state.params, data, old)
            new = state._replace(params=params, step=state.step + 1)
        else:
            params, opt_state, coef, m = self._ppo(state, data, old)
            new = state._replace(params=params, opt_state=opt_state, inner_kl_coef=coef, step=state.step + 1)
        metrics.update(m)
        return new, metrics

    def meta_step_from_samples(self, state: MetaRLState, data):
        """One meta-iteration on samples drawn elsewhere (pure, jit it): the rest of :meth:`meta_step` when the
        rollouts run outside the compiled step (a host-side environment, :class:`jmeta.rl.host.HostMAMLRL`).

        Args:
          state: the training state the samples were drawn with.
          data: :meth:`sample`'s format, task axis first: ``(pre, (post_traj, post_proc))`` with ``pre`` one
            ``(traj_k, proc_k)`` per inner step, ``traj_k`` sampled with ``theta_k`` (``theta_0`` the
            meta-parameters, ``theta_{k+1}`` :meth:`inner_update` of ``theta_k`` on ``(traj_k, proc_k)``, as
            :meth:`sample_task` does), ``proc = jax.vmap(self.process)(traj)``.

        Returns:
          ``(new_state, metrics)`` as :meth:`meta_step` (the adapted parameters at sampling time are recomputed
          from ``data``).
        """
        pre = data[0]
        if len(pre) != self.num_inner_steps:
            raise ValueError(f"data must hold one (traj, proc) pair per inner step ({self.num_inner_steps}) "
                             f"before the post-adaptation pair; got {len(pre)}")
        ps = jax.vmap(self.adapted_params, in_axes=(None, 0))(jax.lax.stop_gradient(state.params), pre)
        return self.outer_update(state, data, (tuple(ps[:-1]), ps[-1]))

    def _trpo(self, params, data, old):
        flat0, unravel = ravel_pytree(params)

        def terms(f):
            return self.outer_terms(unravel(f), data, old)

        surr_fn = lambda f: terms(f)[0]  # noqa: E731
        kl_fn = lambda f: terms(f)[1]  # noqa: E731
        surr0, g = jax.value_and_grad(surr_fn)(flat0)
        kl_grad = jax.grad(kl_fn)

        def fvp(v):
            return jax.jvp(kl_grad, (flat0,), (v,))[1] + self.cg_damping * v

        x = conjugate_gradient(fvp, g, iters=self.cg_iters)
        xfx = jnp.vdot(x, fvp(x))
        full = jnp.sqrt(2.0 * self.max_kl / (xfx + 1e-8)) * x

        def cond(c):
            i, accepted, _, _, _ = c
            return (i < self.max_backtracks) & ~accepted

        def body(c):
            i, _, _, _, _ = c
            f = flat0 + self.backtrack_ratio ** i * full
            s, kl, _ = terms(f)
            ok = jnp.isfinite(s) & jnp.isfinite(kl) & (s > surr0) & (kl <= self.max_kl)
            return i + 1, ok, f, s, kl

        init = (0, jnp.array(False), flat0, surr0, jnp.zeros_like(surr0))
        n, accepted, f, s, kl = jax.lax.while_loop(cond, body, init)
        f = jnp.where(accepted, f, flat0)
        metrics = {"surrogate_gain": jnp.where(accepted, s - surr0, 0.0), "kl": jnp.where(accepted, kl, 0.0),
                   "line_search_steps": n, "accepted": accepted, "grad_norm": jnp.linalg.norm(g)}
        return unravel(f), metrics

    def _ppo(self, state, data, old):
        opt = self._optimizer()
        coef = state.inner_kl_coef if self.inner_kl_penalty is not None else None
        obj = lambda p: self.outer_objective(p, data, old, coef)  # noqa: E731
        surr0 = obj(state.params)

        def epoch(c, _):
            p, o = c
            g = jax.grad(obj)(p)
            updates, o = opt.update(jax.tree.map(jnp.negative, g), o, p)
            return (optax.apply_updates(p, updates), o), None

        (p, o), _ = jax.lax.scan(epoch, (state.params, state.opt_state), None, length=self.ppo_epochs)
        surr, kl, ikl = self.outer_terms(p, data, old)
        new_coef = state.inner_kl_coef
        if self.inner_kl_penalty is not None:
            t = self.target_inner_kl
            new_coef = jnp.where(ikl < t / 1.5, new_coef / 2, jnp.where(ikl > t * 1.5, new_coef * 2, new_coef))
        metrics = {"surrogate_gain": obj(p) - surr0, "kl": kl, "inner_kl": ikl, "inner_kl_coef": new_coef}
        return p, o, new_coef.astype(state.inner_kl_coef.dtype), metrics

    # ------------------------------------------------------------------ evaluation
    def check_tasks(self, tasks) -> int:
        """The number of tasks in ``tasks``, or a ``ValueError`` if its structure/shapes are not the env's."""
        return check_tasks(self.env, tasks)

    def evaluate_returns(self, meta_params, tasks, key, *, num_steps: int | None = None,
                         num_episodes: int | None = None):
        """Mean undiscounted return per task after ``0..num_steps`` inner steps: ``[tasks, num_steps + 1]``."""
        num_steps = self.num_inner_steps if num_steps is None else validate.integer("num_steps", num_steps, min=0)
        num_episodes = self.num_episodes if num_episodes is None else validate.integer(
            "num_episodes", num_episodes, min=1)
        self.check_tasks(tasks)

        def one(task, k):
            pre, (post, _) = self.sample_task(meta_params, task, k, num_steps, num_episodes)
            rets = [jnp.mean(episode_returns(t)) for t, _ in pre] + [jnp.mean(episode_returns(post))]
            return jnp.stack(rets)

        keys = jax.random.split(key, task_axis_size(tasks))
        return jax.vmap(one)(tasks, keys)

    @functools.lru_cache(maxsize=8)  # noqa: B019 (instances hash by identity; a few compiled programs each)
    def _evaluate_fn(self, num_steps, num_episodes):
        return jax.jit(lambda p, t, k: self.evaluate_returns(p, t, k, num_steps=num_steps,
                                                             num_episodes=num_episodes))

    def evaluate(self, meta_params, key, *, num_tasks: int = 40, num_steps: int | None = None,
                 num_episodes: int | None = None, tasks=None) -> dict:
        """Average return over held-out tasks before adaptation and after each inner step (host-side summary).

        Args:
          meta_params: ``state.params``.
          key: draws the tasks (unless given) and the rollouts.
          num_tasks: tasks to draw when ``tasks`` is ``None``.
          num_steps: inner steps (default ``num_inner_steps``; may be more than trained with).
          num_episodes: episodes per task and step (default ``num_episodes``).
          tasks: explicit held-out tasks (a task pytree with a leading axis).

        Returns:
          ``{"num_tasks", "num_steps", "return": {"mean", "ci95", "median", "nonfinite"} (lists over steps),
          "summary": {"return after k step(s)": {"mean", "ci95", "median", "nonfinite"}}}``.
        """
        from jmeta.train.evaluation import task_statistics

        k_tasks, k_roll = jax.random.split(key)
        if tasks is None:
            num_tasks = validate.integer("num_tasks", num_tasks, min=1)
            tasks = self.env.sample_tasks(k_tasks, num_tasks)
        num_steps = self.num_inner_steps if num_steps is None else validate.integer("num_steps", num_steps, min=0)
        n = self.check_tasks(tasks)
        rets = np.asarray(self._evaluate_fn(num_steps, num_episodes)(meta_params, tasks, k_roll))
        stats = task_statistics(rets, higher_is_better=True)
        summary = {f"return after {k} step(s)": {m: stats[m][k] for m in ("mean", "ci95", "median", "nonfinite")}
                   for k in range(num_steps + 1)}
        return {"num_tasks": n, "num_steps": num_steps, "return": stats, "summary": summary}


@static_dataclass
class ProMP(MAMLRL):
    """ProMP (Rothfuss et al. 2019): :class:`MAMLRL` with the LVC inner estimator and the PPO-clip outer
    objective with an adaptive KL penalty on the inner step.

    Defaults from ProMP's point-mass/MuJoCo configs: inner lr 0.1, 5 PPO epochs, clip 0.3, Adam 1e-3, initial
    penalty 5e-4, target inner KL 0.01; every other :class:`MAMLRL` field can be set too.
    """

    estimator: str = "lvc"
    outer: str = "ppo"
    clip_eps: float = 0.3
    inner_kl_penalty: float | None = 5e-4


def promp(env, policy, **kwargs) -> ProMP:
    """:class:`ProMP` ``(env, policy, **kwargs)`` (the former factory; ``kwargs`` override any field)."""
    return ProMP(env, policy, **kwargs)

