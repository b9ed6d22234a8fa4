"""`jmeta sweep`: trial generation, a tiny grid sweep end to end (table, plot, reuse of finished trials)."""

from __future__ import annotations

import csv
import json
import math

import pytest

from jmeta.run import search as S
from jmeta.run.cli import main
from jmeta.run.config import ConfigError, from_dict, load


def test_parse_grid_and_range():
    assert S.parse_grid("algorithm.inner_lr=0.005,0.01") == ("algorithm.inner_lr", [0.005, 0.01])
    assert S.parse_grid("model.hidden=[40,40],[20, 20]") == ("model.hidden", [[40, 40], [20, 20]])
    assert S.parse_grid("train.on_nan=stop,skip") == ("train.on_nan", ["stop", "skip"])
    assert S.parse_range("train.meta_lr=1e-4:1e-2:log") == ("train.meta_lr", 1e-4, 1e-2, True, False)
    assert S.parse_range("algorithm.inner_steps=1:5") == ("algorithm.inner_steps", 1.0, 5.0, False, True)
    for bad in ("x=1:2:cubic", "x=a:b", "x=2:1", "x=0:1:log", "x"):
        with pytest.raises(ConfigError):
            S.parse_range(bad)
    with pytest.raises(ConfigError):
        S.parse_grid("algorithm.inner_lr=")


@pytest.mark.parametrize("spec, dup", [("algorithm.inner_lr=0.01,0.02,0.01", "0.01"), ("train.seed=1,1.0", "1.0"),
                                       ("model.hidden=[40,40],[40, 40]", r"\[40, 40\]"),
                                       ("train.on_nan=stop,stop", "'stop'")])
def test_duplicate_grid_values_are_refused(spec, dup):
    """A value listed twice would run one trial twice (and count it twice in the best-of)."""
    with pytest.raises(ConfigError, match=rf"--grid \S+ lists {dup} more than once, which would run the same trial"):
        S.parse_grid(spec)
    assert S.parse_grid("algorithm.first_order=true,1")[1] == [True, 1]  # a flag and a number are not one value


def test_make_trials_grid_product_and_random_draws():
    grid = S.make_trials([("a.x", [1, 2, 3]), ("b.y", ["u", "v"])])
    assert len(grid) == 6 and {(t["a.x"], t["b.y"]) for t in grid} == {(i, c) for i in (1, 2, 3) for c in "uv"}
    ranges = [S.parse_range("a.lr=1e-4:1e-1:log"), S.parse_range("a.n=1:3"), S.parse_range("a.m=0.5:0.75")]
    draws = S.make_trials([("b.y", ["u", "v"])], ranges, random=200, seed=1)
    assert draws == S.make_trials([("b.y", ["u", "v"])], ranges, random=200, seed=1)  # seeded
    lrs = [t["a.lr"] for t in draws]
    assert all(1e-4 <= v <= 1e-1 for v in lrs)
    # log-uniform: about half the draws below the geometric midpoint 10**-2.5
    assert 0.35 < sum(v < 10 ** -2.5 for v in lrs) / len(lrs) < 0.65
    assert {t["a.n"] for t in draws} == {1, 2, 3} and all(isinstance(t["a.n"], int) for t in draws)
    assert all(0.5 <= t["a.m"] <= 0.75 for t in draws) and {t["b.y"] for t in draws} == {"u", "v"}
    with pytest.raises(ConfigError, match="--range needs --random"):
        S.make_trials([], ranges)
    with pytest.raises(ConfigError, match="swept twice"):
        S.make_trials([("a.x", [1]), ("a.x", [2])])
    with pytest.raises(ConfigError, match="train.deterministic cannot be swept.*--set"):
        S.make_trials([("train.deterministic", [True, False])])


def test_trial_config_validates_and_leaves_base_alone():
    base = load("sinusoid-maml")
    cfg = S.trial_config(base, {"algorithm.inner_lr": 0.02}, 3)
    assert cfg.algorithm.inner_lr == 0.02 and cfg.name == "sinusoid-maml-trial003"
    assert base.algorithm.inner_lr == 0.01 and base.name == "sinusoid-maml"
    with pytest.raises(ConfigError, match="algorithm.inner_lr must be a number > 0"):
        S.trial_config(base, {"algorithm.inner_lr": -1.0}, 0)


