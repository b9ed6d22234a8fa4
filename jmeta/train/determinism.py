"""Run-to-run determinism on GPU.

On the CPU a jmeta run is a deterministic function of its seed (on one
machine and jaxlib). XLA:GPU is not, by default: its autotuner may pick
different GEMM kernels in different processes (timing decides), and some
operations (scatter-add, some reductions) accumulate with atomics. Measured on
an H100 (jax 0.11.2): ``jmeta train --config sinusoid-maml-k5 --seed 0``
twice in a row gave a 5-shot, 10-step MSE of 0.312 and 0.450.

XLA's flag ``--xla_gpu_deterministic_ops=true`` selects deterministic
implementations and turns autotuning off. It is read when JAX starts its
backends, so it has to be in ``XLA_FLAGS`` before the first array, ``jit``
call or ``jax.devices()``. ``jmeta train``, ``jmeta eval`` and ``jmeta
sweep`` set it for you when the config says ``train.deterministic=true`` (the
default); a script that uses jmeta as a library calls
:func:`enable_determinism` first::

    import jmeta.train.determinism as det
    det.enable_determinism()      # before any JAX computation
    ...

or exports ``XLA_FLAGS=--xla_gpu_deterministic_ops=true`` itself. On the CPU
(and TPU) the flag changes nothing.
"""

from __future__ import annotations

import os

FLAG = "xla_gpu_deterministic_ops"
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _flag_value(flags: str) -> bool | None:
    """The value ``XLA_FLAGS``-style ``flags`` give :data:`FLAG` (the last one wins); ``None`` if absent."""
    value = None
    for tok in flags.split():
        name, eq, raw = tok.lstrip("-").partition("=")
        if name != FLAG:
            continue
        raw = raw.strip().lower()
        if not eq or raw in _TRUE:
            value = True
        elif raw in _FALSE:
            value = False
        else:
            raise ValueError(f"XLA_FLAGS: --{FLAG}={raw!r} is not a boolean; valid: true or false")
    return value


def deterministic_ops_enabled() -> bool:
    """Whether ``XLA_FLAGS`` turns on XLA:GPU's deterministic operations."""
    return bool(_flag_value(os.environ.get("XLA_FLAGS", "")))


def _initialized_platforms() -> list[str] | None:
    """Platforms whose JAX backends are already running (``None`` if JAX cannot tell)."""
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - JAX internals moved
        return None
    backends = getattr(xla_bridge, "_backends", None)
    if not isinstance(backends, dict):  # pragma: no cover
        return None
    return [str(p) for p in backends]


def enable_determinism() -> bool:
    """Adds ``--xla_gpu_deterministic_ops=true`` to ``XLA_FLAGS`` (before JAX starts).

    Returns:
      ``True`` if the flag is (now) in effect for every backend JAX will start;
      ``False`` if JAX was already running on the CPU or TPU only, where the
      flag changes nothing (it is still added, for subprocesses).

    Raises:
      ValueError: ``XLA_FLAGS`` already sets the flag to false (a contradiction
        the caller has to resolve).
      RuntimeError: a GPU backend is already running without the flag: it
        cannot be made deterministic any more.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    value = _flag_value(flags)
    if value is True:
        return True
    if value is False:
        raise ValueError(f"XLA_FLAGS sets --{FLAG}=false but deterministic execution was asked for "
                         "(train.deterministic=true); remove the flag from XLA_FLAGS or set "
                         "train.deterministic=false")
    running = _initialized_platforms()
    if running:
        gpus = [p for p in running if p in ("cuda", "rocm", "gpu")]
        if gpus:
            raise RuntimeError(f"JAX is already running on {gpus[0]} without --{FLAG}=true, so this process can no "
                               "longer be made deterministic; call enable_determinism() before the first JAX "
                               f"computation, or start the process with XLA_FLAGS=--{FLAG}=true")
    os.environ["XLA_FLAGS"] = f"{flags} --{FLAG}=true".strip()
    return not running


def nondeterminism_warning(deterministic: bool) -> str | None:
    """A one-line warning if ``deterministic`` runs on a GPU without the flag, else ``None``."""
    if not deterministic or deterministic_ops_enabled():
        return None
    import jax

    if jax.default_backend() != "gpu":
        return None
    return (f"train.deterministic=true, but XLA_FLAGS lacks --{FLAG}=true: this GPU run is not reproducible "
            "(call jmeta.train.determinism.enable_determinism() before JAX starts, as `jmeta train` does)")
