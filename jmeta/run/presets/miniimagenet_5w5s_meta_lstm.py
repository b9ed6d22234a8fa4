"""Meta-LSTM learner (Ravi & Larochelle 2017), miniimagenet 5-way 5-shot, 8 updates per episode, Conv4-32.

    jmeta train --config miniimagenet-5w5s-meta-lstm
"""

CONFIG = {'task': {'family': 'miniimagenet', 'n_way': 5, 'k_support': 5, 'k_query': 15},
 'model': {'name': 'conv4', 'hidden': 32},
 'algorithm': {'name': 'meta-lstm', 'num_steps': 8},
 'train': {'steps': 50000,
           'meta_batch_size': 1,
           'grad_clip': 0.25,
           'checkpoint_every': 2000,
           'task_parallel': 'auto'},
 'eval': {'k_query': 15, 'shots': [5], 'steps': 8, 'report_steps': [0, 8], 'batch_size': 50}}
