"""MAML-TRPO on HalfCheetah goal velocity (uniform in [0, 2])
(Finn et al. 2017, section 5.3) on MuJoCo MJX (the ``mjx`` extra): horizon 200, a (100, 100) ReLU Gaussian policy, one inner step of 0.1 on 20 episodes per task, 40 tasks per meta-step,
linear feature baseline, TRPO with KL bound 0.01, 1000 meta-steps.

    jmeta train --config cheetah-vel-maml-trpo

From MAML-RL's ``maml_examples/cluster_maml_trpo_cheetah.py`` (``HalfCheetahEnvRand``): ``fast_lr`` 0.1, ``meta_step_size`` 0.01,
``fast_batch_size`` 20, ``max_path_length`` 200, one gradient update, ``n_itr`` 1000. The script runs meta-batches of 40 and 80 tasks; this preset takes 40. The full protocol
fits a GPU; a shorter run is a reduced one (say so next to its numbers).
"""

CONFIG = {'task': {'family': 'cheetah-vel', 'horizon': 200},
 'model': {'name': 'gaussian-mlp', 'hidden': [100, 100], 'activation': 'relu'},
 'algorithm': {'name': 'maml-rl', 'num_episodes': 20, 'inner_lr': 0.1, 'estimator': 'dice', 'outer': 'trpo',
               'max_kl': 0.01},
 'train': {'steps': 1000, 'meta_batch_size': 40, 'log_every': 10, 'checkpoint_every': 50},
 'eval': {'num_tasks': 40, 'steps': 3, 'report_steps': [1, 3]}}
