"""Sinusoid regression with maml (other settings as sinusoid-maml).

    jmeta train --config sinusoid-maml-learned-lr
"""

CONFIG = {'task': {'family': 'sinusoid', 'k_support': 10, 'k_query': 10},
 'model': {'name': 'mlp'},
 'algorithm': {'name': 'maml', 'learn_lr': 'scalar'}}
