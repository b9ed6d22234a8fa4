"""Meta-RL through the run layer: ``jmeta train``/``jmeta eval`` on the RL presets (tiny sizes by ``--set``), the
eval.json keys, bit-identical resume, the PNGs and the config errors (:mod:`jmeta.run.rl`)."""

from __future__ import annotations

import json
import math
import sys

import jax
import numpy as np
import pytest

from jmeta.run import config as C
from jmeta.run.cli import main

#: A nav2d MAML-TRPO run small enough to compile and run in seconds (4 meta-steps, checkpoints at 2 and 4).
NAV2D = ["task.horizon=5", "algorithm.num_episodes=2", "algorithm.cg_iters=2", "algorithm.max_backtracks=3",
         "train.meta_batch_size=2", "train.steps=4", "train.log_every=1", "train.checkpoint_every=2",
         "train.seed=3", "model.hidden=[8]", "train.deterministic=false",  # (no GPU flag: one compile cache key)
         "eval.num_tasks=4", "eval.steps=2", "eval.report_steps=[1,2]"]
BANDIT = ["algorithm.num_episodes=3", "algorithm.num_minibatches=2", "algorithm.epochs=1", "model.hidden_size=8",
          "train.meta_batch_size=4", "train.steps=2", "train.log_every=1", "train.checkpoint_every=0",
          "eval.num_tasks=8"]

#: ``nav2d-rl2`` (Gaussian GRU) small enough to run in seconds: 2 meta-steps of 2 trials of 2 five-step episodes.
NAV2D_RL2 = ["task.horizon=5", "model.hidden_size=4", "algorithm.epochs=1", "train.meta_batch_size=2",
             "train.steps=2", "train.log_every=1", "train.checkpoint_every=0", "eval.num_tasks=4"]


def _cli(args):
    argv = []
    for a in args:
        argv += ["--set", a]
    return argv


def _finite(stats):
    return all(isinstance(stats[k], float) and math.isfinite(stats[k]) for k in ("mean", "ci95", "median")) \
        and stats["nonfinite"] == 0


@pytest.fixture(scope="module")
def nav2d_run(tmp_path_factory):
    """The straight 4-step run, with its evaluation and PNGs (``jmeta train`` is this function; the command line
    itself is run by test_jmeta_train_command_line)."""
    from jmeta.run.runner import train

    out = tmp_path_factory.mktemp("rl") / "nav2d"
    train(C.apply_overrides(C.load("nav2d-maml-trpo"), NAV2D), out, progress=False)
    return out


