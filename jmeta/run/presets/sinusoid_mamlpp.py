"""Sinusoid regression with mamlpp (other settings as sinusoid-maml).

    jmeta train --config sinusoid-mamlpp
"""

CONFIG = {'task': {'family': 'sinusoid', 'k_support': 10, 'k_query': 10},
 'model': {'name': 'mlp'},
 'algorithm': {'name': 'mamlpp', 'num_steps': 5}}
