"""Meta-LSTM learner (Ravi & Larochelle 2017), omniglot 5-way 1-shot, 5 updates per episode, Conv4-32.

    jmeta train --config omniglot-5w1s-meta-lstm
"""

CONFIG = {'task': {'family': 'omniglot', 'n_way': 5, 'k_support': 1, 'k_query': 15},
 'model': {'name': 'conv4', 'hidden': 32},
 'algorithm': {'name': 'meta-lstm'},
 'train': {'steps': 30000,
           'meta_batch_size': 1,
           'grad_clip': 0.25,
           'checkpoint_every': 2000,
           'task_parallel': 'auto'},
 'eval': {'k_query': 15, 'shots': [1], 'steps': 5, 'report_steps': [0, 5], 'batch_size': 50}}
