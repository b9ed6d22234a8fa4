"""Small problems shared by the tests of ``jmeta.train`` (pure jnp models: fast to trace)."""

from __future__ import annotations


def tiny_model(hidden: int = 16, *, with_state: bool = True, seed: int = 0):
    """A 1-``hidden``-1 tanh MLP as a :class:`~jmeta.models.Model`.

    With ``with_state`` the model carries a float state (a running mean of its
    inputs, updated in training mode) so that state averaging is exercised.
    """
    import jax
    import jax.numpy as jnp

    from jmeta.models import from_apply

    def apply(params, state, x, *, train):
        h = jnp.tanh(x @ params["w1"] + params["b1"])
        out = h @ params["w2"] + params["b2"]
        if with_state and train:
            state = {"mean": 0.9 * state["mean"] + 0.1 * jnp.mean(x).astype(state["mean"].dtype)}
        return out, state

    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {"w1": jax.random.normal(k1, (1, hidden)), "b1": jnp.zeros(hidden),
              "w2": jax.random.normal(k2, (hidden, 1)) / 4, "b2": jnp.zeros(1)}
    return from_apply(apply, params, {"mean": jnp.zeros(())} if with_state else {})


def record_grads():
    """An optax "optimizer" that stores the meta-gradient in its state and leaves the parameters alone."""
    import jax
    import jax.numpy as jnp
    import optax

    return optax.GradientTransformation(
        lambda p: jax.tree.map(jnp.zeros_like, p),
        lambda g, s, p=None: (jax.tree.map(jnp.zeros_like, g), g))