def test_jmeta_train_nav2d_writes_the_run_folder(nav2d_run):
    ev = json.loads((nav2d_run / "eval.json").read_text())
    assert ev["step"] == 4 and ev["num_tasks"] == 4 and ev["family"] == "nav2d" and ev["algorithm"] == "maml-rl"
    assert list(ev["summary"]) == [f"return after {k} step(s)" for k in range(3)]
    assert all(_finite(v) for v in ev["summary"].values()), ev["summary"]
    assert all(v["mean"] < 0 for v in ev["summary"].values())  # nav2d rewards are minus distances
    assert len(ev["results"]["return"]["mean"]) == 3
    recs = [json.loads(x) for x in (nav2d_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    for r in recs:
        assert all(math.isfinite(r[k]) for k in ("return_pre", "return_post", "objective", "update_norm", "kl"))
        assert r["objective"] == r["return_post"]
    assert sorted(p.name for p in (nav2d_run / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]
    assert list(nav2d_run.glob("events.out.tfevents.*"))  # the TensorBoard sink
    for png in ("rl_returns.png", "nav2d_trajectories.png", "adaptation_curves.png", "learning_curves.png"):
        data = (nav2d_run / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, png


def test_resume_is_bit_identical(nav2d_run, tmp_path):
    from jmeta.run.experiment import load_run
    from jmeta.run.runner import train

    cfg = C.apply_overrides(C.load("nav2d-maml-trpo"), NAV2D)
    out = tmp_path / "half"
    s = train(cfg, out, progress=False, stop_after=2, plots=False, tensorboard=False)
    assert s["steps"] == 2 and not (out / "eval.json").exists()
    s = train(cfg, out, resume=True, progress=False, plots=False, tensorboard=False, evaluate_at_end=False)
    assert s["steps"] == 4 and s["steps_run"] == 2
    _, _, straight = load_run(nav2d_run)
    _, _, resumed = load_run(out)
    assert int(straight.step) == int(resumed.step) == 4
    a, b = jax.tree.leaves(straight), jax.tree.leaves(resumed)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
    drop = lambda r: {k: v for k, v in r.items() if k != "time"}  # noqa: E731
    read = lambda d: [drop(json.loads(x)) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert read(out) == read(nav2d_run)


def test_jmeta_eval_rewrites_eval_json_with_the_same_numbers(nav2d_run, capsys):
    before = json.loads((nav2d_run / "eval.json").read_text())
    assert main(["eval", str(nav2d_run), "--no-progress"]) == 0
    after = json.loads((nav2d_run / "eval.json").read_text())
    assert after["summary"] == before["summary"]  # the same held-out tasks and rollouts
    assert "return after 2 step(s)" in capsys.readouterr().out


def test_jmeta_train_command_line(tmp_path, capsys):
    """``jmeta train --config nav2d-maml-trpo --set ...`` (no evaluation: the runner's is tested above)."""
    out = tmp_path / "cli"
    assert main(["train", "--config", "nav2d-maml-trpo", "--out", str(out), "--no-progress", "--no-eval",
                 "--no-plots", *_cli(NAV2D[:-3] + ["train.steps=1"])]) == 0
    assert "1 meta-steps" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["algorithm"]["name"] == "maml-rl"
    assert (out / "checkpoints" / "1").is_dir()


def test_rl2_bandit_eval_reports_each_episode_of_the_trial(tmp_path):
    from jmeta.run.runner import train

    cfg = C.apply_overrides(C.load("bandit-rl2"), BANDIT)
    s = train(cfg, tmp_path / "b", progress=False, tensorboard=False)
    summary = s["eval"]["summary"]
    assert list(summary) == ["return in episode 1", "return in episode 2", "return in episode 3", "trial return"]
    assert all(_finite(v) and 0 <= v["mean"] <= 1 for k, v in summary.items() if k != "trial return")
    assert abs(summary["trial return"]["mean"] - sum(summary[f"return in episode {i}"]["mean"]
                                                     for i in (1, 2, 3))) < 1e-9
    recs = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["return_first_episode"]) and math.isfinite(r["return_last_episode"]) for r in recs)
    assert (tmp_path / "b" / "rl_returns.png").is_file() and (tmp_path / "b" / "adaptation_curves.png").is_file()


@pytest.mark.parametrize("override, match", [
    ("algorithm.step_size=0.1", r"algorithm.step_size is not an option of algorithm.name='maml-rl'; its options: \["),
    ("task.goal_radius=1", r"task.goal_radius is not an option of task.family='nav2d'; its options: \["),
    ("model.filters=3", r"model.filters is not an option of model.name='gaussian-mlp'; its options: \["),
    ("task.horizon=0", r"task.horizon must be an integer >= 1; got 0"),
    ("algorithm.name=maml", r"task.family='nav2d' is a meta-RL environment; algorithm.name must be one of"),
    ("algorithm.name=rl2", r"algorithm.name='rl2' needs model.name='gru' or 'gaussian-gru', got 'gaussian-mlp'"),
])
def test_bad_options_are_one_clear_error(override, match):
    with pytest.raises(C.ConfigError, match=match):
        C.apply_overrides(C.load("nav2d-maml-trpo"), [override])


def test_bad_values_are_refused_by_the_constructors_when_built():
    from jmeta.run.rl import build

    with pytest.raises(C.ConfigError, match=r"algorithm.inner_lr must be a number >= 0; got -0.1"):
        build(C.apply_overrides(C.load("nav2d-maml-trpo"), ["algorithm.inner_lr=-0.1"]))
    with pytest.raises(C.ConfigError, match=r"algorithm.*estimator"):
        build(C.apply_overrides(C.load("nav2d-maml-trpo"), ["algorithm.estimator=magic"]))
    # RL^2's categorical GRU on a continuous environment, the Gaussian one on a discrete environment
    cfg = C.apply_overrides(C.load("bandit-rl2"), ["task.family=nav2d"])
    with pytest.raises(C.ConfigError, match=r"task.family='nav2d' has continuous actions: RL\^2 on it needs "
                                            r"model.name='gaussian-gru', got 'gru'"):
        build(cfg)
    cfg = C.apply_overrides(C.load("nav2d-rl2"), ["task.family=bandit"])
    with pytest.raises(C.ConfigError, match=r"task.family='bandit' has discrete actions: RL\^2 on it needs "
                                            r"model.name='gru', got 'gaussian-gru'"):
        build(cfg)
    with pytest.raises(C.ConfigError, match=r"is meta-RL; task.family must be one of"):
        C.apply_overrides(C.load("sinusoid-maml"), ["algorithm.name=maml-rl"])


def test_metaworld_preset_without_metaworld_is_one_error_naming_the_package_and_its_venv(tmp_path, capsys):
    """The MetaWorld preset is configured without importing metaworld; where the package is missing (this venv),
    `jmeta train` stops with one line naming it and the script that builds its venv (its tests run there:
    tests/rl/test_metaworld.py)."""
    import importlib.util

    if importlib.util.find_spec("metaworld") is not None:
        pytest.skip("metaworld is installed here (its own venv runs the preset: tests/rl/test_metaworld.py)")
    cfg = C.load("metaworld-ml1-reach-maml-trpo")
    assert (cfg.task.family, cfg.task.horizon, cfg.task.env_name) == ("metaworld-ml1", 500, "reach-v3")
    assert "metaworld" not in sys.modules
    # mujoco may already be loaded by another test of this process (the MJX environments): what counts is that
    # configuring and refusing the preset imports neither package
    before = set(sys.modules)
    assert main(["train", "--config", "metaworld-ml1-reach-maml-trpo", "--out", str(tmp_path / "mw"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: task.family='metaworld-ml1' needs the metaworld package")
    assert "pip install 'jmeta[metaworld]'" in err[0] and "bash scripts/test_metaworld.sh" in err[0]
    new = {m.split(".")[0] for m in set(sys.modules) - before}
    assert "metaworld" not in sys.modules and not new & {"metaworld", "mujoco"}, sorted(new)


def test_presets_list_the_meta_rl_presets(capsys):
    assert main(["presets"]) == 0
    names = [x.split()[0] for x in capsys.readouterr().out.splitlines()]
    for n in ("nav2d-maml-trpo", "nav2d-promp", "bandit-rl2", "nav2d-rl2", "tabular-mdp-rl2", "cheetah-dir-maml-trpo",
              "cheetah-vel-maml-trpo", "ant-dir-maml-trpo", "metaworld-ml1-reach-maml-trpo"):
        assert n in names



def test_readme_meta_rl_commands_parse():
    """The commands of the README's "Meta-RL from the command line" parse and name meta-RL presets."""
    import pathlib
    import re
    import shlex

    from jmeta.run import registry as R
    from jmeta.run.cli import build_parser

    text = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = text.split("### Meta-RL from the command line", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    commands = [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("jmeta ")]
    assert [c[0] for c in commands] == ["train", "eval", "train"]
    for argv in commands:
        args = build_parser().parse_args(argv)
        if args.command == "train":
            cfg = C.load(args.config)
            assert R.is_rl(cfg) and 0 < args.steps <= cfg.train.steps, argv
    for name in re.findall(r"`([a-z0-9-]+-(?:maml-trpo|promp|rl2))`", section):
        assert name in C.PRESETS, name


def test_sweeps_know_the_meta_rl_metrics_and_export_and_vectorize_refuse_meta_rl(nav2d_run):
    from jmeta.run import search
    from jmeta.run.export import export_run

    cfg = C.apply_overrides(C.load("nav2d-maml-trpo"), NAV2D)
    summary = json.loads((nav2d_run / "eval.json").read_text())["summary"]
    assert search.eval_metric_names(cfg) == list(summary)
    assert search.default_metric(summary) == "return after 2 step(s)"
    rl2 = C.apply_overrides(C.load("bandit-rl2"), BANDIT)
    assert search.eval_metric_names(rl2)[-2:] == ["return in episode 3", "trial return"]
    with pytest.raises(C.ConfigError, match=r"--vectorize runs the supervised meta-step only"):
        search._check_vectorizable(cfg, [{"train.seed": 1}])
    with pytest.raises(C.ConfigError, match=r"this run is meta-RL"):
        export_run(nav2d_run, nav2d_run / "export")


def test_rl2_nav2d_gaussian_gru_run_writes_eval_json(tmp_path):
    """The ``nav2d-rl2`` preset (Gaussian GRU, continuous actions) through the runner at tiny sizes."""
    from jmeta.run.runner import train

    cfg = C.apply_overrides(C.load("nav2d-rl2"), NAV2D_RL2)
    assert cfg.model.name == "gaussian-gru" and cfg.task.family == "nav2d-corner"
    s = train(cfg, tmp_path / "n", progress=False, tensorboard=False, plots=False)
    ev = json.loads((tmp_path / "n" / "eval.json").read_text())
    assert ev["step"] == 2 and ev["num_tasks"] == 4 and ev["algorithm"] == "rl2"
    assert list(ev["summary"]) == ["return in episode 1", "return in episode 2", "trial return"]
    assert ev["summary"] == json.loads(json.dumps(s["eval"]["summary"]))
    summary = ev["summary"]
    assert all(_finite(v) for v in summary.values()), summary
    assert abs(summary["trial return"]["mean"] - summary["return in episode 1"]["mean"]
               - summary["return in episode 2"]["mean"]) < 1e-9
    recs = [json.loads(x) for x in (tmp_path / "n" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2]
    assert all(math.isfinite(r["update_norm"]) and r["update_norm"] > 0 for r in recs)
