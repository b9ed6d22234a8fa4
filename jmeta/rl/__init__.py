"""Meta-reinforcement learning: environments as pure JAX functions, rollouts by ``lax.scan``, whole
meta-batches of rollouts, inner adaptation and outer updates inside one compiled step."""

from jmeta.rl import envs

__all__ = ["envs"]
from jmeta.rl.ppo import PPOConfig, clip_surrogate, normalize_advantages, ppo_loss, ppo_update
from jmeta.rl.recurrent import RecurrentPolicy, gru_policy
from jmeta.rl.rl2 import RL2, RL2State, Trial, rl2_input, rl2_input_size, rollout_trial, trial_gae

__all__ += ["PPOConfig", "clip_surrogate", "normalize_advantages", "ppo_loss", "ppo_update", "RecurrentPolicy",
            "gru_policy", "RL2", "RL2State", "Trial", "rl2_input", "rl2_input_size", "rollout_trial", "trial_gae"]