def test_default_metric():
    summary = {"K=5 loss after 1 step(s)": 0, "K=5 loss after 10 step(s)": 0, "K=10 loss after 10 step(s)": 0}
    assert S.default_metric(summary) == "K=5 loss after 10 step(s)"
    assert S.default_metric({"K=1 loss after 5 step(s)": 0, "K=1 accuracy after 5 step(s)": 0}) \
        == "K=1 accuracy after 5 step(s)"


# The end-to-end sweeps below share one tiny setting (TINY: meta-batch 5, 8 evaluation tasks of 2 steps, Adam 3e-3)
# and the inner rates 0.005 and 0.02, so that their meta-step and evaluation programs are the same few compiled ones
# (an inner rate and the meta learning rate are constants of the compiled programs).
TINY = ["--config", "sinusoid-maml", "--set", "train.log_every=10", "--set", "train.meta_batch_size=5",
        "--set", "eval.num_tasks=8", "--set", "eval.shots=[5]", "--set", "eval.report_steps=[1,2]",
        "--set", "eval.steps=2", "--set", "train.meta_lr=0.003", "--no-progress", "--no-tensorboard"]


def test_grid_sweep_end_to_end(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", *TINY, "--grid", "algorithm.inner_lr=0.005,0.02", "--steps", "20", "--out", str(out)]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["keys"] == ["algorithm.inner_lr"] and res["metric"] == "K=5 loss after 2 step(s)"
    rows = res["rows"]
    assert [r["algorithm.inner_lr"] for r in rows] == [0.005, 0.02] and all(r["status"] == "ok" for r in rows)
    for i, r in enumerate(rows):
        cfg = json.loads((out / f"trial_{i:03d}" / "config.json").read_text())
        assert cfg["algorithm"]["inner_lr"] == r["algorithm.inner_lr"] and cfg["train"]["steps"] == 20
        ev = json.loads((out / f"trial_{i:03d}" / "eval.json").read_text())
        assert r[res["metric"]] == ev["summary"][res["metric"]]["mean"]
        assert S.eval_metric_names(from_dict(cfg)) == list(ev["summary"])  # what --metric is checked against
        assert math.isfinite(r["final_train_loss"])
    assert res["best"] == min(rows, key=lambda r: r[res["metric"]])["trial"]
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [float(t["algorithm.inner_lr"]) for t in table] == [0.005, 0.02]
    assert float(table[1][res["metric"]]) == pytest.approx(rows[1][res["metric"]])
    assert (out / "sweep.png").stat().st_size > 0
    assert "best (K=5 loss after 2 step(s)): trial" in capsys.readouterr().out

    # Re-running the sweep reuses the finished trials instead of training again.
    assert main(argv) == 0
    assert capsys.readouterr().out.count("done before, reusing") == 2
    assert json.loads((out / "results.json").read_text())["rows"][0][res["metric"]] == rows[0][res["metric"]]


def test_bad_sweep_override_fails_before_any_trial(tmp_path, capsys):
    assert main(["sweep", "--grid", "algorithm.inner_lr=0.01,-1", "--out", str(tmp_path / "s")]) == 2
    assert "algorithm.inner_lr must be a number > 0" in capsys.readouterr().err
    assert not (tmp_path / "s" / "trial_000").exists()


@pytest.fixture(scope="module")
def vectorized_sweep(tmp_path_factory):
    """One vectorised sweep (2 inner rates x 2 seeds, 30 meta-steps: ``(folder, argv)``), shared by the tests that
    read it (or a copy of it)."""
    from jmeta.run import experiment

    out = tmp_path_factory.mktemp("vectorized") / "vec"
    argv = ["sweep", *TINY, "--steps", "30", "--grid", "algorithm.inner_lr=0.005,0.02", "--grid", "train.seed=0,3",
            "--vectorize", "--out", str(out)]
    built, build = [], experiment.build
    experiment.build = lambda cfg, **kw: built.append(cfg.name) or build(cfg, **kw)
    try:
        assert main(argv) == 0
    finally:
        experiment.build = build
    # one experiment for all trials (an image sweep loaded its data once per trial)
    assert built == ["sinusoid-maml-trial000"], built
    return out, argv


def test_vectorized_sweep_equals_separate_runs(tmp_path, capsys, vectorized_sweep):
    """--vectorize trains the trials in one vmapped program; each trial folder matches a separate run."""
    vec_dir, argv = vectorized_sweep
    assert main([a for a in argv[:-2] if a != "--vectorize"] + ["--out", str(tmp_path / "seq")]) == 0
    seq = json.loads((tmp_path / "seq" / "results.json").read_text())
    vec = json.loads((vec_dir / "results.json").read_text())
    assert len(vec["rows"]) == 4 and vec["metric"] == seq["metric"] and vec["best"] == seq["best"]
    for a, b in zip(seq["rows"], vec["rows"]):
        assert b["status"] == "ok"
        assert a["algorithm.inner_lr"] == b["algorithm.inner_lr"] and a["train.seed"] == b["train.seed"]
        assert math.isclose(a["final_train_loss"], b["final_train_loss"], rel_tol=1e-3)
        assert math.isclose(a[seq["metric"]], b[seq["metric"]], rel_tol=1e-3)
    # every vectorised trial folder is a complete run: jmeta eval reads its checkpoint
    assert main(["eval", str(vec_dir / "trial_003"), "--num-tasks", "8", "--no-progress"]) == 0
    capsys.readouterr()


def test_vectorize_refuses_structural_keys(tmp_path, capsys):
    code = main(["sweep", "--config", "sinusoid-maml", "--grid", "algorithm.inner_steps=1,2", "--vectorize",
                 "--steps", "2", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "algorithm.inner_steps" in err and "--vectorize" in err and "Traceback" not in err


@pytest.mark.parametrize("extra, grid, fragment", [
    (["--set", "train.grad_clip=0.01"], "train.meta_lr=0.001,0.01", "no train.grad_clip"),
    (["--set", "algorithm.name=metasgd"], "algorithm.inner_lr=0.01,0.02", "metasgd/mamlpp, which always learn"),
    (["--set", "algorithm.name=mamlpp"], "algorithm.inner_lr=0.01,0.02", "metasgd/mamlpp, which always learn"),
])
def test_vectorize_refuses_what_one_program_cannot_hold(tmp_path, capsys, extra, grid, fragment):
    """A meta_lr sweep rebuilt the optimizer without the clip (other numbers than sequential runs, and trial
    checkpoints of another structure); learned-rate algorithms crashed with a traceback."""
    code = main(["sweep", "--config", "sinusoid-maml", *extra, "--grid", grid, "--vectorize", "--steps", "2",
                 "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err


def test_log_range_of_integers_is_log_uniform():
    rng = S.parse_range("train.steps=1:1000:log")
    assert rng == ("train.steps", 1.0, 1000.0, True, True)
    draws = [t["train.steps"] for t in S.make_trials([], [rng], random=2001, seed=0)]
    assert all(isinstance(v, int) and 1 <= v <= 1000 for v in draws)
    median = sorted(draws)[len(draws) // 2]
    assert 26 <= median <= 38, median  # log-uniform: sqrt(1 * 1000) ~ 32 (uniform would give ~500)
    assert min(draws) == 1 and max(draws) > 500  # the whole range is drawn


def test_best_ranks_only_finite_metrics(tmp_path):
    m = "K=5 loss after 2 step(s)"
    rows = [{"trial": 0, "status": "ok", m: math.nan}, {"trial": 1, "status": "ok", m: 6.3},
            {"trial": 2, "status": "ok", m: math.inf}, {"trial": 3, "status": "ok", m: 7.0},
            {"trial": 4, "status": "nonfinite"}]
    assert S._finish(rows, ["a.x"], m, tmp_path / "a", print)["best"] == 1
    acc = "K=1 accuracy after 0 step(s)"
    rows = [{"trial": 0, "status": "ok", acc: math.nan}, {"trial": 1, "status": "ok", acc: 0.4},
            {"trial": 2, "status": "ok", acc: 0.3}]
    assert S._finish(rows, ["a.x"], acc, tmp_path / "b", print)["best"] == 1
    rows = [{"trial": 0, "status": "ok", m: math.nan}, {"trial": 1, "status": "ok", m: -math.inf}]
    res = S._finish(rows, ["a.x"], m, tmp_path / "c", print)
    assert res["best"] is None and json.loads((tmp_path / "c" / "results.json").read_text())["best"] is None


def _trial_cfg(steps: int, overrides: dict, index: int, extra=()):
    from jmeta.run.config import apply_overrides

    sets = [TINY[i + 1] for i, a in enumerate(TINY) if a == "--set"] + list(extra)
    return S.trial_config(apply_overrides(load("sinusoid-maml"), [f"train.steps={steps}", *sets]), overrides, index)


def test_unknown_metric_fails_before_any_trial(tmp_path, capsys):
    out = tmp_path / "s"
    code = main(["sweep", *TINY, "--grid", "algorithm.inner_lr=0.01,0.02", "--steps", "2", "--metric", "nope",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "--metric 'nope'" in err and "K=5 loss after 2 step(s)" in err and "Traceback" not in err
    assert not (out / "trial_000").exists()
    cfg = _trial_cfg(2, {"algorithm.inner_lr": 0.01}, 0)
    assert S.eval_metric_names(cfg) == ["K=5 loss after 1 step(s)", "K=5 loss after 2 step(s)"]
    img = load("omniglot-5w1s-protonet")
    assert S.eval_metric_names(img) == [f"K=1 {m} after 0 step(s)" for m in ("loss", "accuracy")]


def test_rerun_resumes_interrupted_and_stale_trials(tmp_path, capsys):
    """A trial killed mid-training is resumed; an eval.json of fewer steps than the config is not reused."""
    from jmeta.run.runner import train

    out = tmp_path / "s"
    argv = ["sweep", *TINY, "--grid", "algorithm.inner_lr=0.005,0.02", "--steps", "20",
            "--set", "train.checkpoint_every=10", "--out", str(out)]
    cfg0 = _trial_cfg(20, {"algorithm.inner_lr": 0.005}, 0, ["train.checkpoint_every=10"])
    train(cfg0, out / "trial_000", stop_after=10, progress=False, tensorboard=False, plots=False)  # "killed"
    assert not (out / "trial_000" / "eval.json").exists()
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "resuming" in text and str(out / "trial_000") in text
    res = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in res["rows"]] == ["ok", "ok"]
    for i in range(2):
        assert json.loads((out / f"trial_{i:03d}" / "eval.json").read_text())["step"] == 20
    steps = [json.loads(x)["step"] for x in (out / "trial_000" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20]

    # an eval.json from fewer steps than the config asks for (a longer re-run killed early) is not reused
    ev_path = out / "trial_001" / "eval.json"
    ev = json.loads(ev_path.read_text())
    ev["step"] = 5
    ev_path.write_text(json.dumps(ev))
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert text.count("done before, reusing") == 1 and "resuming" in text
    assert json.loads(ev_path.read_text())["step"] == 20


def test_trial_folder_of_another_config_is_refused_before_any_trial(tmp_path, capsys):
    out = tmp_path / "s"
    other = out / "trial_001"
    other.mkdir(parents=True)
    (other / "config.json").write_text(_trial_cfg(5, {"algorithm.inner_lr": 0.02}, 1).to_json())
    (other / "metrics.jsonl").write_text('{"step": 5, "loss": 1.0}\n')
    code = main(["sweep", *TINY, "--grid", "algorithm.inner_lr=0.01,0.02", "--steps", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and str(other) in err and "train.steps" in err and "another --out" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (out / "trial_000").exists()  # nothing trained
    assert (other / "metrics.jsonl").read_text() == '{"step": 5, "loss": 1.0}\n'  # nothing overwritten


def test_rerun_of_vectorized_sweep_reuses_or_refuses(tmp_path, capsys, vectorized_sweep):
    import shutil

    out = tmp_path / "v"
    shutil.copytree(vectorized_sweep[0], out)  # the finished sweep (trained by the fixture with these argv)
    argv = vectorized_sweep[1][:-1] + [str(out)]
    assert argv[-3:] == ["--vectorize", "--out", str(out)]
    first = json.loads((out / "results.json").read_text())
    capsys.readouterr()
    assert main(argv) == 0  # finished: reused, not trained again
    assert capsys.readouterr().out.count("done before, reusing") == 4
    again = json.loads((out / "results.json").read_text())
    assert [r[first["metric"]] for r in again["rows"]] == [r[first["metric"]] for r in first["rows"]]
    assert again["best"] == first["best"]

    # a trial that diverged in the vectorised program (no eval.json, last logged loss NaN) is reused as such
    ev = (out / "trial_001" / "eval.json").read_text()
    (out / "trial_001" / "eval.json").unlink()
    metrics = (out / "trial_001" / "metrics.jsonl").read_text()
    recs = [json.loads(x) for x in metrics.splitlines()]
    recs[-1]["loss"] = math.nan
    (out / "trial_001" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(argv) == 0
    assert [r["status"] for r in json.loads((out / "results.json").read_text())["rows"]] == ["ok", "nonfinite",
                                                                                           "ok", "ok"]
    capsys.readouterr()

    # an unfinished trial folder is refused up front, and nothing is written into it
    (out / "trial_001" / "metrics.jsonl").write_text(metrics)
    before = sorted(p.name for p in (out / "trial_001").rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(out / "trial_001") in err and "without --vectorize" in err and "Traceback" not in err
    assert sorted(p.name for p in (out / "trial_001").rglob("*")) == before
    assert main(argv[:-3] + ["--out", str(out)]) == 0  # without --vectorize: finished by resuming it
    assert "resuming" in capsys.readouterr().out
    assert json.loads((out / "trial_001" / "eval.json").read_text())["summary"] == json.loads(ev)["summary"]


def test_a_diverged_vectorised_trial_is_recognised_as_metrics_log_writes_it(tmp_path):
    """The runner's MetricsLog writes a NaN loss as the string "nan": a trial whose last record holds it (and
    no eval.json) diverged."""
    from jmeta.run.logs import MetricsLog

    cfg = load("sinusoid-maml")
    cfg.train.steps = 20
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write(10, {"loss": 1.5})
    log.write(20, {"loss": float("nan")})
    log.close()
    assert MetricsLog.read(tmp_path / "metrics.jsonl")[-1]["loss"] == "nan"
    assert S._diverged_vectorized(tmp_path, cfg)
    cfg.train.steps = 30  # its last record is not the final step: unfinished, not diverged
    assert not S._diverged_vectorized(tmp_path, cfg)


def test_trial_config_written_before_a_key_existed_is_the_same_config(tmp_path):
    """A trial folder's config.json from an older jmeta lacks keys added since (e.g. model.activation); with their
    defaults it is the same config, so a re-run reuses or resumes the trial instead of refusing the folder."""
    cfg = _trial_cfg(5, {"algorithm.inner_lr": 0.02}, 1)
    d = tmp_path / "trial_001"
    d.mkdir()
    old = json.loads(cfg.to_json())
    del old["model"]["activation"]
    (d / "config.json").write_text(json.dumps(old))
    (d / "metrics.jsonl").write_text('{"step": 5, "loss": 1.0}\n')
    assert S.trial_folder_state(d, cfg)[0] == "resume"
    old["model"]["activation"] = "nope"  # not a valid config: never written to
    (d / "config.json").write_text(json.dumps(old))
    state, why = S.trial_folder_state(d, cfg)
    assert state == "other" and "model.activation" in why


def test_trial_folder_with_only_another_config_json_is_left_alone(tmp_path):
    """A lone config.json of this trial is a trial that never started ("new"); one of another config, or a
    file that is not a jmeta config, would be overwritten by the trial's run, which refuses it: "other"."""
    cfg = _trial_cfg(5, {"algorithm.inner_lr": 0.02}, 1)
    d = tmp_path / "trial_001"
    d.mkdir()
    (d / "config.json").write_text(cfg.to_json())
    assert S.trial_folder_state(d, cfg) == ("new", "")
    (d / "config.json").write_text(_trial_cfg(5, {"algorithm.inner_lr": 0.03}, 1).to_json())
    state, why = S.trial_folder_state(d, cfg)
    assert state == "other" and "another run's config" in why
    (d / "config.json").write_text("{}}")
    state, why = S.trial_folder_state(d, cfg)
    assert state == "other" and "not a jmeta config" in why
