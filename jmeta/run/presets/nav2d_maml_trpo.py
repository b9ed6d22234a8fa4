"""MAML-TRPO on 2D navigation (Finn et al. 2017, section 5.3): goals uniform in [-0.5, 0.5]^2, horizon 100,
a 2-100-100-2 ReLU Gaussian policy, one inner policy-gradient step of 0.1 on 20 episodes per task, 20 tasks per
meta-step, linear feature baseline, TRPO with KL bound 0.01, 100 meta-steps.

    jmeta train --config nav2d-maml-trpo

The settings are those of MAML-RL's ``maml_examples/maml_trpo_point.py`` (20 episodes per task, horizon 100,
(100, 100) ReLU, linear baseline, ``meta_step_size`` 0.01, ``n_itr`` 100) with the paper's inner step 0.1 and
20 tasks per meta-step (the script's variant uses ``fast_learning_rate`` 0.5 and 40 tasks:
``--set algorithm.inner_lr=0.5 --set train.meta_batch_size=40``). The evaluation adapts 40 held-out goals for up
to 3 inner steps (the paper's Figure 4 reports 0 to 3).
"""

CONFIG = {'task': {'family': 'nav2d', 'horizon': 100},
 'model': {'name': 'gaussian-mlp', 'hidden': [100, 100], 'activation': 'relu'},
 'algorithm': {'name': 'maml-rl', 'num_episodes': 20, 'inner_lr': 0.1, 'estimator': 'dice', 'outer': 'trpo',
               'max_kl': 0.01},
 'train': {'steps': 100, 'meta_batch_size': 20, 'log_every': 1, 'checkpoint_every': 25},
 'eval': {'num_tasks': 40, 'steps': 3, 'report_steps': [1, 3]}}
