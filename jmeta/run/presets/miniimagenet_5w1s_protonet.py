"""Prototypical Networks, mini-ImageNet 5-way 1-shot, Conv4-64 (Snell et al. 2017).

    jmeta train --config miniimagenet-5w1s-protonet
"""

CONFIG = {'task': {'family': 'miniimagenet', 'n_way': 30, 'k_support': 1, 'k_query': 15},
 'model': {'name': 'conv4'},
 'algorithm': {'name': 'protonet'},
 'train': {'steps': 30000,
           'meta_batch_size': 1,
           'lr_decay_every': 2000,
           'checkpoint_every': 2000,
           'task_parallel': 'auto'},
 'eval': {'n_way': 5, 'k_query': 15, 'shots': [1], 'steps': 0, 'report_steps': [0], 'batch_size': 50}}
