"""Sinusoid regression with fomaml (other settings as sinusoid-maml).

    jmeta train --config sinusoid-fomaml
"""

CONFIG = {'task': {'family': 'sinusoid', 'k_support': 10, 'k_query': 10},
 'model': {'name': 'mlp'},
 'algorithm': {'name': 'fomaml'}}
