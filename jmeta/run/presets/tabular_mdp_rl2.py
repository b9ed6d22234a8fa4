"""RL^2 on random tabular MDPs (Duan et al. 2016, section 4.2): 10 states, 5 actions, episodes of 10 steps,
trials of n = 10 episodes, a GRU policy of 256 units, PPO-clip.

    jmeta train --config tabular-mdp-rl2

The paper's tabular setting (|S| = 10, |A| = 5, horizon 10, n in {10, 25, 50, 75, 100}; n = 10 here) and GRU
width 256, discount 0.99. The paper's outer learner is TRPO with GAE; jmeta's RL^2 uses PPO-clip
(``jmeta.rl.RL2``) with its defaults and 64 trials per meta-step.
"""

CONFIG = {'task': {'family': 'tabular-mdp', 'num_states': 10, 'num_actions': 5, 'horizon': 10},
 'model': {'name': 'gru', 'hidden_size': 256},
 'algorithm': {'name': 'rl2', 'num_episodes': 10, 'discount': 0.99},
 'train': {'steps': 500, 'meta_batch_size': 64, 'log_every': 10, 'checkpoint_every': 100},
 'eval': {'num_tasks': 1000, 'steps': 0, 'report_steps': [0]}}
