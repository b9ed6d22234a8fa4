"""RL^2 on the point mass with sparse corner goals (the RL^2 baseline of Rothfuss et al. 2019): a Gaussian GRU
policy over trials of 2 episodes of 100 steps, PPO-clip, 200 trials per meta-step, 1000 meta-steps.

    jmeta train --config nav2d-rl2

From ProMP's ``configs/rl2_config.json`` (github.com/jonasrothfuss/ProMP, commit aaf46d4): meta-batch 200,
``rollouts_per_meta_task`` 2 (the episodes of a trial), ``max_path_length`` 100, hidden size 64, discount 0.99,
GAE lambda 1, normalised advantages, learning rate 1e-3, 5 epochs of 1 minibatch, ``n_itr`` 1000; clip 0.2 and
no entropy bonus (``maml_zoo/algos/ppo.py``). The environment is ``nav2d-corner`` as in ``nav2d-promp`` (ProMP's
point-mass experiments). Differences: jmeta's RL^2 policy is a GRU (ProMP's config: an LSTM) whose value head
replaces ProMP's linear feature baseline (value coefficient 0.5), and gradients are clipped at norm 1 (jmeta's
RL^2 default).
"""

CONFIG = {'task': {'family': 'nav2d-corner', 'horizon': 100},
 'model': {'name': 'gaussian-gru', 'hidden_size': 64},
 'algorithm': {'name': 'rl2', 'num_episodes': 2, 'discount': 0.99, 'gae_lambda': 1.0, 'clip_eps': 0.2,
               'entropy_coef': 0.0, 'epochs': 5, 'num_minibatches': 1, 'learning_rate': 1e-3,
               'normalize_advantages': True},
 'train': {'steps': 1000, 'meta_batch_size': 200, 'log_every': 10, 'checkpoint_every': 100},
 'eval': {'num_tasks': 200, 'steps': 0, 'report_steps': [0]}}
