"""Argument checks shared by every jmeta module.

One place that says what a valid integer, number, flag or choice is, so every constructor and function
refuses bad input with the same kind of message: the argument's name, what it got (value and type) and what
would be valid. NumPy and JAX scalars (``np.int64(3)``, ``np.float32(0.01)``, a 0-d ``jnp.array``) are
accepted wherever a Python number is, and come back as Python numbers; booleans are never numbers.

These helpers run on the host at construction time. A traced value (inside ``jit``) cannot be checked and is
refused with a message saying so, except by :func:`number` with ``traced_ok=True``, which lets it through
unchecked (for hyperparameters that a vectorised sweep traces).
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Iterable
from typing import Any

__all__ = ["integer", "number", "flag", "choice", "describe"]


def describe(value: Any) -> str:
    """``repr`` of a value with its type, for error messages (long reprs are cut)."""
    r = repr(value)
    if len(r) > 80:
        r = r[:77] + "..."
    return f"{r} ({type(value).__name__})"


def _is_traced(value: Any) -> bool:
    jax = sys.modules.get("jax")  # no import: without jax loaded there are no tracers (data loaders stay jax-free)
    return jax is not None and isinstance(value, jax.core.Tracer)


def _scalar(value: Any) -> Any:
    """A Python scalar for NumPy/JAX 0-d values; anything else unchanged."""
    if isinstance(value, (bool, int, float)):
        return value
    shape = getattr(value, "shape", None)
    if shape == () and hasattr(value, "dtype") and hasattr(value, "item") and not _is_traced(value):
        kind = getattr(value.dtype, "kind", None)
        if kind in ("b", "i", "u", "f"):
            return value.item()
        if "float" in str(value.dtype):  # ml_dtypes' bfloat16 / float8 (NumPy kind "V")
            return float(value)
    return value


def _bounds_text(lo, hi, lo_open: bool, hi_open: bool) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi}")
    return " and ".join(parts)


def integer(name: str, value: Any, *, min: int | None = None, max: int | None = None,
            optional: bool = False) -> int | None:
    """``value`` as a Python ``int``, or a ``ValueError`` naming ``name`` and the valid range.

    Args:
      name: the argument's name as the caller knows it (``"num_steps"``, ``"train.steps"``).
      value: an ``int``, a NumPy integer or a 0-d integer array. ``bool`` is refused; so are floats, even
        integral ones (``2.0``), and strings.
      min, max: inclusive bounds, or ``None`` for none.
      optional: ``None`` is accepted and returned.
    """
    if value is None and optional:
        return None
    v = _scalar(value)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        valid = "an integer" + (f" {_bounds_text(min, max, False, False)}" if (min, max) != (None, None) else "")
        if optional:
            valid += " or None"
        raise ValueError(f"{name} must be {valid}; got {describe(value)}")
    v = int(v)
    if (min is not None and v < min) or (max is not None and v > max):
        raise ValueError(f"{name} must be an integer {_bounds_text(min, max, False, False)}; got {v}")
    return v


def number(name: str, value: Any, *, min: float | None = None, max: float | None = None,
           min_open: bool = False, max_open: bool = False, finite: bool = True, optional: bool = False,
           traced_ok: bool = False) -> Any:
    """``value`` as a Python ``float``, or a ``ValueError`` naming ``name`` and what is valid.

    Args:
      name: the argument's name.
      value: an ``int``/``float``, a NumPy scalar or a 0-d array (bool is refused).
      min, max: bounds; ``min_open``/``max_open`` make them strict.
      finite: refuse NaN and infinities (the default).
      optional: ``None`` is accepted and returned.
      traced_ok: a JAX tracer is returned unchecked (a hyperparameter traced by ``vmap``/``jit``).
    """
    if value is None and optional:
        return None
    if traced_ok and _is_traced(value):
        return value
    v = _scalar(value)
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        valid = "a number" + (f" {_bounds_text(min, max, min_open, max_open)}" if (min, max) != (None, None) else "")
        if optional:
            valid += " or None"
        raise ValueError(f"{name} must be {valid}; got {describe(value)}")
    v = float(v)
    if math.isnan(v) or (finite and math.isinf(v)):
        bounds = _bounds_text(min, max, min_open, max_open)
        raise ValueError(f"{name} must be a {'finite ' if finite else ''}number{' ' + bounds if bounds else ''} "
                         f"(not NaN{' or infinite' if finite else ''}); got {v}")
    if ((min is not None and (v < min or (min_open and v == min)))
            or (max is not None and (v > max or (max_open and v == max)))):
        raise ValueError(f"{name} must be a number {_bounds_text(min, max, min_open, max_open)}; got {v}")
    return v


def flag(name: str, value: Any) -> bool:
    """``value`` as a ``bool`` (Python or NumPy bool); anything else is a ``ValueError``."""
    v = _scalar(value)
    if not isinstance(v, bool):
        raise ValueError(f"{name} must be True or False; got {describe(value)}")
    return v


def choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``, else a ``ValueError`` listing them."""
    choices = tuple(choices)
    try:
        ok = value in choices
    except TypeError:  # unhashable / array comparisons
        ok = False
    if not ok:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {listed}; got {describe(value)}")
    return value
