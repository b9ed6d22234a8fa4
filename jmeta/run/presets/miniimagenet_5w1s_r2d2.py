"""R2-D2 ridge head, ResNet-12, mini-ImageNet 5-way 1-shot (Bertinetto et al. 2019; MetaOptNet's schedule).

    jmeta train --config miniimagenet-5w1s-r2d2
"""

CONFIG = {'task': {'family': 'miniimagenet', 'n_way': 5, 'k_support': 1, 'k_query': 6},
 'model': {'name': 'resnet12'},
 'algorithm': {'name': 'r2d2'},
 'train': {'steps': 60000,
           'meta_batch_size': 8,
           'meta_optimizer': 'nesterov',
           'meta_lr': 0.1,
           'weight_decay': 0.0005,
           'lr_boundaries': [20000, 40000, 50000],
           'lr_scales': [0.06, 0.2, 0.2],
           'checkpoint_every': 2000,
           'task_parallel': 'auto'},
 'eval': {'k_query': 15, 'shots': [1], 'steps': 0, 'report_steps': [0], 'batch_size': 50}}
