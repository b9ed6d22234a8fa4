"""Sinusoid regression with metasgd (other settings as sinusoid-maml).

    jmeta train --config sinusoid-metasgd
"""

CONFIG = {'task': {'family': 'sinusoid', 'k_support': 10, 'k_query': 10},
 'model': {'name': 'mlp'},
 'algorithm': {'name': 'metasgd'}}
