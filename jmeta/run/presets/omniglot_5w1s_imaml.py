"""iMAML (GD inner solver), Omniglot 5-way 1-shot (Rajeswaran et al. 2019).

    jmeta train --config omniglot-5w1s-imaml
"""

CONFIG = {'task': {'family': 'omniglot', 'n_way': 5, 'k_support': 1, 'k_query': 1},
 'model': {'name': 'conv4', 'pool': 'stride'},
 'algorithm': {'name': 'imaml', 'reg_lambda': 2.0, 'inner_lr': 0.1, 'num_steps': 16},
 'train': {'steps': 30000, 'meta_batch_size': 32, 'checkpoint_every': 2000, 'task_parallel': 'auto'},
 'eval': {'k_query': 1, 'shots': [1], 'steps': 16, 'report_steps': [0, 16], 'batch_size': 50}}
