"""Learning in CI: a fixed-seed nav2d MAML-TRPO run (reduced protocol) must learn to adapt.

Protocol: Nav2D (horizon 100), Gaussian MLP 2-32-32-2 ReLU, 10 tasks x 10 episodes per meta-batch, one inner
step of 0.1 (DiCE), TRPO max_kl 0.01, 20 meta-iterations; evaluation on 20 held-out tasks x 10 episodes.

Margins measured before setting the thresholds (this protocol, seeds 0-3 of the policy init and the training
keys, evaluation key 10_000 + seed; CPU, commit of this test):

  seed | untrained pre | trained pre | trained post | post - pre | post - untrained pre
     0 |       -230.0  |     -48.9   |     -39.6    |     9.4    |   190.4
     1 |       -148.3  |     -41.6   |     -31.6    |    10.0    |   116.7
     2 |        -94.5  |     -42.0   |     -28.3    |    13.7    |    66.3
     3 |        -57.4  |     -47.4   |     -34.3    |    13.1    |    23.1

Thresholds (at least 2x headroom below the smallest measured margin over all four seeds): the return after one
step beats the trained pre-adaptation return by 4 and the untrained policy's return by 10. The test runs seed 1.
"""

from __future__ import annotations

import jax

from jmeta.rl import MAMLRL, envs, gaussian_mlp_policy

SEED, ITERS = 1, 20


def test_nav2d_maml_trpo_learns_to_adapt():
    env = envs.Nav2D()
    algo = MAMLRL(env, gaussian_mlp_policy(2, 2, (32, 32), key=jax.random.key(SEED)), num_tasks=10, num_episodes=10)
    state = algo.init()
    eval_key = jax.random.key(10_000 + SEED)
    before = algo.evaluate(state.params, eval_key, num_tasks=20)["summary"]
    step = jax.jit(algo.meta_step)
    for i in range(ITERS):
        state, metrics = step(state, jax.random.fold_in(jax.random.key(SEED), i))
    after = algo.evaluate(state.params, eval_key, num_tasks=20)["summary"]
    untrained = before["return after 0 step(s)"]["mean"]
    pre, post = after["return after 0 step(s)"]["mean"], after["return after 1 step(s)"]["mean"]
    assert post > pre + 4, (untrained, pre, post)
    assert post > untrained + 10, (untrained, pre, post)
