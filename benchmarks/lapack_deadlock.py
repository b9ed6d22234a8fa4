"""Standalone reproduction of the XLA:CPU deadlock that stopped the reduced HalfCheetah/MetaWorld runs (jax 0.10.x).

No jmeta needed: plain ``jax``. On the CPU, jaxlib 0.10.x's LAPACK FFI kernels (here ``lapack_sgetrf_ffi``, the LU
of ``jnp.linalg.solve``) split a batch whose cost ``batch * n^3`` exceeds 2e5 flops into chunks, schedule them on
XLA's intra-op thread pool (``jax::ParallelBatchMap``) and block on an ``absl::BlockingCounter`` until they ran.
XLA's thunk executor runs independent parts of a program (and the rest of a loop body) on workers of that same
pool (``ThunkExecutor::SplitReadyQueue``). A worker that waits in ``ParallelBatchMap`` runs nothing else, and the
chunks it scheduled sit in its own queue; once every worker waits so, nothing runs them: the program never
finishes, every thread sleeps (0% CPU), the host waits in ``block_until_ready``. The pool has one worker per CPU
in the process's affinity, so a 2-core machine needs only two such solves at once.

The program below has ``--loops`` independent ``fori_loop``s, each solving a ``[batch, n, n]`` system per trip.
``--mode batched`` (``jnp.linalg.solve`` vmapped over the batch, one batched LAPACK call) hangs on the first call
on the shared 2-core CPU (jax 0.10.2; measured: native stacks of both ``tf_XLAEigen`` workers in
``lapack_sgetrf_ffi -> jax::ParallelBatchMap -> absl::BlockingCounter::Wait``, reached from
``ThunkExecutor::SplitReadyQueue``). ``--mode sequential`` solves the same systems one matrix per LAPACK call
(``jax.custom_batching.sequential_vmap``, the workaround in :func:`jmeta.rl.returns.fit_linear_baseline`): a batch
of one is never split, nothing blocks. jax >= 0.11.1 no longer splits LAPACK batches in open-source builds
(jax commit 859992407d, "Don't try to parallelize LAPACK kernels in opensource builds").

Measured on the shared 2-core CPU (defaults: 8 loops x 50 solves of ``[5, 38, 38]``), jax 0.10.2 / python 3.11:
``--mode batched`` HANG (3 of 3 runs: plain, with ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`` and with
``JAX_CPU_ENABLE_ASYNC_DISPATCH=false``); ``--mode sequential`` finishes (5 calls in 0.31 s); ``--mode batched``
under ``taskset -c 0`` (a 1-worker pool: the kernel never splits) or with ``--n 30`` (5 x 30^3 < 2e5: not split)
finishes. jax 0.12.0 / python 3.12 (a venv outside the repo): ``--mode batched`` finishes (5 calls in 0.12 s).

A watchdog turns a hang into exit status 3 after ``--timeout`` seconds (compile excluded), printing "HANG".

Run:
    python benchmarks/lapack_deadlock.py --mode batched      # jax 0.10.x, >= 2 CPUs: HANG, exit 3
    python benchmarks/lapack_deadlock.py --mode sequential   # completes
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import jax
import jax.numpy as jnp


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("batched", "sequential"), default="batched")
    ap.add_argument("--batch", type=int, default=5, help="matrices per solve (batch * n^3 must exceed 2e5)")
    ap.add_argument("--n", type=int, default=38, help="matrix size (38: the HalfCheetah linear baseline's)")
    ap.add_argument("--loops", type=int, default=8, help="independent loops (>= 2x the CPU count)")
    ap.add_argument("--trips", type=int, default=50, help="solves per loop")
    ap.add_argument("--calls", type=int, default=5, help="calls of the compiled program")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds after compiling before declaring a hang")
    args = ap.parse_args(argv)

    solve = jnp.linalg.solve if args.mode == "batched" else jax.custom_batching.sequential_vmap(jnp.linalg.solve)

    def loop(a, x, trips):
        return jax.lax.fori_loop(0, trips, lambda i, x: jnp.tanh(jax.vmap(solve)(a, x)), x)

    def program(a, b, trips):
        return [loop(a[k], b[k], trips) for k in range(args.loops)]

    a = [jax.random.normal(jax.random.key(k), (args.batch, args.n, args.n)) + 5 * jnp.eye(args.n)
         for k in range(args.loops)]
    b = [jax.random.normal(jax.random.key(100 + k), (args.batch, args.n, 1)) for k in range(args.loops)]
    print(f"jax {jax.__version__}, {os.cpu_count()} CPUs, mode {args.mode}: {args.loops} loops x {args.trips} "
          f"solves of [{args.batch}, {args.n}, {args.n}]", flush=True)
    t0 = time.perf_counter()
    compiled = jax.jit(program).lower(a, b, args.trips).compile()
    print(f"compiled in {time.perf_counter() - t0:.1f} s", flush=True)

    done = threading.Event()

    def watchdog():
        if not done.wait(args.timeout):
            print(f"HANG: no result after {args.timeout:.0f} s (attach gdb/py-spy --native to see the stacks)",
                  flush=True)
            os._exit(3)

    threading.Thread(target=watchdog, daemon=True).start()
    t0 = time.perf_counter()
    for i in range(args.calls):
        jax.block_until_ready(compiled(a, b, args.trips))
        print(f"call {i}: done at {time.perf_counter() - t0:.2f} s", flush=True)
    done.set()
    print("OK: every call finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
