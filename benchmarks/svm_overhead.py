"""Per-episode cost of MetaOptNet's SVM head (and the ridge heads) vs a ProtoNets-style head, same embedding.

Command (repo root; the default embedding, ``--model auto``, is ResNet-12 on Omniglot-shaped input, and the
JSON's ``embedding`` names the one used; ``--model conv4`` for the smaller Conv4):

    python benchmarks/svm_overhead.py --out runs/bench/svm_overhead.json

The paper's setting (GPU; ResNet-12 on 84x84x3, 5-way, 15-shot training episodes):

    python benchmarks/svm_overhead.py --model resnet12 --image 84,84,3 --k-shot 15 --meta-batch 8

Every head uses the same embedding network, the same episodes and the same program shape: a
``jit`` of ``jax.value_and_grad`` of the mean task objective over a ``vmap``-ed meta-batch
(embedding forward and backward included; the embedding weights are shared across tasks, so
``vmap`` batches them into ordinary convolutions). Heads:

* ``proto``: ProtoNets-style (class means, negative squared Euclidean distances; defined here,
  on :class:`jmeta.algorithms.r2d2.ClosedFormHead`);
* ``svm``: :class:`~jmeta.algorithms.metaoptnet.MetaOptNet` (Crammer-Singer dual by FISTA,
  ``tol`` 1e-4, at most ``--svm-max-iter`` iterations; implicit backward with a dense solve);
* ``ridge``: MetaOptNet-RR; ``r2d2``: :class:`~jmeta.algorithms.r2d2.R2D2`.

Timing: compile (lower + compile) apart; one warm-up call; then ``--reps`` rounds in which the
heads are called one after another (interleaved, so load changes on a shared machine hit all of
them alike); medians with ``block_until_ready``. Reported: per-meta-batch and per-episode
medians, the ratio to ``proto`` (the paper reports about 30-50% overhead for the SVM head with
ResNet-12), XLA FLOPs (loop bodies counted once) and memory, and the SVM's mean iteration count.
Embedding: ``--model auto`` uses ResNet-12 (``jmeta.models.resnet``) if it exists, else Conv4;
the JSON says which.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp


def _embedding(name, image, key):
    if name in ("auto", "resnet12"):
        try:
            from jmeta.models import resnet  # noqa: F401

            fn = getattr(resnet, "resnet12")
            return fn(None, input_shape=image, key=key), "resnet12"
        except (ImportError, AttributeError, TypeError) as e:
            if name == "resnet12":
                raise SystemExit(f"--model resnet12: jmeta.models.resnet.resnet12(None, input_shape=..., key=...) "
                                 f"is not available ({e})")
    if name in ("auto", "conv4"):
        from jmeta.models.conv import conv4

        return conv4(None, input_shape=image, key=key), "conv4"
    if name == "mlp":
        from jmeta.models import mlp
        from jmeta.models.bridge import Model

        base = mlp(int(jnp.prod(jnp.asarray(image))), (256, 256), 64, key=key)

        def apply(p, s, x, *, train):
            return base.apply(p, s, x.reshape(x.shape[0], -1), train=train)

        return Model(apply, base.params, base.state), "mlp"
    raise SystemExit(f"--model must be auto, resnet12, conv4 or mlp, got {name!r}")


def _proto_head():
    from jmeta.algorithms.r2d2 import ClosedFormHead

    @dataclasses.dataclass(frozen=True, eq=False)
    class ProtoHead(ClosedFormHead):
        """ProtoNets-style head: class-mean prototypes, logits = -||e - c_k||^2."""

        def _fit(self, meta_params, emb, onehot):
            return {"protos": (onehot.T @ emb) / jnp.sum(onehot, axis=0)[:, None]}, {}

        def _logits(self, meta_params, adapted, emb):
            c = adapted["protos"]
            return -(jnp.sum(emb * emb, -1, keepdims=True) - 2 * emb @ c.T + jnp.sum(c * c, -1)[None])

    return ProtoHead


def _tasks(key, num_tasks, n_way, k_shot, q_query, image):
    from jmeta.tasks import TaskBatch

    ks = jax.random.split(key, 2)
    sy = jnp.tile(jnp.arange(n_way, dtype=jnp.int32), k_shot)
    qy = jnp.tile(jnp.arange(n_way, dtype=jnp.int32), q_query)
    # class-dependent images so the SVM dual is a realistic (not degenerate) problem
    protos = jax.random.uniform(ks[0], (num_tasks, n_way, *image))
    noise = lambda k, n: 0.5 * jax.random.uniform(k, (num_tasks, n, *image))  # noqa: E731
    k1, k2 = jax.random.split(ks[1])
    sx = protos[:, sy] + noise(k1, sy.size)
    qx = protos[:, qy] + noise(k2, qy.size)
    b = lambda y: jnp.broadcast_to(y, (num_tasks, y.size))  # noqa: E731
    return TaskBatch(sx, b(sy), qx, b(qy))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="auto", choices=("auto", "resnet12", "conv4", "mlp"))
    p.add_argument("--image", default="28,28,1", help="H,W,C of the inputs")
    p.add_argument("--n-way", type=int, default=5)
    p.add_argument("--k-shot", type=int, default=5)
    p.add_argument("--q-query", type=int, default=15)
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--svm-max-iter", type=int, default=1000)
    p.add_argument("--heads", default="proto,svm,ridge,r2d2")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--out", default="runs/bench/svm_overhead.json")
    args = p.parse_args(argv)

    from jmeta.algorithms.metaoptnet import MetaOptNet
    from jmeta.algorithms.r2d2 import R2D2

    image = tuple(int(s) for s in args.image.split(","))
    model, model_name = _embedding(args.model, image, jax.random.key(0))
    ctor = {
        "proto": lambda: _proto_head()(model.apply, n_way=args.n_way),
        "svm": lambda: MetaOptNet(model.apply, n_way=args.n_way, head="svm", max_iter=args.svm_max_iter),
        "ridge": lambda: MetaOptNet(model.apply, n_way=args.n_way, head="ridge"),
        "r2d2": lambda: R2D2(model.apply, n_way=args.n_way),
    }
    heads = args.heads.split(",")
    for h in heads:
        if h not in ctor:
            raise SystemExit(f"--heads: unknown head {h!r}; valid: {sorted(ctor)}")
    tasks = _tasks(jax.random.key(1), args.meta_batch, args.n_way, args.k_shot, args.q_query, image)

    compiled, meta, results = {}, {}, {}
    for h in heads:
        algo = ctor[h]()
        mp = algo.init(model.params)

        def objective(mp, algo=algo):
            obj, aux = jax.vmap(lambda t: algo.task_loss(mp, model.state, t))(tasks)
            return jnp.mean(obj), jax.tree.map(jnp.mean, aux["metrics"])

        fn = jax.jit(jax.value_and_grad(objective, has_aux=True))
        t0 = time.perf_counter()
        c = fn.lower(mp).compile()
        compile_s = time.perf_counter() - t0
        cost = c.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        ma = c.memory_analysis()
        (_, metrics), _ = jax.block_until_ready(c(mp))  # warm-up
        compiled[h], meta[h] = c, mp
        results[h] = {"compile_s": compile_s, "times_s": [],
                      "flops": float(cost.get("flops", float("nan"))) if cost else None,
                      "peak_bytes": int(ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes),
                      "metrics": {k: float(v) for k, v in metrics.items()}}
        print(f"compiled {h}: {compile_s:.2f} s", flush=True)
    for _ in range(args.reps):
        for h in heads:
            t0 = time.perf_counter()
            jax.block_until_ready(compiled[h](meta[h]))
            results[h]["times_s"].append(time.perf_counter() - t0)
    base = statistics.median(results[heads[0]]["times_s"])
    for h in heads:
        r = results[h]
        r["step_median_s"] = statistics.median(r["times_s"])
        r["per_episode_ms"] = 1e3 * r["step_median_s"] / args.meta_batch
        r[f"ratio_to_{heads[0]}"] = r["step_median_s"] / base
        print(f"{h:6s} per-episode {r['per_episode_ms']:8.2f} ms  x{r[f'ratio_to_{heads[0]}']:.2f} vs {heads[0]}"
              + (f"  svm iterations {r['metrics'].get('svm_iterations', 0):.0f}" if h == "svm" else ""), flush=True)
    out = {"config": vars(args), "embedding": model_name, "device": str(jax.devices()[0]),
           "backend": jax.default_backend(), "jax": jax.__version__, "platform": platform.platform(),
           "results": results}
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
