"""Meta-RL throughput: nav2d rollouts (env-steps/s) and MAML-TRPO meta-iterations, against plain JAX and PyTorch.

Measures, in interleaved rounds in one process (so that load on a shared machine hits all alike):

* ``rollouts``: environment steps per second of :func:`jmeta.rl.rollout_tasks` on :class:`jmeta.rl.envs.Nav2D`
  (horizon 100) with MAML-RL's Gaussian MLP policy (2-100-100-2 ReLU), of the plain-JAX rollouts below and
  (``--torch``) of the PyTorch batched-tensor rollouts, at several batch sizes (tasks x episodes), one compiled
  program per size; compile time apart; median of repeated samples after warm-up (``block_until_ready``,
  ``torch.cuda.synchronize``).
* ``meta_step``: time per MAML-RL meta-iteration (sampling ``tasks x 20`` episodes, one inner policy-gradient
  step, post-adaptation rollouts, TRPO outer step with conjugate gradient and line search) at several
  meta-batch sizes, for jmeta's :class:`jmeta.rl.MAMLRL` (``estimator="reinforce"``, MAML-RL's original
  surrogate), for ``plain``: the same algorithm written from scratch below in plain JAX (no jmeta, no optax,
  no flax), and (``--torch``) for ``torch``: the same algorithm in PyTorch, laid out as the public PyTorch
  MAML-RL code (tristandeleu/pytorch-maml-rl) lays it out (:class:`TorchMAMLRL`; CUDA if available).
* ``check`` (``--check``): the PyTorch code against the plain-JAX reference with the same float64 weights,
  goals and noise: episodes, adapted parameters, surrogate gradient and its Fisher-vector product agree to
  1e-10 relative, the CG direction and the TRPO step (ill-conditioned) to 1e-3 (``CHECK_RTOL``).

torch is imported only for ``--torch`` / ``--check``; jmeta does not depend on it.

Run:
    python benchmarks/rl_throughput.py --out results/rl_throughput.json
    python benchmarks/rl_throughput.py --quick   # small sizes, few repeats (smoke test)
    python benchmarks/rl_throughput.py --torch --check --torch-threads 1 --out results/cpu/rl_throughput.json
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _common import device_info, median_iqr, write_json  # noqa: E402

from jmeta.rl import MAMLRL, envs, gaussian_mlp_policy, rollout_tasks  # noqa: E402

HORIZON, EPISODES, HIDDEN, INNER_LR, GAMMA, MAX_KL = 100, 20, (100, 100), 0.1, 0.99, 0.01
# --quick (a smoke test, not a measurement) compiles with XLA's backend optimisation off, as
# benchmarks/locomotion_reduced.py --quick does: the meta-step compiles in about half the time (measured on the
# 2-core CPU: 9.0 -> 5.0 s for 1 task x 20 episodes); the real runs use XLA's defaults.
# XLA:CPU's elemental emitters rather than its fusion emitters: a third less compile time (measured on an MJX rollout)
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
                 "xla_cpu_use_fusion_emitters": False}


# ---------------------------------------------------------------- the plain-JAX reference MAML-TRPO on nav2d
def plain_init(key):
    sizes = [(2, HIDDEN[0]), (HIDDEN[0], HIDDEN[1]), (HIDDEN[1], 2)]
    ks = jax.random.split(key, len(sizes))
    layers = [(jax.random.normal(k, (i, o)) / jnp.sqrt(i), jnp.zeros((o,))) for k, (i, o) in zip(ks, sizes)]
    return {"layers": layers, "log_std": jnp.zeros((2,))}


def plain_mean(p, x):
    for i, (w, b) in enumerate(p["layers"]):
        x = x @ w + b
        if i < len(p["layers"]) - 1:
            x = jax.nn.relu(x)
    return x


def plain_logp(p, obs, act):
    z = (act - plain_mean(p, obs)) * jnp.exp(-p["log_std"])
    return jnp.sum(-0.5 * z * z - p["log_std"] - 0.5 * jnp.log(2 * jnp.pi), -1)


def plain_noise(key, episodes=EPISODES, horizon=HORIZON):
    """The exploration noise of one task's episodes, ``[episodes, horizon, 2]``: one standard normal per step,
    each from its own key (``split(split(key, episodes)[e], horizon)[t]``)."""
    def episode(k):
        return jax.vmap(lambda kt: jax.random.normal(kt, (2,)))(jax.random.split(k, horizon))
    return jax.vmap(episode)(jax.random.split(key, episodes))


def plain_rollout_noise(p, goal, eps):
    """Episodes of one goal driven by the noise ``eps`` ``[episodes, horizon, 2]``: (obs, act, rew), each
    ``[episodes, horizon, ...]``; done-masking omitted (the goal tolerance of 0.01 is essentially never met; see
    the ``mask`` of jmeta's rollouts)."""
    def episode(e):
        def body(pos, n):
            a = plain_mean(p, pos) + jnp.exp(p["log_std"]) * n
            new = pos + jnp.clip(0.1 * a, -0.1, 0.1)
            return new, (pos, a, -jnp.linalg.norm(new - goal))
        _, (o, a, r) = jax.lax.scan(body, jnp.zeros(2, eps.dtype), e)
        return o, a, r
    return jax.vmap(episode)(eps)


def plain_rollout(p, goal, key):
    """[EPISODES, HORIZON] episodes of one goal: (obs, act, rew)."""
    return plain_rollout_noise(p, goal, plain_noise(key))


def plain_advantages(obs, rew):
    def disc(r):
        return jax.lax.scan(lambda g, x: (x + GAMMA * g, x + GAMMA * g), 0.0, r, reverse=True)[1]
    ret = jax.vmap(disc)(rew)
    o = jnp.clip(obs, -10, 10)
    t = jnp.broadcast_to((jnp.arange(obs.shape[1], dtype=obs.dtype) / 100.0)[None, :, None], (*obs.shape[:2], 1))
    f = jnp.concatenate([o, o * o, t, t ** 2, t ** 3, jnp.ones_like(t)], -1).reshape(-1, 8)
    c = jnp.linalg.solve(f.T @ f + 1e-5 * jnp.eye(8, dtype=f.dtype), f.T @ ret.reshape(-1))
    adv = ret - (f @ c).reshape(ret.shape)
    return (adv - adv.mean()) / (adv.std() + 1e-8)


def plain_adapt(p, obs, act, adv):
    g = jax.grad(lambda q: jnp.mean(plain_logp(q, obs, act) * adv))(p)
    return jax.tree.map(lambda a, b: a + INNER_LR * b, p, g)


def plain_draw(key, n, episodes=EPISODES, horizon=HORIZON):
    """The randomness of one meta-iteration: goals ``[n, 2]`` and the noise of the pre- and post-adaptation
    episodes, each ``[n, episodes, horizon, 2]``."""
    kg, kr = jax.random.split(key)
    goals = jax.random.uniform(kg, (n, 2), minval=-0.5, maxval=0.5)
    k1, k2 = jax.random.split(kr)
    noise = jax.vmap(lambda k: plain_noise(k, episodes, horizon))
    return goals, noise(jax.random.split(k1, n)), noise(jax.random.split(k2, n))


def plain_sample(p, goals, eps_pre, eps_post):
    """Pre-adaptation episodes, the inner step and the post-adaptation episodes of every task (no gradient):
    ``pre = (obs, act, adv)``, ``post = (obs, act, adv, logp_old, adapted params)``, both stacked over tasks,
    and the mean returns before and after adaptation."""
    def sample(goal, e1, e2):
        o, a, r = plain_rollout_noise(p, goal, e1)
        adv = plain_advantages(o, r)
        q = plain_adapt(p, o, a, adv)
        o2, a2, r2 = plain_rollout_noise(q, goal, e2)
        return (o, a, adv), (o2, a2, plain_advantages(o2, r2), plain_logp(q, o2, a2), q), r.sum(-1).mean(), \
            r2.sum(-1).mean()

    pre, post, ret0, ret1 = jax.vmap(sample)(goals, eps_pre, eps_post)
    pre, post = jax.lax.stop_gradient((pre, post))
    return pre, post, ret0.mean(), ret1.mean()


def plain_trpo(p, pre, post):
    """The TRPO outer step on the sampled episodes: ``(new params, info)``; ``info`` holds the surrogate gradient
    ``grad`` (flat, in ``ravel_pytree`` order), its Fisher-vector product ``fvp_grad``, the CG direction
    ``direction`` and whether the line search accepted a step (``accepted``)."""
    flat0, unravel = ravel_pytree(p)

    def terms(f):
        q0 = unravel(f)

        def task(pr, po):
            q = plain_adapt(q0, *pr)
            o2, a2, adv2, lp_old, q_old = po
            surr = jnp.mean(jnp.exp(plain_logp(q, o2, a2) - lp_old) * adv2)
            m0, m1 = plain_mean(q_old, o2), plain_mean(q, o2)
            s0, s1 = q_old["log_std"], q["log_std"]
            kl = jnp.sum(s1 - s0 + (jnp.exp(2 * s0) + (m0 - m1) ** 2) / (2 * jnp.exp(2 * s1)) - 0.5, -1)
            return surr, jnp.mean(kl)
        s, k = jax.vmap(task)(pre, post)
        return s.mean(), k.mean()

    s0, g = jax.value_and_grad(lambda f: terms(f)[0])(flat0)
    kg_ = jax.grad(lambda f: terms(f)[1])

    def fvp(v):
        return jax.jvp(kg_, (flat0,), (v,))[1] + 1e-5 * v

    def cg_body(_, c):
        x, r, d, rr = c
        ad = fvp(d)
        al = rr / jnp.vdot(d, ad)
        x, r = x + al * d, r - al * ad
        rr2 = jnp.vdot(r, r)
        return x, r, r + rr2 / rr * d, rr2

    x = jax.lax.fori_loop(0, 10, cg_body, (jnp.zeros_like(g), g, g, jnp.vdot(g, g)))[0]
    full = jnp.sqrt(2 * MAX_KL / (jnp.vdot(x, fvp(x)) + 1e-8)) * x

    def ls_cond(c):
        return (c[0] < 15) & ~c[1]

    def ls_body(c):
        f = flat0 + 0.8 ** c[0] * full
        s, k = terms(f)
        return c[0] + 1, (s > s0) & (k <= MAX_KL), f

    _, ok, f = jax.lax.while_loop(ls_cond, ls_body, (0, jnp.array(False), flat0))
    info = {"grad": g, "fvp_grad": fvp(g), "direction": x, "accepted": ok}  # plain_step drops info: no cost there
    return unravel(jnp.where(ok, f, flat0)), info


def plain_step(p, key, n):
    """One MAML-TRPO meta-iteration on ``n`` goals: ``(new params, (return before, return after adaptation))``."""
    pre, post, ret0, ret1 = plain_sample(p, *plain_draw(key, n))
    return plain_trpo(p, pre, post)[0], (ret0, ret1)


# ---------------------------------------------------------------- the PyTorch MAML-TRPO on nav2d (``--torch``)
class TorchMAMLRL:
    """The same MAML-TRPO in PyTorch, laid out as the public PyTorch MAML-RL code lays it out.

    Structure as in tristandeleu/pytorch-maml-rl (written here from scratch): a functional policy whose
    parameters are passed explicitly (``policy(obs, params=...)``), the inner step
    ``torch.autograd.grad(loss, params, create_graph=True)`` per task in a Python loop (``MAMLTRPO.adapt``),
    the outer surrogate and the KL re-adapting each task in a loop, and TRPO with a Hessian-vector product that
    keeps the KL's gradient graph (``retain_graph``), 10 CG iterations and a backtracking line search that
    reads the surrogate and the KL back to the host (``.item()``). Where the public code steps numpy ``gym``
    environments in worker processes, this one steps the environments as batched tensors on the device: every
    task's episodes at once (``[tasks, episodes, 2]`` positions), the post-adaptation episodes with each task's
    adapted parameters through batched matmuls. Everything else (policy, baseline, advantages, surrogate, KL,
    CG, line search, damping) follows the plain-JAX reference above term by term; ``--check`` compares them.

    Parameters are a list ``[w0, b0, w1, b1, w2, b2, log_std]`` with ``w`` as ``[in, out]`` (the plain-JAX
    layout, in ``ravel_pytree`` order), each optionally with a leading task axis.
    """

    def __init__(self, torch, device, dtype=None):
        self.torch, self.device = torch, device
        self.dtype = dtype or torch.float32

    # policy
    def init(self, seed=0):
        """Weights drawn as ``plain_init`` draws them (normal / sqrt(fan-in)), zero biases, zero log-std."""
        t = self.torch
        g = t.Generator(device="cpu").manual_seed(seed)
        sizes = [(2, HIDDEN[0]), (HIDDEN[0], HIDDEN[1]), (HIDDEN[1], 2)]
        out = []
        for i, o in sizes:
            out += [t.randn(i, o, generator=g, dtype=self.dtype) / i ** 0.5, t.zeros(o, dtype=self.dtype)]
        out.append(t.zeros(2, dtype=self.dtype))
        return [x.to(self.device).requires_grad_() for x in out]

    def from_jax(self, params):
        """Leaf tensors holding the values of a plain-JAX parameter pytree (``plain_init``'s layout)."""
        import numpy as np

        flat = [w for wb in params["layers"] for w in wb] + [params["log_std"]]
        return [self.torch.tensor(np.asarray(x), dtype=self.dtype, device=self.device).requires_grad_()
                for x in flat]

    def mean(self, params, x):
        """The MLP's mean action; with per-task parameters (a leading task axis) ``x`` is ``[tasks, ..., 2]``."""
        for i in range(3):
            w, b = params[2 * i], params[2 * i + 1]
            if w.dim() == 3:  # per-task weights: [tasks, B, in] @ [tasks, in, out]
                shape = x.shape
                x = (x.reshape(shape[0], -1, shape[-1]) @ w + b[:, None, :]).reshape(*shape[:-1], w.shape[-1])
            else:
                x = x @ w + b
            if i < 2:
                x = self.torch.relu(x)
        return x

    def logp(self, params, obs, act):
        log_std = params[6]
        z = (act - self.mean(params, obs)) * self.torch.exp(-log_std)
        return (-0.5 * z * z - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    # environment: nav2d as batched tensors
    def rollout(self, params, goals, eps):
        """Episodes of every task at once: ``goals [tasks, 2]``, noise ``eps [tasks, episodes, horizon, 2]``;
        ``params`` shared or per task. Returns (obs, act, rew) ``[tasks, episodes, horizon, ...]``."""
        t = self.torch
        n, e, h, _ = eps.shape
        std = t.exp(params[6])
        if std.dim() == 2:
            std = std[:, None, :]
        pos = t.zeros(n, e, 2, dtype=eps.dtype, device=eps.device)
        obs, act, rew = [], [], []
        for k in range(h):
            a = self.mean(params, pos) + std * eps[:, :, k]
            new = pos + t.clamp(0.1 * a, -0.1, 0.1)
            obs.append(pos)
            act.append(a)
            rew.append(-t.linalg.vector_norm(new - goals[:, None, :], dim=-1))
            pos = new
        return t.stack(obs, 2), t.stack(act, 2), t.stack(rew, 2)

    # baseline and advantages, per task (batched over the task axis)
    def advantages(self, obs, rew):
        t = self.torch
        n, e, h = rew.shape
        ret = t.empty_like(rew)
        g = t.zeros_like(rew[..., 0])
        for k in reversed(range(h)):
            g = rew[..., k] + GAMMA * g
            ret[..., k] = g
        o = t.clamp(obs, -10, 10)
        ts = (t.arange(h, dtype=rew.dtype, device=rew.device) / 100.0)[None, None, :, None].expand(n, e, h, 1)
        f = t.cat([o, o * o, ts, ts ** 2, ts ** 3, t.ones_like(ts)], -1).reshape(n, e * h, 8)
        ft = f.transpose(1, 2)
        eye = t.eye(8, dtype=f.dtype, device=f.device)
        c = t.linalg.solve(ft @ f + 1e-5 * eye, ft @ ret.reshape(n, e * h, 1))
        adv = ret - (f @ c).reshape(n, e, h)
        mu = adv.mean(dim=(1, 2), keepdim=True)
        sd = adv.std(dim=(1, 2), correction=0, keepdim=True)
        return (adv - mu) / (sd + 1e-8)

    # MAML-TRPO
    def adapt(self, params, obs, act, adv, create_graph):
        """One inner policy-gradient step of one task (``MAMLTRPO.adapt``)."""
        loss = (self.logp(params, obs, act) * adv).mean()
        grads = self.torch.autograd.grad(loss, params, create_graph=create_graph)
        return [p + INNER_LR * g for p, g in zip(params, grads)]

    def sample(self, params, goals, eps_pre, eps_post):
        """The sampler: pre-adaptation episodes, each task's adapted parameters (no graph kept), the
        post-adaptation episodes. Returns ``(pre, post, return before, return after)`` as ``plain_sample``."""
        t = self.torch
        with t.no_grad():
            o, a, r = self.rollout([x.detach() for x in params], goals, eps_pre)
            adv = self.advantages(o, r)
        qs = []
        for i in range(goals.shape[0]):
            with t.enable_grad():
                q = self.adapt(params, o[i], a[i], adv[i], create_graph=False)
            qs.append([x.detach() for x in q])
        q_old = [t.stack(xs) for xs in zip(*qs)]
        with t.no_grad():
            o2, a2, r2 = self.rollout(q_old, goals, eps_post)
            adv2 = self.advantages(o2, r2)
            lp_old = t.stack([self.logp(q, o2[i], a2[i]) for i, q in enumerate(qs)])
        return (o, a, adv), (o2, a2, adv2, lp_old, qs), r.sum(-1).mean(), r2.sum(-1).mean()

    def surrogate_and_kl(self, params, pre, post, create_graph):
        """The outer surrogate and KL(old || adapted), averaged over tasks, re-adapting each task."""
        t = self.torch
        o, a, adv = pre
        o2, a2, adv2, lp_old, qs = post
        surrs, kls = [], []
        for i, q_old in enumerate(qs):
            q = self.adapt(params, o[i], a[i], adv[i], create_graph=create_graph)
            surrs.append((t.exp(self.logp(q, o2[i], a2[i]) - lp_old[i]) * adv2[i]).mean())
            m0, m1 = self.mean(q_old, o2[i]), self.mean(q, o2[i])
            s0, s1 = q_old[6], q[6]
            kl = (s1 - s0 + (t.exp(2 * s0) + (m0 - m1) ** 2) / (2 * t.exp(2 * s1)) - 0.5).sum(-1)
            kls.append(kl.mean())
        return t.stack(surrs).mean(), t.stack(kls).mean()

    def trpo(self, params, pre, post, diagnostics=False):
        """The TRPO outer step; returns ``(new params, info)`` as ``plain_trpo`` (``fvp_grad`` only with
        ``diagnostics``: one more Fisher-vector product)."""
        t = self.torch
        flat = t.cat([x.detach().reshape(-1) for x in params])
        s0, kl = self.surrogate_and_kl(params, pre, post, create_graph=True)
        g = t.cat([x.reshape(-1) for x in t.autograd.grad(s0, params, retain_graph=True)])
        gk = t.cat([x.reshape(-1) for x in t.autograd.grad(kl, params, create_graph=True)])

        def fvp(v):
            hv = t.autograd.grad(t.dot(gk, v), params, retain_graph=True)
            return t.cat([x.reshape(-1) for x in hv]) + 1e-5 * v

        x, r, d = t.zeros_like(g), g.clone(), g.clone()
        rr = t.dot(r, r)
        for _ in range(10):
            ad = fvp(d)
            al = rr / t.dot(d, ad)
            x, r = x + al * d, r - al * ad
            rr2 = t.dot(r, r)
            d, rr = r + rr2 / rr * d, rr2
        full = t.sqrt(2 * MAX_KL / (t.dot(x, fvp(x)) + 1e-8)) * x
        s0 = s0.item()
        new, ok = flat, False
        for j in range(15):
            f = flat + 0.8 ** j * full
            cand = self.unflatten(f, params)
            with t.enable_grad():
                s, k = self.surrogate_and_kl(cand, pre, post, create_graph=False)
            if s.item() > s0 and k.item() <= MAX_KL:
                new, ok = f, True
                break
        info = {"grad": g, "direction": x, "accepted": ok}
        if diagnostics:
            info["fvp_grad"] = fvp(g)
        return self.unflatten(new, params), info

    def unflatten(self, f, like):
        out, i = [], 0
        for p in like:
            out.append(f[i:i + p.numel()].reshape(p.shape).detach().requires_grad_())
            i += p.numel()
        return out

    def draw(self, n, episodes=EPISODES, horizon=HORIZON):
        t = self.torch
        goals = t.rand(n, 2, dtype=self.dtype, device=self.device) - 0.5
        eps = t.randn(2, n, episodes, horizon, 2, dtype=self.dtype, device=self.device)
        return goals, eps[0], eps[1]

    def step(self, params, n):
        """One meta-iteration on ``n`` fresh goals: ``(new params, (return before, return after))``."""
        pre, post, ret0, ret1 = self.sample(params, *self.draw(n))
        return self.trpo(params, pre, post)[0], (ret0, ret1)


def torch_setup(threads=None):
    """``(torch, device, info)``: CUDA if available, else the CPU; ``threads``: ``torch.set_num_threads``."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    info = {"torch": torch.__version__, "torch_device": str(device), "torch_device_name": name,
            "torch_threads": torch.get_num_threads()}
    return torch, device, info


def _torch_sync(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- the cross-check (``--check``)
# Relative tolerances (max |torch - jax| / max |jax|, float64). Episodes, advantages, adapted parameters, the
# surrogate gradient and its Fisher-vector product agree to ~1e-16..1e-12 (measured, 2 tasks x 20 x 100): 1e-10.
# The CG direction, and with it the step, is ill-conditioned (10 CG iterations on the Fisher damped by 1e-5):
# in the plain-JAX reference alone a 2e-13 relative change of the gradient moves the direction by 2.4e-5
# (measured), and torch vs JAX differ by ~1e-4 there: 1e-3.
def _write_json(out, path):
    p = pathlib.Path(path)
    write_json(p, out)
    print(f"wrote {p}")


CHECK_RTOL = {"pre_obs": 1e-10, "pre_act": 1e-10, "pre_adv": 1e-10, "post_adv": 1e-10, "adapted": 1e-10,
              "grad": 1e-10, "fvp_grad": 1e-10, "direction": 1e-3, "new_params": 1e-3}


def check(n=2, episodes=EPISODES, horizon=HORIZON, seed=0):
    """Feeds the same float64 weights, goals and noise to the plain-JAX reference and to the PyTorch code (on
    the CPU) and returns the largest relative differences (``max |torch - jax| / max |jax|``) of: the
    pre-adaptation episodes, every task's adapted parameters, the post-adaptation advantages, the outer
    surrogate gradient and its Fisher-vector product, the CG direction and the parameters after the TRPO step
    (tolerances: :data:`CHECK_RTOL`)."""
    import numpy as np
    import torch

    with jax.enable_x64(True):
        p = plain_init(jax.random.key(seed))
        p = jax.tree.map(lambda x: x.astype(jnp.float64), p)
        goals, e1, e2 = plain_draw(jax.random.key(seed + 1), n, episodes, horizon)
        pre, post, ret0, ret1 = jax.jit(plain_sample)(p, goals, e1, e2)
        new, info = jax.jit(plain_trpo)(p, pre, post)
        ref = {"pre_obs": pre[0], "pre_act": pre[1], "pre_adv": pre[2], "post_adv": post[2],
               "adapted": ravel_pytree(jax.vmap(lambda q: ravel_pytree(q)[0])(post[4]))[0],
               "grad": info["grad"], "fvp_grad": info["fvp_grad"], "direction": info["direction"],
               "new_params": ravel_pytree(new)[0]}
        ref = {k: np.asarray(v, np.float64) for k, v in ref.items()}
        accepted = bool(info["accepted"])
    tm = TorchMAMLRL(torch, torch.device("cpu"), torch.float64)
    tp = tm.from_jax(p)
    as_t = lambda x: torch.tensor(np.asarray(x), dtype=torch.float64)  # noqa: E731
    tpre, tpost, _, _ = tm.sample(tp, as_t(goals), as_t(e1), as_t(e2))
    tnew, tinfo = tm.trpo(tp, tpre, tpost, diagnostics=True)
    got = {"pre_obs": tpre[0], "pre_act": tpre[1], "pre_adv": tpre[2], "post_adv": tpost[2],
           "adapted": torch.cat([torch.cat([x.reshape(-1) for x in q]) for q in tpost[4]]),
           "grad": tinfo["grad"], "fvp_grad": tinfo["fvp_grad"], "direction": tinfo["direction"],
           "new_params": torch.cat([x.reshape(-1) for x in tnew])}
    rel = {k: float(np.max(np.abs(got[k].detach().numpy() - ref[k])) / max(np.max(np.abs(ref[k])), 1e-300))
           for k in ref}
    return {"tasks": n, "episodes": episodes, "horizon": horizon, "dtype": "float64",
            "line_search_accepted": {"jax": accepted, "torch": bool(tinfo["accepted"])}, "max_rel_diff": rel}


# ---------------------------------------------------------------- measurements
def time_interleaved(calls, rounds, min_sample_s=0.01):
    """Times several implementations in interleaved rounds (round r times each in turn), so that a change of
    load on the shared machine hits all of them alike. ``calls`` maps a name to ``(call, sync)``: ``sync``
    blocks on what ``call`` returned. Each sample runs ``n`` back-to-back calls (``n`` chosen from a timed call
    after one warm-up so that a sample lasts ``min_sample_s``); returns per name the median, quartiles, IQR,
    ``n`` and the first (warm-up) call's seconds."""
    n, first = {}, {}
    for name, (call, sync) in calls.items():
        t0 = time.perf_counter()
        sync(call())
        first[name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        sync(call())
        n[name] = max(1, min(1000, int(min_sample_s / max(time.perf_counter() - t0, 1e-9))))
    samples = {name: [] for name in calls}
    for _ in range(rounds):
        for name, (call, sync) in calls.items():
            t0 = time.perf_counter()
            out = None
            for _ in range(n[name]):
                out = call()
            sync(out)
            samples[name].append((time.perf_counter() - t0) / n[name])
    res = {}
    for name, sm in samples.items():
        med, q1, q3 = median_iqr(sm)
        res[name] = {"median_s": med, "q1_s": q1, "q3_s": q3, "iqr_s": q3 - q1, "calls_per_sample": n[name],
                     "first_call_s": first[name]}
    return res


def bench_rollouts(sizes, repeats, torch_ctx=None, compiler_options=None):
    """Env-steps/s of jmeta's ``rollout_tasks``, the plain-JAX rollouts and (with ``torch_ctx``) the PyTorch
    batched-tensor rollouts, one policy for all tasks, in interleaved rounds (``compiler_options``: XLA's, for
    every program)."""
    env = envs.Nav2D(horizon=HORIZON)
    policy = gaussian_mlp_policy(2, 2, HIDDEN)
    params = policy.init()
    p0 = plain_init(jax.random.key(0))
    out = []
    for n_tasks, n_eps in sizes:
        tasks = env.sample_tasks(jax.random.key(0), n_tasks)
        goals = jax.random.uniform(jax.random.key(0), (n_tasks, 2), minval=-0.5, maxval=0.5)
        f = jax.jit(lambda p, t, k, e=n_eps: rollout_tasks(env, policy, p, t, k, num_episodes=e).rewards)
        g = jax.jit(lambda p, gl, k, e=n_eps: jax.vmap(
            lambda gg, kk: plain_rollout_noise(p, gg, plain_noise(kk, e)))(gl, jax.random.split(k, gl.shape[0]))[2])
        row = {"tasks": n_tasks, "episodes": n_eps, "horizon": HORIZON}
        comps = {}
        for name, fn, args in (("jmeta", f, (params, tasks)), ("plain", g, (p0, goals))):
            t0 = time.perf_counter()
            comps[name] = (fn.lower(*args, jax.random.key(1)).compile(compiler_options), args)
            row[f"{name}_compile_s" if name != "jmeta" else "compile_s"] = time.perf_counter() - t0
        keys = iter(jax.random.split(jax.random.key(2), 100_000))
        calls = {name: ((lambda c=c, a=a: c(*a, next(keys))), jax.block_until_ready) for name, (c, a) in comps.items()}
        if torch_ctx is not None:
            torch, tm, tparams = torch_ctx["torch"], torch_ctx["impl"], torch_ctx["params"]
            tgoals = torch.tensor(jax.device_get(goals), dtype=tm.dtype, device=tm.device)
            detached = [x.detach() for x in tparams]

            def troll(e=n_eps):
                with torch.no_grad():
                    eps = torch.randn(tgoals.shape[0], e, HORIZON, 2, dtype=tm.dtype, device=tm.device)
                    return tm.rollout(detached, tgoals, eps)[2]
            calls["torch"] = (troll, lambda _: _torch_sync(torch, tm.device))
        steps = n_tasks * n_eps * HORIZON
        row["env_steps"] = steps
        res = time_interleaved(calls, repeats)
        for name, r in res.items():
            pre = "" if name == "jmeta" else f"{name}_"
            row.update({f"{pre}{k}": v for k, v in r.items()})
            row[f"{pre}env_steps_per_s"] = steps / r["median_s"]
        out.append(row)
        print(f"rollouts {n_tasks}x{n_eps}x{HORIZON}: " + ", ".join(
            f"{name} {steps / r['median_s']:.3g}" for name, r in res.items()) + f" env-steps/s "
              f"(jmeta compile {row['compile_s']:.1f} s)", flush=True)
    return out


def bench_meta_step(task_counts, rounds, torch_ctx=None, compiler_options=None):
    """Seconds per MAML-TRPO meta-iteration of jmeta's ``MAMLRL``, the plain-JAX reference and (with
    ``torch_ctx``) the PyTorch one, in interleaved rounds after one warm-up iteration each (``compiler_options``:
    XLA's, for every program)."""
    env = envs.Nav2D(horizon=HORIZON)
    out = []
    for n in task_counts:
        algo = MAMLRL(env, gaussian_mlp_policy(2, 2, HIDDEN), num_tasks=n, num_episodes=EPISODES,
                      estimator="reinforce", inner_lr=INNER_LR, gamma=GAMMA, max_kl=MAX_KL)
        state = algo.init()
        p0 = plain_init(jax.random.key(0))
        row = {"tasks": n, "episodes": EPISODES, "horizon": HORIZON,
               "env_steps_per_iteration": 2 * n * EPISODES * HORIZON}
        calls = {}
        plain = lambda p, k, n=n: plain_step(p, k, n)  # noqa: E731 (a new function per size: no jit cache hit)
        keys = iter(jax.random.split(jax.random.key(100), 10_000))
        for name, fn, arg in (("jmeta", algo.meta_step, state), ("plain", plain, p0)):
            t0 = time.perf_counter()
            comp = jax.jit(fn).lower(arg, jax.random.key(0)).compile(compiler_options)
            row[f"{name}_compile_s"] = time.perf_counter() - t0
            calls[name] = ((lambda c=comp, a=arg: c(a, next(keys))), jax.block_until_ready)
        if torch_ctx is not None:
            torch, tm, tparams = torch_ctx["torch"], torch_ctx["impl"], torch_ctx["params"]
            calls["torch"] = ((lambda: tm.step(tparams, n)), lambda _: _torch_sync(torch, tm.device))
        res = time_interleaved(calls, rounds, min_sample_s=0.0)
        for name, r in res.items():
            row[f"{name}_median_s"], row[f"{name}_iqr_s"] = r["median_s"], r["iqr_s"]
            row[f"{name}_env_steps_per_s"] = row["env_steps_per_iteration"] / r["median_s"]
        row["jmeta_over_plain"] = row["jmeta_median_s"] / row["plain_median_s"]
        if "torch" in res:
            row["torch_first_call_s"] = res["torch"]["first_call_s"]
            row["torch_over_jmeta"] = row["torch_median_s"] / row["jmeta_median_s"]
            row["torch_over_plain"] = row["torch_median_s"] / row["plain_median_s"]
        out.append(row)
        print(f"meta-step {n} tasks: " + ", ".join(f"{name} {r['median_s']:.3f} s" for name, r in res.items())
              + f" (compile {row['jmeta_compile_s']:.1f} / {row['plain_compile_s']:.1f} s)", flush=True)
    return out




def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/rl_throughput.json")
    ap.add_argument("--quick", action="store_true", help="small sizes and few repeats (smoke test)")
    ap.add_argument("--rollout-sizes", default=None,
                    help="comma-separated TASKSxEPISODES (default 20x20,40x20,200x50,1000x100)")
    ap.add_argument("--meta-tasks", default=None, help="comma-separated meta-batch sizes (default 10,20,40)")
    ap.add_argument("--rounds", type=int, default=7, help="timed meta-steps per implementation")
    ap.add_argument("--torch", action="store_true",
                    help="also time the PyTorch MAML-TRPO (needs torch; CUDA if available, else the CPU)")
    ap.add_argument("--check", action="store_true",
                    help="cross-check the PyTorch code against the plain-JAX reference in float64 (needs torch); "
                         "alone, only the check runs and its record goes to --out")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch.set_num_threads for the CPU (default: torch's own; on a loaded shared CPU its OpenMP "
                         "threads spin-wait for each other: 1 was 5-30x faster on the 2-core machine)")
    ap.add_argument("--check-sizes", default="2x20x100", help="TASKSxEPISODESxHORIZON of --check (default 2x20x100)")
    args = ap.parse_args(argv)
    if args.torch or args.check:
        try:
            import torch  # noqa: F401
        except ImportError as e:
            ap.error(f"--torch and --check need PyTorch, which this Python ({sys.executable}) cannot import ({e}); "
                     f"install torch in a separate environment (jmeta does not depend on it) or drop the flag")
    if args.rounds < 1:
        ap.error(f"--rounds must be an integer >= 1, got {args.rounds!r}")
    if args.torch_threads is not None and args.torch_threads < 1:
        ap.error(f"--torch-threads must be an integer >= 1, got {args.torch_threads!r}")
    if args.rollout_sizes:
        sizes = [tuple(int(v) for v in s.split("x")) for s in args.rollout_sizes.split(",")]
    else:
        sizes = [(4, 5), (20, 20)] if args.quick else [(20, 20), (40, 20), (200, 50), (1000, 100)]
    if args.meta_tasks:
        tasks = [int(v) for v in args.meta_tasks.split(",")]
    else:
        tasks = [2] if args.quick else [10, 20, 40]
    rounds = 2 if args.quick else args.rounds
    out = {"benchmark": "rl_throughput", "device": device_info(), "protocol": {
        "env": "Nav2D (MAML-RL 2D navigation)", "horizon": HORIZON, "policy_hidden": HIDDEN,
        "episodes_per_task": EPISODES, "inner_lr": INNER_LR, "outer": "TRPO max_kl=0.01, 10 CG iters, 15 backtracks",
        "estimator": "reinforce (MAML-RL's original inner surrogate)"}, "command": " ".join(
            ["python", "benchmarks/rl_throughput.py", *(argv if argv is not None else sys.argv[1:])])}
    if args.check:
        n, e, h = (int(v) for v in args.check_sizes.split("x"))
        res = check(n, e, h)
        res["rtol"] = CHECK_RTOL
        res["ok"] = all(v <= CHECK_RTOL[k] for k, v in res["max_rel_diff"].items())
        print("check (float64, max relative difference torch vs plain JAX): " + ", ".join(
            f"{k} {v:.1e}" for k, v in res["max_rel_diff"].items()) + f" -> {'ok' if res['ok'] else 'FAILED'}",
            flush=True)
        out["check"] = res
        if not args.torch:  # the check alone: its record goes to --out
            _write_json(out, args.out)
            return 0 if res["ok"] else 1
    torch_ctx = None
    if args.torch:
        torch, device, info = torch_setup(args.torch_threads)
        out["torch_device"] = info
        impl = TorchMAMLRL(torch, device)
        torch.manual_seed(0)
        torch_ctx = {"torch": torch, "impl": impl, "params": impl.init(0)}
        print(f"torch {info['torch']} on {info['torch_device_name']}", flush=True)
    opts = _FAST_COMPILE if args.quick else None
    if opts:
        out["protocol"]["compiler_options"] = opts
    out["rollouts"] = bench_rollouts(sizes, 3 if args.quick else 7, torch_ctx, opts)
    out["meta_step"] = bench_meta_step(tasks, rounds, torch_ctx, opts)
    _write_json(out, args.out)
    return 0 if out.get("check", {}).get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
