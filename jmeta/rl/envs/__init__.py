"""Meta-RL environments as pure JAX functions (see :mod:`jmeta.rl.envs.base` for the contract)."""

from jmeta.rl.envs.base import Env, check_env, index_task, task_axis_size

__all__ = ["Env", "check_env", "index_task", "task_axis_size"]
from jmeta.rl.envs.bandit import BernoulliBandit
from jmeta.rl.envs.tabular import RandomTabularMDP

__all__ += ["BernoulliBandit", "RandomTabularMDP"]
