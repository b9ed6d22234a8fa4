"""MAML++ on Omniglot 5-way 1-shot (Antoniou et al. 2019): 5 steps, per-step BatchNorm, LSLR, MSL over the first
5,000 steps (10 epochs of 500), Adam 1e-3 cosine-annealed to 1e-5 (the authors' config).

    jmeta train --config omniglot-5w1s-mamlpp
"""

CONFIG = {'task': {'family': 'omniglot', 'n_way': 5, 'k_support': 1, 'k_query': 1},
 'model': {'name': 'conv4'},
 'algorithm': {'name': 'mamlpp',
               'inner_lr': 0.1,
               'num_steps': 5,
               'msl_anneal_steps': 5000,
               'bn_mode': 'per_step'},
 'train': {'steps': 50000,
           'meta_batch_size': 8,
           'lr_cosine': True,
           'lr_min': 1e-05,
           'checkpoint_every': 2000,
           'task_parallel': 'auto'},
 'eval': {'k_query': 1, 'shots': [1], 'steps': 5, 'report_steps': [0, 5], 'batch_size': 50}}
