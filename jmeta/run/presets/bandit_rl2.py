"""RL^2 on Bernoulli bandits (Duan et al. 2016, section 4.1): k = 5 arms, trials of n = 10 one-pull episodes,
a GRU policy of 256 units reading [obs, previous action, previous reward, episode start], PPO-clip.

    jmeta train --config bandit-rl2

The paper's bandit setting (k = 5, n in {10, 100, 500}; n = 10 here) and GRU width 256, with discount 0.99.
The paper's outer learner is TRPO with GAE; jmeta's RL^2 uses PPO-clip (``jmeta.rl.RL2``), with its defaults
(lambda 0.95, clip 0.2, 4 epochs of 4 minibatches, Adam 3e-3) and 64 trials per meta-step.
"""

CONFIG = {'task': {'family': 'bandit', 'num_arms': 5, 'horizon': 1},
 'model': {'name': 'gru', 'hidden_size': 256},
 'algorithm': {'name': 'rl2', 'num_episodes': 10, 'discount': 0.99},
 'train': {'steps': 500, 'meta_batch_size': 64, 'log_every': 10, 'checkpoint_every': 100},
 'eval': {'num_tasks': 1000, 'steps': 0, 'report_steps': [0]}}
