"""Meta-RL environments as pure JAX functions (see :mod:`jmeta.rl.envs.base` for the contract)."""

from jmeta.rl.envs.base import Env, check_env, index_task, task_axis_size

__all__ = ["Env", "check_env", "index_task", "task_axis_size"]
