"""The command line: `jmeta eval` on a trained run, `--help` everywhere, one-line errors on bad arguments."""

from __future__ import annotations

import json
import pathlib

import pytest

from jmeta.run.cli import main

TINY = ["--steps", "20", "--set", "train.log_every=10", "--set", "train.checkpoint_every=10",
        "--set", "train.meta_batch_size=5", "--set", "eval.num_tasks=8", "--set", "eval.shots=[5]",
        "--set", "eval.report_steps=[1,3]", "--set", "eval.steps=3", "--set", "eval.batch_size=4"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--out", str(d), "--no-progress", "--no-plots", *TINY]) == 0
    return d


def _strip(ev):
    return {k: {m: v[m] for m in ("loss",)} for k, v in ev["results"].items()}


def test_eval_reproduces_the_training_runs_evaluation_from_its_checkpoint(run_dir, capsys):
    after_training = json.loads((run_dir / "eval.json").read_text())
    assert after_training["step"] == 20 and after_training["num_tasks"] == 8
    assert main(["eval", str(run_dir), "--no-progress"]) == 0
    again = json.loads((run_dir / "eval.json").read_text())
    # Same checkpointed parameters, same evaluation key: the same numbers.
    assert _strip(again) == _strip(after_training)
    out = capsys.readouterr().out
    assert "at meta-step 20" in out and "K=5 loss after 3 step(s)" in out

    # Other settings go beside eval.json: a quick look never replaces the run's own result.
    own = (run_dir / "eval.json").read_bytes()
    assert main(["eval", str(run_dir), "--num-tasks", "6", "--steps", "2", "--no-progress"]) == 0
    assert (run_dir / "eval.json").read_bytes() == own
    ev = json.loads((run_dir / "eval-6tasks-2steps.json").read_text())
    assert ev["num_tasks"] == 6
    assert len(ev["results"]["K=5"]["loss"]["mean"]) == 3
    assert set(ev["summary"]) == {"K=5 loss after 1 step(s)", "K=5 loss after 2 step(s)"}
    assert "wrote " + str(run_dir / "eval-6tasks-2steps.json") in capsys.readouterr().out


def test_plot_and_presets(run_dir, capsys):
    assert main(["plot", str(run_dir)]) == 0
    assert (run_dir / "learning_curves.png").is_file() and (run_dir / "adaptation_curves.png").is_file()
    assert main(["presets"]) == 0
    assert "sinusoid-maml" in capsys.readouterr().out


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["export"], ["sweep"], ["plot"], ["presets"]])
def test_every_command_has_help(command, capsys):
    assert main([*command, "--help"]) == 0
    assert "usage: jmeta" in capsys.readouterr().out


def _one_line_error(capsys, argv, rc=2):
    assert main(argv) == rc
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--steps", "many"], "invalid int value: 'many'"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["presets", "extra"], "unrecognized arguments: extra"),
    (["eval", "/nonexistent/run"], "not a jmeta run folder"),
    (["export", "/nonexistent/run"], "not a jmeta run folder"),
    (["plot", "/nonexistent/run"], "jmeta run folder"),
    (["sweep", "--grid", "algorithm.inner_lr=0.1"], "the following arguments are required: --out"),
    (["sweep", "--out", "/tmp/x", "--grid", "inner_lr"], "--grid must look like section.key=v1,v2"),
    (["sweep", "--out", "/tmp/x", "--random", "2", "--range", "train.meta_lr=1:0"], "needs lo < hi"),
    (["sweep", "--out", "/tmp/x"], "nothing to sweep"),
    (["train", "--wandb-mode", "cloudy"], "invalid choice: 'cloudy'"),
])
def test_bad_arguments_give_one_line_errors(argv, fragment, capsys):
    assert fragment in _one_line_error(capsys, argv)


def test_bad_arguments_on_a_run_folder(run_dir, capsys):
    assert "--platforms must be" in _one_line_error(capsys, ["export", str(run_dir), "--platforms", "gpu9"])
    assert "only --steps may be given" in _one_line_error(
        capsys, ["train", "--resume", str(run_dir), "--set", "train.seed=1"])
    assert "eval.num_tasks must be >= 1" in _one_line_error(capsys, ["eval", str(run_dir), "--num-tasks", "0"])
    assert "no checkpoint" in _one_line_error(capsys, ["eval", str(_copy_config_only(run_dir))])
    assert not (run_dir.parent / "config-only" / "checkpoints").exists()  # nothing left behind


def _copy_config_only(run_dir: pathlib.Path) -> pathlib.Path:
    d = run_dir.parent / "config-only"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text((run_dir / "config.json").read_text())
    return d


def test_a_run_folder_is_never_overwritten_or_contradicted(run_dir, tmp_path, capsys):
    """A fresh run into a run folder, --out that is a file, --resume with another --out or fewer steps than
    done: one-line errors, and the run folder stays as it was."""
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert "already holds a run" in _one_line_error(capsys, ["train", "--out", str(run_dir), "--no-progress", *TINY])
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    assert "is a file" in _one_line_error(capsys, ["train", "--out", str(afile), "--no-progress", *TINY])
    assert "drop --out" in _one_line_error(capsys, ["train", "--resume", str(run_dir), "--out", str(tmp_path / "x")])
    assert "below the 20 meta-steps" in _one_line_error(
        capsys, ["train", "--resume", str(run_dir), "--steps", "10", "--no-progress"])
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before


def test_eval_json_is_standard_json_when_a_value_is_not_finite(run_dir, tmp_path, capsys):
    """One evaluation task has no CI (NaN): eval.json says null (jq and JavaScript reject NaN), the plots
    still draw."""
    import shutil

    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["eval"]["num_tasks"] = 1  # the run's own setting, so that eval.json itself is rewritten and plotted
    (run / "config.json").write_text(json.dumps(cfg))
    assert main(["eval", str(run), "--no-progress"]) == 0
    capsys.readouterr()

    def no_constants(name):
        raise AssertionError(f"eval.json holds the non-standard constant {name}")

    ev = json.loads((run / "eval.json").read_text(), parse_constant=no_constants)
    assert ev["num_tasks"] == 1
    assert ev["summary"]["K=5 loss after 3 step(s)"]["ci95"] is None
    assert ev["summary"]["K=5 loss after 3 step(s)"]["mean"] > 0
    assert main(["plot", str(run)]) == 0
    assert (run / "adaptation_curves.png").is_file()


def test_default_run_folders_of_one_second_are_distinct(tmp_path, monkeypatch):
    """Two runs started in the same second get runs/NAME-DATE-TIME and runs/NAME-DATE-TIME-2, never one folder."""
    from jmeta.run import cli

    monkeypatch.setattr(cli.time, "strftime", lambda fmt: "20261126-001500")
    a, b = cli._new_run_dir(tmp_path / "runs", "sinusoid-maml"), cli._new_run_dir(tmp_path / "runs", "sinusoid-maml")
    assert (a.name, b.name) == ("sinusoid-maml-20261126-001500", "sinusoid-maml-20261126-001500-2")
    assert a.is_dir() and b.is_dir()
