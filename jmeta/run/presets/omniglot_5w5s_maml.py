"""MAML, Omniglot 5-way 5-shot, the paper's settings (Finn et al. 2017).

    jmeta train --config omniglot-5w5s-maml
"""

CONFIG = {'task': {'family': 'omniglot', 'n_way': 5, 'k_support': 5, 'k_query': 5},
 'model': {'name': 'conv4', 'pool': 'stride'},
 'algorithm': {'name': 'maml', 'inner_lr': 0.4},
 'train': {'steps': 60000, 'meta_batch_size': 32, 'checkpoint_every': 2000, 'task_parallel': 'auto'},
 'eval': {'k_query': 5, 'shots': [5], 'steps': 3, 'report_steps': [0, 3], 'batch_size': 50}}
