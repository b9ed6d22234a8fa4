"""Meta-RL environments as pure JAX functions (see :mod:`jmeta.rl.envs.base` for the contract).

The MuJoCo MJX locomotion tasks (:mod:`jmeta.rl.envs.locomotion`, extra ``mjx``) and the MetaWorld adapter
(:mod:`jmeta.rl.envs.metaworld`, extra ``metaworld``) are imported from their modules, so that ``import
jmeta.rl`` never imports MuJoCo.
"""

from jmeta.rl.envs.bandit import BernoulliBandit
from jmeta.rl.envs.base import Env, check_env, index_task, task_axis_size
from jmeta.rl.envs.nav2d import CORNERS, Nav2D, Nav2DCorner
from jmeta.rl.envs.tabular import RandomTabularMDP

__all__ = ["Env", "check_env", "index_task", "task_axis_size", "BernoulliBandit", "RandomTabularMDP",
           "CORNERS", "Nav2D", "Nav2DCorner"]
