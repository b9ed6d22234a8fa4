"""Coordinate-wise LSTM learned optimizer (Andrychowicz et al., 2016).

The optimizer is one small LSTM applied to every scalar coordinate of the
optimizee's parameters as a batch, so it has a handful of meta-parameters no
matter how big the optimizee is. For each coordinate ``i`` with gradient
``g_i`` at step ``t``:

.. math::

    x_i &= \\rho_p(g_i) = \\begin{cases}
        (\\log|g_i| / p,\\ \\operatorname{sign} g_i) & |g_i| \\ge e^{-p} \\\\
        (-1,\\ e^{p} g_i) & \\text{otherwise}
    \\end{cases} \\\\
    (h_i^{t+1}, c_i^{t+1}) &= \\operatorname{LSTM}_\\theta(x_i, h_i^t, c_i^t) \\\\
    u_i &= s \\cdot (w^\\top h_{i,\\text{top}}^{t+1} + b)

and the optimizee update is ``params + u`` (an optax update is *added*). The
preprocessing :math:`\\rho_p` (with ``p = 10``) is the one of Appendix A of
the paper; ``s`` is ``output_scale`` (0.1 by default). The per-coordinate
hidden and cell states live in the optax state, one leaf per parameter leaf
with trailing ``(num_layers, hidden_size)`` axes.

API as in google/learned_optimization (``learned_optimizers/base.py``): a
frozen dataclass holding hyperparameters with ``init(key) -> theta`` and
``opt_fn(theta) -> optax.GradientTransformation``. How the meta-gradient of
``theta`` is estimated is a separate concern (:mod:`.estimators`).

Example:
  >>> import jax, jax.numpy as jnp, optax
  >>> lopt = LSTMOptimizer()
  >>> theta = lopt.init(jax.random.key(0))
  >>> opt = lopt.opt_fn(theta)
  >>> params = {"w": jnp.ones((3, 2))}
  >>> state = opt.init(params)
  >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
  >>> updates, state = opt.update(grads, state, params)
  >>> params = optax.apply_updates(params, updates)

Reference:
  Andrychowicz, Denil, Gomez, Hoffman, Pfau, Schaul, Shillingford, de Freitas.
  "Learning to learn by gradient descent by gradient descent." NeurIPS 2016.
  https://arxiv.org/abs/1606.04474
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from jmeta import validate
from jmeta._struct import frozen_dataclass, hparam
from jmeta.ops import draws

Array = Any
PyTree = Any
KeyPath = tuple[Any, ...]

__all__ = [
    "LSTMOptimizer",
    "LSTMOptimizerState",
    "lstm_optimizer",
    "preprocess_gradients",
]


class LSTMOptimizerState(NamedTuple):
    """State of :func:`lstm_optimizer`.

    Attributes:
      hidden: pytree matching the params; each leaf has shape
        ``param.shape + (num_layers, hidden_size)``.
      cell: like ``hidden``, the LSTM cell states.
    """

    #: Marks a learned optimizer's state for code below this package (``jmeta.inner``), which must not import it.
    learned_optimizer_state = True

    hidden: PyTree
    cell: PyTree


def preprocess_gradients(g: Array, p: float = 10.0) -> Array:
    """Log-magnitude/sign gradient preprocessing of the paper (Appendix A).

    .. math::
        \\rho_p(g) = (\\log|g|/p,\\ \\operatorname{sign} g) \\text{ if }
        |g| \\ge e^{-p} \\text{ else } (-1,\\ e^{p} g).

    Differentiable everywhere except at the switching point (no NaN at
    ``g = 0``).

    Args:
      g: an array of gradients, any shape.
      p: the scale ``p > 0`` (10 in the paper).

    Returns:
      An array of shape ``g.shape + (2,)``.
    """
    g = jnp.asarray(g)
    threshold = math.exp(-p)
    abs_g = jnp.abs(g)
    big = abs_g >= threshold
    safe_abs = jnp.where(big, abs_g, 1.0)  # keeps log and its gradient finite
    first = jnp.where(big, jnp.log(safe_abs) / p, -1.0)
    second = jnp.where(big, jnp.sign(g), math.exp(p) * g)
    return jnp.stack([first, second], axis=-1).astype(g.dtype)


def _validate_config(hidden_size, num_layers, preprocess_p, output_scale, groups, group_names):
    validate.integer("hidden_size", hidden_size, min=1)
    validate.integer("num_layers", num_layers, min=1)
    validate.number("preprocess_p", preprocess_p, min=0, min_open=True)
    validate.number("output_scale", output_scale, min=0, min_open=True)
    if groups is not None and not callable(groups):
        raise ValueError(
            "groups must be None or a function from a parameter's key path to a "
            f"group name, got {groups!r}"
        )
    if groups is not None:
        if (
            group_names is None
            or isinstance(group_names, str)
            or len(group_names) == 0
            or not all(isinstance(n, str) for n in group_names)
            or len(set(group_names)) != len(group_names)
        ):
            raise ValueError(
                "group_names must be a non-empty tuple of distinct str naming every "
                f"group that groups(...) can return, got {group_names!r}"
            )
    elif group_names is not None:
        raise ValueError("group_names is only valid together with groups; got groups=None")


def _theta_shapes(hidden_size: int, num_layers: int) -> dict:
    """The shape of every array of one LSTM's meta-parameters, as :func:`_init_single` makes them
    (derived from it with ``jax.eval_shape``: nothing is computed)."""
    tree = jax.eval_shape(lambda: _init_single(jax.random.key(0), hidden_size, num_layers))
    return jax.tree.map(lambda a: tuple(a.shape), tree)


def _check_theta_single(theta_g: Any, hidden_size: int, num_layers: int, where: str = "theta") -> None:
    """Checks one LSTM's meta-parameters against ``hidden_size``/``num_layers`` (static shapes only).

    Raises a ValueError naming the first entry that does not fit, the expected
    keys or shape, and what ``theta`` was made for, instead of a shape error
    deep inside the LSTM (or a silently ignored extra layer).
    """
    config = f"hidden_size={hidden_size}, num_layers={num_layers}"

    def made_for() -> str:
        # Best-effort description of the configuration theta_g came from.
        try:
            layers = [k for k in theta_g["lstm"] if isinstance(k, str) and k.startswith("layer_")]
            hs = jnp.shape(theta_g["out"]["w"])[0]
            return f"; {where} was made for hidden_size={hs}, num_layers={len(layers)}"
        except Exception:  # noqa: BLE001 - only a hint in the message
            return ""

    def check(node: Any, expected: dict, path: str) -> None:
        if not isinstance(node, dict) or set(node) != set(expected):
            got = sorted(map(str, node)) if isinstance(node, dict) else type(node).__name__
            raise ValueError(
                f"{path} must be a dict with keys {sorted(expected)} for {config} "
                f"(as LSTMOptimizer.init makes), got {got}{made_for()}"
            )
        for k in node:  # in theta's own order (the first entry that does not fit is named)
            want = expected[k]
            sub = f"{path}[{k!r}]"
            if isinstance(want, dict):
                check(node[k], want, sub)
                continue
            got = getattr(node[k], "shape", None)
            if got is None or tuple(got) != want:
                got_s = f"shape {tuple(got)}" if got is not None else type(node[k]).__name__
                raise ValueError(
                    f"{sub} must be an array of shape {want} for {config}, got {got_s}{made_for()}"
                )

    if not (isinstance(theta_g, dict) and "lstm" in theta_g and "out" in theta_g):
        raise ValueError(
            f"{where} must be a dict with 'lstm' and 'out' (from LSTMOptimizer.init); "
            f"got keys {list(theta_g) if isinstance(theta_g, dict) else type(theta_g)}"
        )
    check(theta_g, _theta_shapes(hidden_size, num_layers), where)


def _init_single(key: Array, hidden_size: int, num_layers: int) -> dict:
    """Meta-parameters of one LSTM (uniform Glorot-style init, forget bias 1).

    Uses the default float dtype (float32, or float64 with ``jax_enable_x64``).
    """
    dtype = jnp.result_type(float)
    keys = jax.random.split(key, num_layers + 1)
    lstm = {}
    in_size = 2
    for layer in range(num_layers):
        kx, kh = jax.random.split(keys[layer])
        scale = 1.0 / math.sqrt(in_size + hidden_size)
        # jmeta.ops.draws: the same numbers as jax.random's, a cheaper compile
        w_x = draws.uniform(kx, (in_size, 4 * hidden_size), dtype, -scale, scale) * math.sqrt(3)
        w_h = draws.uniform(kh, (hidden_size, 4 * hidden_size), dtype, -scale, scale) * math.sqrt(3)
        # Gates are laid out as [input, forget, cell, output]; forget bias = 1.
        b = jnp.zeros((4 * hidden_size,), dtype).at[hidden_size : 2 * hidden_size].set(1.0)
        lstm[f"layer_{layer}"] = {"w_x": w_x, "w_h": w_h, "b": b}
        in_size = hidden_size
    w_out = draws.normal(keys[-1], (hidden_size, 1), dtype) / math.sqrt(hidden_size)
    return {"lstm": lstm, "out": {"w": w_out, "b": jnp.zeros((1,), dtype)}}


def _lstm_apply(theta_g: dict, x: Array, h: Array, c: Array, output_scale: float):
    """Runs the stacked LSTM on a batch of coordinates.

    Args:
      theta_g: meta-parameters of one LSTM (see :func:`_init_single`).
      x: ``[n, 2]`` preprocessed gradients.
      h: ``[n, num_layers, hidden]`` hidden states.
      c: like ``h``, cell states.
      output_scale: multiplies the linear read-out.

    Returns:
      ``(update [n], new_h, new_c)``.
    """
    num_layers = h.shape[-2]
    hs, cs = [], []
    inp = x
    for layer in range(num_layers):
        p = theta_g["lstm"][f"layer_{layer}"]
        z = inp @ p["w_x"] + h[:, layer] @ p["w_h"] + p["b"]
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c_new = jax.nn.sigmoid(f) * c[:, layer] + jax.nn.sigmoid(i) * jnp.tanh(g)
        h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
        hs.append(h_new)
        cs.append(c_new)
        inp = h_new
    out = inp @ theta_g["out"]["w"] + theta_g["out"]["b"]
    return output_scale * out[:, 0], jnp.stack(hs, axis=-2), jnp.stack(cs, axis=-2)


@functools.partial(jax.jit, static_argnums=(4, 5))
def _leaf_update(theta_g: dict, g: Array, h: Array, c: Array, preprocess_p: float, output_scale: float):
    """One parameter leaf's update: preprocessing, the LSTM and the reshapes, as one program.

    Jitted so that eager (un-jitted) use compiles one program per leaf shape instead of one per
    primitive; inside an outer ``jit``/``vmap``/``grad`` it is inlined as usual.

    Returns:
      ``(update, new_h, new_c)`` shaped like ``g``, ``h`` and ``c``.
    """
    g = jnp.asarray(g)
    num_layers, hidden_size = h.shape[-2:]
    x = preprocess_gradients(g.reshape(-1), preprocess_p)
    th = jax.tree.map(lambda t: t.astype(g.dtype), theta_g)
    u, h2, c2 = _lstm_apply(
        th, x, h.reshape(-1, num_layers, hidden_size), c.reshape(-1, num_layers, hidden_size), output_scale
    )
    return u.reshape(g.shape), h2.reshape(h.shape), c2.reshape(c.shape)


def _group_names(name: str, value):
    return value if value is None or isinstance(value, str) else tuple(value)


@frozen_dataclass
class LSTMOptimizer:
    """Coordinate-wise two-layer LSTM optimizer of Andrychowicz et al. (2016).

    Attributes:
      hidden_size: LSTM hidden units per layer (20 in the paper).
      num_layers: stacked LSTM layers (2 in the paper).
      preprocess_p: ``p`` of the gradient preprocessing (10 in the paper).
      output_scale: the LSTM's linear read-out is multiplied by this (0.1).
      groups: ``None`` for one LSTM shared by all coordinates, or a function
        from a parameter leaf's key path (as given by
        ``jax.tree_util.tree_flatten_with_path``) to a group name; each group
        has its own LSTM (the paper's separate conv / dense LSTMs).
      group_names: the names ``groups`` can return (needed by ``init``, which
        does not see the parameters). Only with ``groups``.

    Example with groups (conv vs dense layers)::

        lopt = LSTMOptimizer(
            groups=lambda path: "conv" if "conv" in jax.tree_util.keystr(path) else "dense",
            group_names=("conv", "dense"))
        theta = lopt.init(key)    # {"conv": {...}, "dense": {...}}
    """

    hidden_size: int = 20
    num_layers: int = 2
    preprocess_p: float = 10.0
    output_scale: float = 0.1
    groups: Callable[[KeyPath], str] | None = None
    group_names: Sequence[str] | None = hparam(None, _group_names)

    def __post_init__(self):
        _validate_config(
            self.hidden_size,
            self.num_layers,
            self.preprocess_p,
            self.output_scale,
            self.groups,
            self.group_names,
        )

    def init(self, key: Array) -> PyTree:
        """Samples meta-parameters ``theta``.

        Args:
          key: a ``jax.random.key``.

        Returns:
          A dict of arrays: ``{"lstm": {"layer_k": {"w_x", "w_h", "b"}}, "out":
          {"w", "b"}}``, or ``{group_name: that dict}`` with ``groups``.
        """
        if self.groups is None:
            return _init_single(key, self.hidden_size, self.num_layers)
        keys = jax.random.split(key, len(self.group_names))
        return {
            name: _init_single(k, self.hidden_size, self.num_layers)
            for name, k in zip(self.group_names, keys)
        }

    def opt_fn(self, theta: PyTree, is_training: bool = False) -> optax.GradientTransformation:
        """The optax transformation defined by ``theta``.

        Args:
          theta: meta-parameters from :meth:`init` (or trained).
          is_training: unused; kept for learned_optimization compatibility.

        Returns:
          An ``optax.GradientTransformation`` with :class:`LSTMOptimizerState`.
        """
        del is_training
        return lstm_optimizer(
            theta,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            preprocess_p=self.preprocess_p,
            output_scale=self.output_scale,
            groups=self.groups,
            group_names=self.group_names,
        )

    def num_meta_params(self, theta: PyTree) -> int:
        """Total number of scalars in ``theta``."""
        return sum(int(x.size) for x in jax.tree.leaves(theta))


def lstm_optimizer(
    theta: PyTree,
    *,
    hidden_size: int = 20,
    num_layers: int = 2,
    preprocess_p: float = 10.0,
    output_scale: float = 0.1,
    groups: Callable[[KeyPath], str] | None = None,
    group_names: Sequence[str] | None = None,
) -> optax.GradientTransformation:
    """Coordinate-wise LSTM optimizer as an optax transformation.

    Every scalar coordinate of the gradient goes through the same LSTM
    (one per group with ``groups``), with its own hidden/cell state kept in
    the returned state. See the module docstring for the math.

    Args:
      theta: meta-parameters (from :meth:`LSTMOptimizer.init`).
      hidden_size: LSTM hidden units per layer; must match ``theta``.
      num_layers: LSTM layers; must match ``theta``.
      preprocess_p: ``p`` of the gradient preprocessing.
      output_scale: multiplies the LSTM read-out.
      groups: optional function from a parameter's key path to a group name.
      group_names: names ``groups`` can return (keys of ``theta``).

    Returns:
      ``optax.GradientTransformation`` whose state is an
      :class:`LSTMOptimizerState`. ``update(grads, state, params=None)``
      ignores ``params``.

    Raises:
      ValueError: on a bad configuration, or when ``theta``'s layers
        (``layer_0 ... layer_{num_layers-1}``, no more, no fewer) or array
        shapes do not match ``hidden_size``/``num_layers``.

    Reference:
      Andrychowicz et al., "Learning to learn by gradient descent by gradient
      descent", NeurIPS 2016.
    """
    if group_names is not None and not isinstance(group_names, str):
        group_names = tuple(group_names)
    _validate_config(hidden_size, num_layers, preprocess_p, output_scale, groups, group_names)
    if groups is not None:
        missing = [n for n in group_names if not (isinstance(theta, dict) and n in theta)]
        if missing:
            raise ValueError(
                f"theta must have one entry per group name {group_names}; missing {missing}"
            )
        for name in group_names:
            _check_theta_single(theta[name], hidden_size, num_layers, f"theta[{name!r}]")
    else:
        _check_theta_single(theta, hidden_size, num_layers)

    def theta_for(path: KeyPath) -> dict:
        if groups is None:
            return theta
        name = groups(path)
        if name not in group_names:
            raise ValueError(
                f"groups returned {name!r} for parameter {jax.tree_util.keystr(path)}; "
                f"valid group names are {group_names}"
            )
        return theta[name]

    def init_fn(params):
        def zeros(p):
            p = jnp.asarray(p)
            return jnp.zeros(p.shape + (num_layers, hidden_size), p.dtype)

        return LSTMOptimizerState(hidden=jax.tree.map(zeros, params), cell=jax.tree.map(zeros, params))

    def update_fn(updates, state, params=None):
        del params
        flat, treedef = jax.tree_util.tree_flatten_with_path(updates)
        hidden = treedef.flatten_up_to(state.hidden)
        cell = treedef.flatten_up_to(state.cell)
        new_u, new_h, new_c = [], [], []
        for (path, g), h, c in zip(flat, hidden, cell):
            u, h2, c2 = _leaf_update(theta_for(path), g, h, c, preprocess_p, output_scale)
            new_u.append(u)
            new_h.append(h2)
            new_c.append(c2)
        return (
            treedef.unflatten(new_u),
            LSTMOptimizerState(hidden=treedef.unflatten(new_h), cell=treedef.unflatten(new_c)),
        )

    return optax.GradientTransformation(init_fn, update_fn)
