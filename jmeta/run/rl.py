"""Meta-RL in the run layer: the wiring from a config to an environment, a policy and a meta-RL algorithm, the
meta-step ``jmeta train`` drives, and the evaluation ``eval.json`` holds.

A meta-RL config names an environment (``task.family``: ``nav2d``, ``nav2d-corner``, ``bandit``,
``tabular-mdp``, ``cheetah-dir``, ``cheetah-vel``, ``ant-dir``, ``metaworld-ml1``), a policy (``model.name``:
``gaussian-mlp`` for MAML-RL/ProMP; for RL^2 ``gru`` on discrete environments, ``gaussian-gru`` on continuous
ones) and an algorithm (``algorithm.name``: ``maml-rl``,
``promp``, ``rl2``); each section holds its constructor's options (:mod:`jmeta.run.registry`). The wiring
supplies the sizes (the policy's observation/action sizes come from the environment) and the tasks per
meta-step (``train.meta_batch_size``: MAML-RL's ``num_tasks``, RL^2's ``meta_batch_size``). The outer step's
own optimizer settings are the algorithm's (``outer_lr``, ``max_kl``; RL^2's ``learning_rate``), so
``train.meta_optimizer``/``train.meta_lr`` and the supervised ``eval`` keys ``shots``, ``split``, ``n_way`` and
``k_query`` are not used by meta-RL runs.

The state ``jmeta train`` checkpoints is the algorithm's whole training state: MAML-RL/ProMP's
:class:`~jmeta.rl.MetaRLState` (parameters, outer optimizer state, ProMP's inner KL coefficients, step);
RL^2's :class:`RL2RunState` (the step and :class:`~jmeta.rl.RL2State`). Each meta-step's key is
``fold_in(k_train, step)`` (RL^2's state key is replaced by it), so a resumed run continues bit-identically.

``eval.json`` (:func:`evaluate`), over ``eval.num_tasks`` held-out tasks drawn with the run's evaluation key:

* MAML-RL / ProMP: the mean undiscounted episode return per task before adaptation and after each of
  ``eval.steps`` inner steps (``algorithm.num_episodes`` episodes per task and step); summary keys
  ``"return after k step(s)"`` with ``mean``, ``ci95`` (1.96 standard errors over tasks), ``median`` and
  ``nonfinite``, as the supervised ``"K=5 loss after k step(s)"``.
* RL^2: the return of each episode of a trial (no gradient step: the GRU adapts within the trial); summary
  keys ``"return in episode i"`` (``i = 1 .. num_episodes``) with the same four statistics, and
  ``"trial return"`` (the sum over the trial's episodes).

MetaWorld ML1 (``metaworld-ml1``, MAML-RL/ProMP only) runs its episodes on the host
(:mod:`jmeta.rl.envs.metaworld`; the ``metaworld`` package, in its own environment): each meta-step draws
``train.meta_batch_size`` of ML1's 50 train goals and the rollouts' seeds from ``fold_in(k_train, step)``,
steps the episodes on the host (:class:`jmeta.rl.host.HostMAMLRL`, the policy jitted) and then runs the rest of
the meta-step compiled (:meth:`jmeta.rl.MAMLRL.meta_step_from_samples`), one step per compiled call
(:meth:`RLExperiment.host_steps`), through the same loop, checkpoints and NaN policy. Its ``eval.json`` scores
the first ``eval.num_tasks`` of ML1's 50 held-out test goals (``algorithm.num_episodes`` episodes per goal and
step, sampled actions) with MetaWorld's success rate: summary keys ``"success rate after k step(s)"`` (per goal,
the fraction of its episodes with ``info["success"]`` at any step) and ``"return after k step(s)"``. Nothing here
imports ``metaworld`` or ``mujoco`` unless such a family is built; without the package, building it is a
:class:`ConfigError` naming it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.run.registry import ConfigError

PyTree = Any

from jmeta.run.registry import HOST_FAMILIES, RL_ALGORITHMS, RL_FAMILIES, check_rl, is_rl  # noqa: F401 (re-exported)


# -- constructors the registry names ------------------------------------------------------------------------

def rl2(env, policy, *, num_episodes: int = 10, meta_batch_size: int = 64, discount: float = 0.99,
        gae_lambda: float = 0.95, clip_eps: float = 0.2, value_coef: float = 0.5, entropy_coef: float = 0.01,
        epochs: int = 4, num_minibatches: int = 4, learning_rate: float = 3e-3, max_grad_norm: float | None = 1.0,
        normalize_advantages: bool = True):
    """:class:`~jmeta.rl.RL2` with its PPO options flat (``algorithm.epochs`` is ``ppo.epochs``, ...)."""
    from jmeta.rl.ppo import PPOConfig
    from jmeta.rl.rl2 import RL2

    ppo = PPOConfig(clip_eps=clip_eps, value_coef=value_coef, entropy_coef=entropy_coef, epochs=epochs,
                    num_minibatches=num_minibatches, learning_rate=learning_rate, max_grad_norm=max_grad_norm,
                    normalize_advantages=normalize_advantages)
    return RL2(env, policy, num_episodes=num_episodes, meta_batch_size=meta_batch_size, discount=discount,
               gae_lambda=gae_lambda, ppo=ppo)


def env_sizes(env) -> dict:
    """What the policy constructors need of an environment (the wiring of ``model``)."""
    return {"obs_size": int(env.obs_size), "action_size": int(env.action_size)}


# -- the experiment --------------------------------------------------------------------------------------------

class RL2RunState(NamedTuple):
    """The training state of an RL^2 run: the meta-step counter and :class:`~jmeta.rl.RL2State`."""

    step: jax.Array
    rl2: PyTree


@dataclasses.dataclass
class RLExperiment:
    """What a meta-RL run is made of (see :func:`build`).

    Attributes:
      env: the environment.
      policy: the policy (its sizes are the environment's).
      algorithm: a :class:`~jmeta.rl.MAMLRL` (``maml-rl``, ``promp``) or :class:`~jmeta.rl.RL2`.
      kind: ``"maml"`` or ``"rl2"``.
      host: for a host-side family (MetaWorld), the :class:`~jmeta.rl.host.HostMAMLRL` that steps its
        episodes (``env`` is then the host environment, ``algorithm.env`` its static sizes); else ``None``.
    """

    env: Any
    policy: Any
    algorithm: Any
    kind: str
    task_kind: str = "rl"
    host: Any = None

    def init_state(self, key) -> PyTree:
        """The initial training state (RL^2's key: ``key``; MAML-RL's parameters are the policy's)."""
        if self.kind == "rl2":
            return RL2RunState(jnp.zeros((), jnp.int32), self.algorithm.init(key))
        return self.algorithm.init()

    def step_fn(self, state, key, data=None):
        """One meta-step ``(state, key, data) -> (state, metrics)`` (not jitted; the loop scans it).

        The step's key is ``fold_in(key, state.step)``; a host-side family's ``data`` is :meth:`host_batch`'s
        (its episodes, drawn with that key on the host). ``metrics``: the algorithm's, plus ``objective`` (the
        mean return after adaptation: MAML-RL's ``return_post``, RL^2's last episode) and ``update_norm`` (the
        global norm of the parameter change), which the NaN guard checks.
        """
        k = jax.random.fold_in(key, state.step)
        if self.kind == "rl2":
            inner, m = self.algorithm.update(state.rl2._replace(key=k))
            new = RL2RunState(state.step + 1, inner)
            ep = m.pop("episode_return")
            m = {**m, "return_first_episode": ep[0], "return_last_episode": ep[-1], "objective": ep[-1]}
            old_p, new_p = state.rl2.params, inner.params
        else:
            if self.host is not None:  # the episodes were stepped on the host: data is host_batch's
                new, m = self.host.step_from_batch(state, data)
                m.update({s: data[s] for s in ("success_pre", "success_post") if s in data})
            else:
                new, m = self.algorithm.meta_step(state, k)
            m = {**m, "objective": m["return_post"]}
            m.pop("inner_kl_coef", None)  # an array per inner step: the records hold scalars
            if "inner_kl" in m and jnp.ndim(m["inner_kl"]):
                ikl = m.pop("inner_kl")
                m.update({f"inner_kl_{i + 1}": ikl[i] for i in range(ikl.shape[0])})
            old_p, new_p = state.params, new.params
        m["update_norm"] = jnp.sqrt(sum(jnp.sum(jnp.square(a - b)) for a, b in
                                        zip(jax.tree.leaves(new_p), jax.tree.leaves(old_p))))
        m = {k2: jnp.asarray(v, jnp.float32) for k2, v in m.items()}
        return new, m

    def host_batch(self, state, key) -> dict:
        """A host-side family's data of the meta-step at ``state.step``: ``train.meta_batch_size`` train goals and
        the rollouts' keys from ``fold_in(key, state.step)``, the episodes stepped on the host."""
        k_tasks, k_roll = jax.random.split(jax.random.fold_in(key, state.step))
        pool = self.env.train_tasks
        idx = np.asarray(jax.random.choice(k_tasks, len(pool), (self.algorithm.num_tasks,), replace=False))
        return self.host.batch(state.params, [pool[i] for i in idx], k_roll)

    def host_steps(self, guarded, state, bad, skipped, key, n: int):
        """``n`` meta-steps of a host-side family, one compiled ``guarded`` call each (``guarded``:
        :func:`jmeta.train.loop.guarded_steps` of :meth:`step_fn`): ``(state, bad, skipped, metrics)``, the
        metrics averaged over the steps run, as one call of ``guarded`` with ``n`` steps returns them. Stops
        early at a non-finite step (``bad >= 0``; the loop then raises)."""
        records = []
        for _ in range(n):
            batch = self.host_batch(state, key)
            state, bad, skipped, m = guarded(state, bad, skipped, key, batch, 1)
            records.append(m)
            if int(bad) >= 0:
                break
        return state, bad, skipped, jax.tree.map(lambda *v: jnp.mean(jnp.stack(v), axis=0), *records)

    def params(self, state) -> PyTree:
        """The policy's (meta-)parameters in ``state``."""
        return state.rl2.params if self.kind == "rl2" else state.params


def build(cfg) -> RLExperiment:
    """The :class:`RLExperiment` of a meta-RL config; a value a constructor refuses is a :class:`ConfigError`.

    Raises:
      ConfigError: a policy that is not the algorithm's kind, an environment of the wrong kind (continuous vs
        discrete), sizes that do not match, a bad option value, or a host-side family (MetaWorld).
    """
    from jmeta.rl.rl2 import rl2_input_size

    t, m, a = cfg.task, cfg.model, cfg.algorithm
    check_rl(cfg)
    if t.family in HOST_FAMILIES:
        return _build_host(cfg)
    env = t.entry.build(t.options)
    key = jax.random.fold_in(jax.random.key(cfg.train.seed), 1)
    if m.name in ("gru", "gaussian-gru"):
        want = "gru" if getattr(env, "discrete", None) else "gaussian-gru"
        if m.name != want:
            kind = "discrete" if want == "gru" else "continuous"
            raise ConfigError(f"task.family={t.family!r} has {kind} actions: RL^2 on it needs model.name={want!r}, "
                              f"got {m.name!r}")
        size = {"gru": "num_actions", "gaussian-gru": "action_size"}[m.name]
        policy = m.entry.build(m.options, input_size=rl2_input_size(env), **{size: int(env.action_size)}, key=key)
        algo = a.entry.build(a.options, env=env, policy=policy, meta_batch_size=cfg.train.meta_batch_size)
        return RLExperiment(env, policy, algo, "rl2")
    policy = m.entry.build(m.options, **env_sizes(env), key=key)
    algo = a.entry.build(a.options, env=env, policy=policy, num_tasks=cfg.train.meta_batch_size)
    return RLExperiment(env, policy, algo, "maml")


def _build_host(cfg) -> RLExperiment:
    """The :class:`RLExperiment` of a host-side family (MetaWorld ML1): MAML-RL/ProMP on the host environment's
    sizes, driven by :class:`jmeta.rl.host.HostMAMLRL`."""
    from jmeta.rl.host import HostEnvShapes, HostMAMLRL

    t, m, a = cfg.task, cfg.model, cfg.algorithm
    if a.name == "rl2":
        raise ConfigError(f"task.family={t.family!r} runs its episodes on the host: algorithm.name must be "
                          f"'maml-rl' or 'promp' there, got 'rl2'")
    if cfg.eval.num_tasks > 50:
        raise ConfigError(f"eval.num_tasks must be <= 50 for task.family={t.family!r} (ML1 has 50 held-out test "
                          f"goals), got {cfg.eval.num_tasks}")
    if cfg.train.meta_batch_size > 50:
        raise ConfigError(f"train.meta_batch_size must be <= 50 for task.family={t.family!r} (ML1 has 50 train "
                          f"goals, drawn without replacement), got {cfg.train.meta_batch_size}")
    try:
        env = t.entry.build(t.options)
    except ImportError as e:
        raise ConfigError(f"task.family={t.family!r} needs the metaworld package: {e}") from None
    key = jax.random.fold_in(jax.random.key(cfg.train.seed), 1)
    shapes = HostEnvShapes(env)
    policy = m.entry.build(m.options, **env_sizes(shapes), key=key)
    algo = a.entry.build(a.options, env=shapes, policy=policy, num_tasks=cfg.train.meta_batch_size)
    return RLExperiment(env, policy, algo, "maml", host=HostMAMLRL(algo, env))


# -- evaluation --------------------------------------------------------------------------------------------------

def evaluate(cfg, exp: RLExperiment, state, key, out=None, *, filename: str = "eval.json") -> dict:
    """The held-out evaluation of a meta-RL run (the module docstring's keys), written to ``out/filename``."""
    import pathlib

    from jmeta.run.logs import atomic_write_json
    from jmeta.train.determinism import deterministic_ops_enabled
    from jmeta.train.evaluation import task_statistics

    t0 = time.perf_counter()
    params = exp.params(state)
    n = cfg.eval.num_tasks
    if exp.kind == "rl2":
        r = exp.algorithm.evaluate(params, key, n, batch_size=cfg.eval.batch_size)
        stats = r["per_episode"]
        summary = {f"return in episode {i + 1}": {s: stats[s][i] for s in ("mean", "ci95", "median", "nonfinite")}
                   for i in range(exp.algorithm.num_episodes)}
        trial = r["returns"].sum(axis=1)
        tstats = task_statistics(trial, higher_is_better=True)
        summary["trial return"] = {s: tstats[s][0] for s in ("mean", "ci95", "median", "nonfinite")}
        results = {"return": stats, "num_episodes": exp.algorithm.num_episodes}
    elif exp.host is not None:  # MetaWorld: the first n held-out test goals, MetaWorld's success rate
        r = exp.host.evaluate(params, exp.env.test_tasks[:n], key, num_steps=cfg.eval.steps)
        summary, results = {}, {"num_steps": cfg.eval.steps, "num_episodes": exp.algorithm.num_episodes,
                                "tasks": "ML1 test goals", "horizon": int(exp.env.horizon)}
        for name, arr in (("success rate", r["success"]), ("return", r["return"])):
            stats = task_statistics(arr, higher_is_better=True)
            results[name] = stats
            summary.update({f"{name} after {k} step(s)": {s: stats[s][k] for s in ("mean", "ci95", "median",
                                                                                    "nonfinite")}
                            for k in range(cfg.eval.steps + 1)})
    else:
        r = exp.algorithm.evaluate(params, key, num_tasks=n, num_steps=cfg.eval.steps)
        summary = r["summary"]
        results = {"return": r["return"], "num_steps": r["num_steps"],
                   "num_episodes": exp.algorithm.num_episodes}
    results["wall_time_s"] = round(time.perf_counter() - t0, 2)
    ev = {"name": cfg.name, "step": int(state.step), "num_tasks": n, "family": cfg.task.family,
          "algorithm": cfg.algorithm.name, "device": jax.devices()[0].device_kind, "platform": jax.default_backend(),
          "xla_gpu_deterministic_ops": deterministic_ops_enabled(), "summary": summary, "results": results}
    if out is not None:
        atomic_write_json(pathlib.Path(out) / filename, ev)
    return ev


def nav2d_trajectories(cfg, exp: RLExperiment, state, key, num_tasks: int = 4) -> list[dict]:
    """Positions of one adapted episode (after the ``num_inner_steps`` inner steps it was trained with) and of one
    pre-adaptation episode for ``num_tasks`` held-out goals: ``[{"goal": [2], "pre": [T, 2], "post": [T, 2],
    "steps": k}]`` (sampled actions, as in training; an episode that reaches its goal stops there)."""
    algo = exp.algorithm
    steps = algo.num_inner_steps
    k_tasks, k_roll = jax.random.split(jax.random.fold_in(key, 10_000))
    tasks = exp.env.sample_tasks(k_tasks, num_tasks)

    @jax.jit
    def paths(params, tasks, keys):
        def one(task, k):
            pre, (post, _) = algo.sample_task(params, task, k, steps, algo.num_episodes)
            return pre[0][0].obs[0], post.obs[0], pre[0][0].mask[0], post.mask[0]

        return jax.vmap(one)(tasks, keys)

    pre, post, pre_mask, post_mask = jax.device_get(
        paths(exp.params(state), tasks, jax.random.split(k_roll, num_tasks)))
    goals = np.asarray(tasks["goal"])
    out = []
    for i in range(num_tasks):
        out.append({"goal": goals[i], "pre": np.asarray(pre[i])[np.asarray(pre_mask[i]) > 0],
                    "post": np.asarray(post[i])[np.asarray(post_mask[i]) > 0], "steps": steps})
    return out


def plots(cfg, exp: RLExperiment, state, key, out) -> list:
    """The meta-RL PNGs that need the trained policy: for nav2d, adapted trajectories
    (``nav2d_trajectories.png``); :func:`jmeta.run.plots.plot_run` draws ``rl_returns.png`` from the records.
    Needs matplotlib."""
    import pathlib

    from jmeta.run.plots import nav2d_paths

    out = pathlib.Path(out)
    written = []
    if cfg.task.family in ("nav2d", "nav2d-corner") and exp.kind == "maml":
        written.append(nav2d_paths(nav2d_trajectories(cfg, exp, state, key), out / "nav2d_trajectories.png",
                                   title=f"{cfg.name}: held-out goals"))
    return written


def step_postfix(record: dict) -> str:
    """The progress bar's text for a meta-RL record."""
    if "return_post" in record:
        return f"return {record['return_pre']:.2f} -> {record['return_post']:.2f}"
    if "return_last_episode" in record:
        return f"return ep1 {record['return_first_episode']:.3f} last {record['return_last_episode']:.3f}"
    return ""
