"""Sinusoid regression with reptile (other settings as sinusoid-maml).

    jmeta train --config sinusoid-reptile
"""

CONFIG = {'task': {'family': 'sinusoid', 'k_support': 10, 'k_query': 10},
 'model': {'name': 'mlp'},
 'algorithm': {'name': 'reptile', 'inner_lr': 0.02}}
