"""Sinusoid regression with anil (other settings as sinusoid-maml).

    jmeta train --config sinusoid-anil
"""

CONFIG = {'task': {'family': 'sinusoid', 'k_support': 10, 'k_query': 10},
 'model': {'name': 'mlp'},
 'algorithm': {'name': 'anil', 'adapt_params': 'layers_2'}}
