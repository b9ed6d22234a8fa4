"""MetaWorld ML1 adapter: host-side batched rollouts and MetaWorld's success rate.

``metaworld`` pins ``mujoco==3.3.0`` and cannot share an environment with ``jmeta[mjx]``; these tests run
in their own venv through ``scripts/test_metaworld.sh`` (``.ci/run`` calls it) and skip elsewhere, except
the ones that need no MetaWorld.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
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


# -- `jmeta train --config metaworld-ml1-reach-maml-trpo`: host rollouts through the run layer ---------------------

PRESET = "metaworld-ml1-reach-maml-trpo"
#: A few seconds of host rollouts: 2 train goals x 2 episodes x 10 steps per meta-step, 3 held-out goals.
TINY = ["task.horizon=10", "algorithm.num_episodes=2", "train.meta_batch_size=2", "eval.num_tasks=3",
        "train.checkpoint_every=1", "train.log_every=1"]


def _records(run):
    import json
    return [{k: v for k, v in json.loads(line).items() if k != "time"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(mw, tmp_path_factory):
    """Two meta-steps through the CLI, evaluated at the end (the test that owns the compiles)."""
    from jmeta.run.cli import main
    out = tmp_path_factory.mktemp("mw") / "straight"
    sets = [a for s in TINY for a in ("--set", s)]
    assert main(["train", "--config", PRESET, "--out", str(out), "--steps", "2", "--no-progress", *sets]) == 0
    return out


def test_preset_trains_through_the_run_layer_and_evaluates_with_metaworld_success(straight):
    import json
    recs = _records(straight)
    assert [r["step"] for r in recs] == [1, 2]
    for r in recs:
        assert 0.0 <= r["success_pre"] <= 1.0 and 0.0 <= r["success_post"] <= 1.0
        assert np.isfinite([r["return_pre"], r["return_post"], r["kl"], r["update_norm"]]).all()
        assert r["objective"] == r["return_post"] and r["update_norm"] > 0  # TRPO moved the parameters
        assert r["kl"] <= 0.01 + 1e-6  # the preset's KL bound
    assert sorted(p.name for p in (straight / "checkpoints").iterdir() if p.name.isdigit()) == ["1", "2"]
    ev = json.loads((straight / "eval.json").read_text())
    assert ev["step"] == 2 and ev["num_tasks"] == 3 and ev["family"] == "metaworld-ml1"
    want = {f"{m} after {k} step(s)" for m in ("success rate", "return") for k in (0, 1)}
    assert set(ev["summary"]) == want
    for k in (0, 1):
        s = ev["summary"][f"success rate after {k} step(s)"]
        assert 0.0 <= s["mean"] <= 1.0 and s["ci95"] >= 0.0
        r = ev["summary"][f"return after {k} step(s)"]
        assert np.isfinite(r["mean"]) and r["ci95"] > 0.0  # three goals, different returns
    if pytest.importorskip("matplotlib"):
        assert (straight / "rl_returns.png").stat().st_size > 0


def test_resume_is_bit_identical_to_the_straight_run(straight, tmp_path):
    """Stopped after one step and resumed in a new environment pool (a fresh MetaWorldML1): the state and the
    records at step 2 equal the straight run's bit for bit (MetaWorld's seeds come from the jax key)."""
    from jmeta.run import config as C
    from jmeta.run.experiment import load_run
    from jmeta.run.runner import train

    cfg = C.apply_overrides(C.load(PRESET), [*TINY, "train.steps=2"])
    out = tmp_path / "resumed"
    kw = dict(progress=False, evaluate_at_end=False, plots=False, tensorboard=False)
    assert train(cfg, out, stop_after=1, **kw)["steps"] == 1
    assert train(cfg, out, resume=True, **kw)["steps"] == 2
    assert _records(out) == _records(straight)
    a, b = (load_run(run)[2] for run in (straight, out))
    assert int(a.step) == int(b.step) == 2
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_jmeta_eval_rewrites_the_same_eval_json(straight, capsys):
    import json

    from jmeta.run.cli import main
    before = json.loads((straight / "eval.json").read_text())["summary"]
    assert main(["eval", str(straight), "--no-progress"]) == 0
    assert json.loads((straight / "eval.json").read_text())["summary"] == before
    assert "success rate after 1 step(s)" in capsys.readouterr().out


def test_host_batches_are_a_function_of_params_tasks_and_key(reach):
    """HostMAMLRL's data of a meta-step (rollouts, baseline fits, the inner step in between) is a function of
    (params, tasks, key): MetaWorld's own seeds come from the key. Sizes are checked against the algorithm's."""
    from jmeta.rl import MAMLRL, gaussian_mlp_policy
    from jmeta.rl.host import HostEnvShapes, HostMAMLRL
    shapes = HostEnvShapes(reach)
    with pytest.raises(RuntimeError, match="steps on the host"):
        shapes.reset(None, None)
    policy = gaussian_mlp_policy(39, 4, (8,), key=jax.random.key(0))
    algo = MAMLRL(shapes, policy, num_tasks=2, num_episodes=2, estimator="reinforce")
    host = HostMAMLRL(algo, reach)
    state, tasks = algo.init(), reach.train_tasks[:2]
    b1, b2, b3 = (host.batch(state.params, tasks, jax.random.key(k)) for k in (3, 3, 4))
    for x, y in zip(jax.tree.leaves(b1), jax.tree.leaves(b2), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    (pre,), (post, _) = b1["samples"]
    assert pre[0].obs.shape == post.obs.shape == (2, 2, 60, 39)
    assert not np.array_equal(pre[0].actions, b3["samples"][0][0][0].actions)
    assert not np.array_equal(pre[0].actions, post.actions)  # post: other keys, adapted parameters
    with pytest.raises(ValueError, match=r"one \(traj, proc\) pair per inner step \(1\)"):
        algo.meta_step_from_samples(state, ((), b1["samples"][1]))
    other = type("Env", (), {"obs_size": 39, "action_size": 4, "horizon": 5})()
    with pytest.raises(ValueError, match="algorithm.env.horizon is 60 but host_env.horizon is 5"):
        HostMAMLRL(algo, other)
