"""MAML on sinusoid regression with the paper's settings (Finn et al. 2017, section 5.1): 1-40-40-1 ReLU, K=10,
one inner SGD step of 0.01, meta-batch 25, Adam 1e-3, 70,000 steps.

    jmeta train --config sinusoid-maml
"""

CONFIG = {'task': {'family': 'sinusoid', 'k_support': 10, 'k_query': 10},
 'model': {'name': 'mlp'},
 'algorithm': {'name': 'maml'}}
