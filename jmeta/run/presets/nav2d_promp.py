"""ProMP on the point mass with sparse corner goals (Rothfuss et al. 2019): LVC inner estimator, PPO-clip outer
objective with the inner KL penalty, 40 tasks x 20 episodes of 100 steps per meta-step, 1001 meta-steps.

    jmeta train --config nav2d-promp

From ProMP's ``run_scripts/pro-mp_run_point_mass.py`` (``MetaPointEnvCorner``): 20 rollouts per task,
``max_path_length`` 100, discount 0.99, GAE lambda 1, normalised advantages, hidden sizes (64, 64) (tanh, the
policy's default), inner lr 0.1, learning rate 1e-3, 5 ProMP steps, clip 0.3, target inner KL 0.01, initial
penalty 5e-4, ``n_itr`` 1001, meta-batch 40, one inner step. That script keeps the penalty fixed
(``adaptive_inner_kl_penalty: False``); jmeta's ProMP always adapts it towards the target.
"""

CONFIG = {'task': {'family': 'nav2d-corner', 'horizon': 100},
 'model': {'name': 'gaussian-mlp', 'hidden': [64, 64], 'activation': 'tanh'},
 'algorithm': {'name': 'promp', 'num_episodes': 20, 'inner_lr': 0.1, 'outer_lr': 1e-3, 'ppo_epochs': 5,
               'clip_eps': 0.3, 'inner_kl_penalty': 5e-4, 'target_inner_kl': 0.01, 'gamma': 0.99,
               'gae_lambda': 1.0},
 'train': {'steps': 1001, 'meta_batch_size': 40, 'log_every': 10, 'checkpoint_every': 100},
 'eval': {'num_tasks': 40, 'steps': 3, 'report_steps': [1, 3]}}
