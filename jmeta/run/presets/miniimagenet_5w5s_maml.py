"""MAML, mini-ImageNet 5-way 5-shot, Conv4-32 with max-pool, the paper's settings (Finn et al. 2017).

    jmeta train --config miniimagenet-5w5s-maml
"""

CONFIG = {'task': {'family': 'miniimagenet', 'n_way': 5, 'k_support': 5, 'k_query': 15},
 'model': {'name': 'conv4', 'hidden': 32},
 'algorithm': {'name': 'maml', 'num_steps': 5},
 'train': {'steps': 60000, 'meta_batch_size': 2, 'checkpoint_every': 2000, 'task_parallel': 'auto'},
 'eval': {'k_query': 15, 'shots': [5], 'report_steps': [0, 10], 'batch_size': 50}}
