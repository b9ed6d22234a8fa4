"""Meta-reinforcement learning: environments as pure JAX functions, rollouts by ``lax.scan``, whole
meta-batches of rollouts, inner adaptation and outer updates inside one compiled step.

Every algorithm implements :class:`MetaRLAlgorithm` and is listed in :data:`ALGORITHMS`;
:func:`make_rl_meta_step` compiles its meta-step, optionally split over a device mesh."""

from jmeta.rl import envs
from jmeta.rl.base import (ALGORITHMS, CompiledMetaStep, MetaRLAlgorithm, algorithm_classes, draw_tasks,
                           make_rl_meta_step)
from jmeta.rl.estimators import dice_surrogate, lvc_surrogate, magic_box, reinforce_surrogate
from jmeta.rl.maml_rl import MAMLRL, MetaRLState, ProMP, conjugate_gradient, promp
from jmeta.rl.policies import GaussianPolicy, gaussian_entropy, gaussian_kl, gaussian_log_prob, gaussian_mlp_policy
from jmeta.rl.ppo import PPOConfig, clip_surrogate, ppo_loss, ppo_update
from jmeta.rl.recurrent import RecurrentPolicy, gru_policy
from jmeta.rl.returns import (discounted_returns, fit_linear_baseline, gae, linear_baseline_values,
                              normalize_advantages)
from jmeta.rl.rl2 import RL2, RL2State, Trial, rl2_input, rl2_input_size, rollout_trial, trial_gae
from jmeta.rl.rollout import Trajectories, check_policy_env, check_tasks, episode_returns, rollout, rollout_tasks

__all__ = ["envs",
           "ALGORITHMS", "CompiledMetaStep", "MetaRLAlgorithm", "algorithm_classes", "draw_tasks",
           "make_rl_meta_step",
           "dice_surrogate", "lvc_surrogate", "magic_box", "reinforce_surrogate",
           "MAMLRL", "MetaRLState", "ProMP", "conjugate_gradient", "promp",
           "GaussianPolicy", "gaussian_entropy", "gaussian_kl", "gaussian_log_prob", "gaussian_mlp_policy",
           "PPOConfig", "clip_surrogate", "ppo_loss", "ppo_update",
           "RecurrentPolicy", "gru_policy",
           "discounted_returns", "fit_linear_baseline", "gae", "linear_baseline_values", "normalize_advantages",
           "RL2", "RL2State", "Trial", "rl2_input", "rl2_input_size", "rollout_trial", "trial_gae",
           "Trajectories", "check_policy_env", "check_tasks", "episode_returns", "rollout", "rollout_tasks"]
