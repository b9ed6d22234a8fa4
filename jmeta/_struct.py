"""Frozen dataclasses of hyperparameters that are pytrees with no leaves.

:func:`static_dataclass` is how jmeta's algorithms (and other option holders) are declared::

    @static_dataclass
    class MAML:
        apply: Callable
        inner_lr: float = hparam(0.01, validate.number, min=0, min_open=True)
        num_steps: int = hparam(1, validate.integer, min=1)

        def __post_init__(self):      # checks only: every field already holds its final value
            ...

It gives three things:

* **Checked, normalised fields without mutation.** A field declared with :func:`hparam` names a check
  ``check(name, value, **options) -> value`` (the :mod:`jmeta.validate` functions have this form). The
  checks run in the constructor *before* the dataclass's own ``__init__`` stores the fields, so the stored
  value is already the normalised one (``np.float32(0.1)`` is stored as ``0.1``) and ``__post_init__`` only
  checks (relations between fields). The same happens for ``dataclasses.replace``, which calls the
  constructor. A subclass that redeclares a field to change its default keeps the base class's check.
  (Converting in ``__post_init__`` would need ``object.__setattr__`` on a frozen instance; a converting
  classmethod would leave ``cls(...)`` and ``dataclasses.replace`` unconverted.)
* **A pytree whose fields are all static.** Flattening gives no leaves; the treedef's auxiliary data
  compares the instances' types and field values, so an instance can be passed to ``jax.jit`` as an
  *argument*: equal hyperparameters share one compiled program, different ones compile anew.
  Unflattening gives back the very instance (no second construction, no second validation inside a
  trace; ``jax.tree_util.register_dataclass(cls, data_fields=[], meta_fields=[...])`` would call the
  constructor on every unflatten, re-running checks such as the inner transform's probe inside the
  trace). ``jit`` compares the fields with ``==``; anything that hashes the treedef's data needs them
  hashable too, so checks store tuples, not lists.
* **Identity equality of the instances themselves** by default (``eq=False``, as algorithms had):
  ``a == b`` is ``a is b`` and ``hash`` is the identity hash, so instances holding traced values (a
  vectorised sweep's ``dataclasses.replace(alg, inner_lr=tracer)``) stay usable as dictionary keys and
  weak references. ``eq=True`` gives value equality (task families, hashable static ``jit`` arguments).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable

__all__ = ["frozen_dataclass", "hparam", "static_dataclass"]

_CHECK = "jmeta.check"


def hparam(default: Any = dataclasses.MISSING, check: Callable[..., Any] | None = None, *,
           default_factory: Any = dataclasses.MISSING, **options) -> Any:
    """A dataclass field whose value passes ``check(name, value, **options)`` at construction.

    Args:
      default: the field's default (omit for a required field). Defaults are not checked: they are the
        class author's, already in normalised form.
      default_factory: as :func:`dataclasses.field`'s (instead of ``default``).
      check: ``check(name, value, **options)`` returning the value to store (normalised) or raising a
        ``ValueError``/``TypeError`` naming ``name``; e.g. :func:`jmeta.validate.number`.
      **options: passed to ``check``.
    """
    metadata = {} if check is None else {_CHECK: functools.partial(check, **options) if options else check}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def _checks(cls) -> dict[str, Callable[..., Any]]:
    """``{field: check}`` over the class's dataclass bases: a subclass redeclaring a field without a check
    (to change its default) keeps the base's check."""
    checks: dict[str, Callable[..., Any]] = {}
    for klass in reversed(cls.__mro__):
        own = klass.__dict__.get("__dataclass_fields__", {})
        for name, f in own.items():
            if _CHECK in f.metadata:
                checks[name] = f.metadata[_CHECK]
    return checks


class _Static:
    """A static instance as a treedef's auxiliary data: equal when the types and all field values are."""

    __slots__ = ("obj", "key")

    def __init__(self, obj):
        self.obj = obj
        self.key = (type(obj), tuple(getattr(obj, f.name) for f in dataclasses.fields(obj)))

    def __eq__(self, other):
        return isinstance(other, _Static) and (self.obj is other.obj or self.key == other.key)

    def __hash__(self):
        try:
            return hash(self.key)
        except TypeError:
            bad = [f.name for f in dataclasses.fields(self.obj) if not _hashable(getattr(self.obj, f.name))]
            raise TypeError(f"{type(self.obj).__name__} is static pytree data being hashed, so its fields must be "
                            f"hashable; field(s) {', '.join(bad)} are not (use tuples instead of lists, and close "
                            "over array-valued settings)") from None

    def __repr__(self):
        return f"static({self.obj!r})"


def _hashable(value) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _flatten(obj):
    return (), _Static(obj)


def _unflatten(aux: _Static, children):
    del children
    return aux.obj


def frozen_dataclass(cls=None, /, *, eq: bool = True):
    """``dataclasses.dataclass(frozen=True, eq=eq)`` whose :func:`hparam` fields are checked at construction.

    For option holders that are not pytrees (or hold arrays); :func:`static_dataclass` adds the pytree.
    Imports nothing heavy (usable by jax-free modules such as the data loaders).
    """
    if cls is None:
        return functools.partial(frozen_dataclass, eq=eq)
    cls = dataclasses.dataclass(frozen=True, eq=eq)(cls)
    checks = _checks(cls)
    if checks:
        init = cls.__init__
        signature = inspect.signature(init)

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            try:
                bound = signature.bind(self, *args, **kwargs)
            except TypeError:  # missing or unknown arguments: the dataclass's own message
                init(self, *args, **kwargs)
                raise
            for name, value in bound.arguments.items():
                if name in checks:
                    bound.arguments[name] = checks[name](name, value)
            init(*bound.args, **bound.kwargs)

        cls.__init__ = __init__
    return cls


def static_dataclass(cls=None, /, *, eq: bool = False):
    """:func:`frozen_dataclass` that is also a pytree with no leaves (all fields static).

    Use as a class decorator (``@static_dataclass`` or ``@static_dataclass(eq=True)``), also on every
    subclass (each dataclass gets its own constructor and its own pytree registration). See the module
    docstring.

    Args:
      eq: value equality and a field hash for the instances themselves (for value types such as task
        families, usable as ``jit`` static arguments); the default keeps identity equality (algorithms).
        The pytree's treedef compares field values either way.
    """
    if cls is None:
        return functools.partial(static_dataclass, eq=eq)
    import jax

    cls = frozen_dataclass(cls, eq=eq)
    jax.tree_util.register_pytree_node(cls, _flatten, _unflatten)
    return cls
