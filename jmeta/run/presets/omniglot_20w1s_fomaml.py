"""First-order MAML, Omniglot 20-way 1-shot, the paper's settings (Finn et al. 2017).

    jmeta train --config omniglot-20w1s-fomaml
"""

CONFIG = {'task': {'family': 'omniglot', 'n_way': 20, 'k_support': 1, 'k_query': 1},
 'model': {'name': 'conv4', 'pool': 'stride'},
 'algorithm': {'name': 'fomaml', 'inner_lr': 0.1, 'num_steps': 5},
 'train': {'steps': 60000, 'meta_batch_size': 16, 'checkpoint_every': 2000, 'task_parallel': 'auto'},
 'eval': {'k_query': 1, 'shots': [1], 'steps': 5, 'report_steps': [0, 5], 'batch_size': 50}}
