"""As ``sinusoid-maml`` but trained with K=5 (the 5-shot figures of the paper).

    jmeta train --config sinusoid-maml-k5
"""

CONFIG = {'task': {'family': 'sinusoid', 'k_support': 5, 'k_query': 5},
 'model': {'name': 'mlp'},
 'algorithm': {'name': 'maml'}}
