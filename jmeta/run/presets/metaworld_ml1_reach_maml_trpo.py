"""MAML-TRPO on MetaWorld ML1 reach-v3 (host-side episodes: the ``metaworld`` extra, in its own venv)

    jmeta train --config metaworld-ml1-reach-maml-trpo

Needs the ``metaworld`` extra, which pins ``mujoco==3.3.0`` and so cannot share an environment with ``jmeta[mjx]``:
``bash scripts/test_metaworld.sh`` builds such a venv (``.venv-metaworld/``); run ``jmeta`` from it. The episodes
run on the host (MetaWorld's MuJoCo, all episodes of a batch in lock step, the policy jitted); the rest of each
meta-step is compiled (``jmeta.rl.host``).

Protocol (MetaWorld v3, Yu et al. 2019): ``metaworld.ML1("reach-v3", seed=0)``, goal hidden; each meta-step draws
20 of the 50 train goals; ``eval.json`` scores the 50 held-out test goals (10 episodes per goal before and after one
inner step) by MetaWorld's success rate (an episode succeeds if ``info["success"]`` at any step) and by return.
Horizon 500 = MetaWorld's ``max_path_length`` (every v3 task).

Hyperparameters: garage's MAML-TRPO example on MetaWorld ML1 (``examples/torch/maml_trpo_metaworld_ml1_push.py``;
inner step and KL bound as MAML-RL, Finn et al. 2017): meta-batch 20 tasks, 10 episodes per task (``rollouts_per_task``), one inner
step of 0.1, discount 0.99, GAE lambda 1, a (100, 100) tanh Gaussian MLP policy, TRPO (garage's default KL bound
0.01), 300 epochs. Garage fits a Gaussian-MLP value function; jmeta's MAML-RL uses MAML-RL's linear feature
baseline (Duan et al. 2016) as the other presets do. Inner surrogate: MAML-RL's (``reinforce``, differentiated
through). A meta-step is 2 x 20 x 10 x 500 = 200k host environment steps; the full 300 steps do not fit a shared
CPU (a shorter run is a reduced one: say so next to its numbers).
"""

CONFIG = {'task': {'family': 'metaworld-ml1', 'env_name': 'reach-v3', 'horizon': 500, 'seed': 0},
 'model': {'name': 'gaussian-mlp', 'hidden': [100, 100], 'activation': 'tanh'},
 'algorithm': {'name': 'maml-rl', 'num_episodes': 10, 'inner_lr': 0.1, 'estimator': 'reinforce', 'outer': 'trpo',
               'max_kl': 0.01, 'gamma': 0.99, 'gae_lambda': 1.0, 'baseline': 'linear'},
 'train': {'steps': 300, 'meta_batch_size': 20, 'log_every': 1, 'checkpoint_every': 10},
 'eval': {'num_tasks': 50, 'steps': 1, 'report_steps': [1]}}
