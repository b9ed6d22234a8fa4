"""Meta-reinforcement learning: environments as pure JAX functions, rollouts by ``lax.scan``, whole
meta-batches of rollouts, inner adaptation and outer updates inside one compiled step."""

from jmeta.rl import envs

__all__ = ["envs"]
