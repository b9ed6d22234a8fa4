"""MetaWorld ML1 adapter: host-side batched rollouts and MetaWorld's success rate.

``metaworld`` pins ``mujoco==3.3.0`` and cannot share an environment with ``jmeta[mjx]``; these tests run
in their own venv through ``scripts/test_metaworld.sh`` (``.ci/run`` calls it) and skip elsewhere, except
the ones that need no MetaWorld.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from jmeta.rl.envs.metaworld import episode_success, success_rate


def test_success_rate_is_any_step_then_mean_over_episodes_then_tasks():
    s = np.zeros((2, 4, 5), bool)
    s[0, 0, 3] = True  # task 0: 1 of 4 episodes (success at one step only)
    s[0, 1, :] = True  # task 0: 2 of 4
    s[1, :, 4] = True  # task 1: 4 of 4 (success at the last step)
    np.testing.assert_array_equal(episode_success(s)[0], [True, True, False, False])
    assert success_rate(s) == pytest.approx((2 / 4 + 4 / 4) / 2)
    with pytest.raises(ValueError, match=r"success must have shape \[tasks, episodes, T\]; got \(4, 5\)"):
        success_rate(s[0])


def test_importing_the_adapter_imports_no_metaworld():
    code = "import sys, jmeta.rl.envs.metaworld; assert 'metaworld' not in sys.modules and 'mujoco' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_missing_package_names_the_extra(monkeypatch):
    from jmeta.rl.envs import metaworld as mwa
    monkeypatch.setitem(sys.modules, "metaworld", None)
    with pytest.raises(ImportError, match=r"pip install 'jmeta\[metaworld\]'"):
        mwa.MetaWorldML1()


@pytest.fixture(scope="module")
def mw():
    return pytest.importorskip("metaworld", reason="metaworld not installed (own venv: bash scripts/test_metaworld.sh)")


@pytest.fixture(scope="module")
def reach(mw):
    from jmeta.rl.envs.metaworld import MetaWorldML1
    return MetaWorldML1("reach-v3", seed=0, horizon=60)


def test_ml1_tasks_shapes_and_hidden_goal(reach):
    assert (reach.obs_size, reach.action_size, reach.horizon) == (39, 4, 60)
    assert len(reach.train_tasks) == 50 and len(reach.test_tasks) == 50
    out = reach.rollout(lambda obs, t: np.zeros((len(obs), 4)), reach.test_tasks[:3], episodes=2)
    assert out["obs"].shape == (3, 2, 60, 39) and out["action"].shape == (3, 2, 60, 4)
    assert out["reward"].shape == out["success"].shape == (3, 2, 60) and out["last_obs"].shape == (3, 2, 39)
    assert out["obs"].dtype == np.float32 and out["success"].dtype == bool
    assert np.isfinite(out["obs"]).all() and np.isfinite(out["reward"]).all()
    np.testing.assert_array_equal(out["obs"][..., -3:], 0.0)  # ML1 hides the goal
    # the goal differs between tasks but not between the episodes of a task (no reset noise in MetaWorld)
    np.testing.assert_array_equal(out["reward"][:, 0], out["reward"][:, 1])
    assert not np.allclose(out["reward"][0, 0], out["reward"][1, 0])
    # a motionless arm does not reach
    assert success_rate(out["success"]) == 0.0


def test_deterministic_and_random_actions_differ(reach):
    def noisy(seed):
        rng = np.random.default_rng(seed)
        return lambda obs, t: rng.uniform(-1, 1, (len(obs), 4))

    a = reach.rollout(noisy(0), reach.train_tasks[:2])
    b = reach.rollout(noisy(0), reach.train_tasks[:2])
    c = reach.rollout(noisy(1), reach.train_tasks[:2])
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.allclose(a["obs"], c["obs"])


def test_scripted_reach_policy_succeeds_with_the_goal_observed(mw):
    from metaworld.policies import SawyerReachV3Policy

    from jmeta.rl.envs.metaworld import MetaWorldML1
    oracle = SawyerReachV3Policy()
    env = MetaWorldML1("reach-v3", seed=0, horizon=150, observe_goal=True)
    out = env.rollout(lambda obs, t: np.stack([oracle.get_action(o.astype(np.float64)) for o in obs]),
                      env.test_tasks[:4])
    assert success_rate(out["success"]) == 1.0
    assert not out["success"][:, :, 0].any()  # it takes steps to get there


def test_bad_inputs(reach, mw):
    from jmeta.rl.envs.metaworld import MetaWorldML1
    with pytest.raises(ValueError, match="horizon must be an integer >= 1 and <= 500; got 501"):
        MetaWorldML1("reach-v3", horizon=501)
    with pytest.raises(ValueError, match="env_name"):
        MetaWorldML1("reach-v2")
    with pytest.raises(ValueError, match=r"policy must return actions of shape \(2, 4\)"):
        reach.rollout(lambda obs, t: np.zeros((len(obs), 3)), reach.test_tasks[:2])
    push = mw.ML1("push-v3", seed=0)
    with pytest.raises(ValueError, match="tasks must be reach-v3 tasks"):
        reach.rollout(lambda obs, t: np.zeros((len(obs), 4)), push.train_tasks[:1])
