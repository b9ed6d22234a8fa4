"""Meta-reinforcement learning: environments as pure JAX functions, rollouts by ``lax.scan``, whole
meta-batches of rollouts, inner adaptation and outer updates inside one compiled step."""

from jmeta.rl import envs
from jmeta.rl.estimators import dice_surrogate, lvc_surrogate, magic_box, reinforce_surrogate
from jmeta.rl.maml_rl import MAMLRL, MetaRLState, conjugate_gradient, promp
from jmeta.rl.policies import GaussianPolicy, gaussian_entropy, gaussian_kl, gaussian_log_prob, gaussian_mlp_policy
from jmeta.rl.returns import (discounted_returns, fit_linear_baseline, gae, linear_baseline_values,
                              normalize_advantages)
from jmeta.rl.rollout import Trajectories, check_policy_env, check_tasks, episode_returns, rollout, rollout_tasks

__all__ = ["envs"]
__all__ += ["dice_surrogate", "lvc_surrogate", "magic_box", "reinforce_surrogate"]
__all__ += ["MAMLRL", "MetaRLState", "conjugate_gradient", "promp"]
__all__ += ["GaussianPolicy", "gaussian_entropy", "gaussian_kl", "gaussian_log_prob", "gaussian_mlp_policy"]
__all__ += ["discounted_returns", "fit_linear_baseline", "gae", "linear_baseline_values", "normalize_advantages"]
__all__ += ["Trajectories", "check_policy_env", "check_tasks", "episode_returns", "rollout", "rollout_tasks"]
