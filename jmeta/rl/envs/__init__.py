"""Meta-RL environments as pure JAX functions (see :mod:`jmeta.rl.envs.base` for the contract)."""

from jmeta.rl.envs.base import Env, check_env, index_task, task_axis_size
from jmeta.rl.envs.nav2d import CORNERS, Nav2D, Nav2DCorner

__all__ = ["Env", "check_env", "index_task", "task_axis_size"]
__all__ += ["CORNERS", "Nav2D", "Nav2DCorner"]
