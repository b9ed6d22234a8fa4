"""``scripts/results_tables.py``: the README's results tables are what ``results/`` says (issue 19)."""

from __future__ import annotations

import importlib.util
import io
import json
import pathlib
import tarfile

REPO = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("_script_results_tables", REPO / "scripts" / "results_tables.py")
rt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rt)


def test_readme_tables_equal_the_ones_regenerated_from_results():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert rt.render(text) == text, "README.md's results tables are stale: run python scripts/results_tables.py"


def test_every_run_in_results_is_in_the_readme():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    found = rt.runs()
    assert found, "results/ holds no run"
    for run in found:
        assert f"`{run.relative_to(rt.RESULTS).as_posix()}" in text, run


def _run(root, name, *, preset, step, protocol, device, acc=0.987, ci=0.004, times=(10.0, 20.0, 30.0)):
    run = root / name
    run.mkdir(parents=True)
    cfg = {"name": preset, "task": {"n_way": 5}, "train": {"steps": protocol}, "eval": {"n_way": 0}}
    ev = {"name": preset, "step": step, "num_tasks": 600, "device": device,
          "summary": {"K=1 accuracy after 0 step(s)": {"mean": 0.2, "ci95": 0.01},
                      "K=1 accuracy after 3 step(s)": {"mean": acc, "ci95": ci}}}
    (run / "config.json").write_text(json.dumps(cfg))
    (run / "eval.json").write_text(json.dumps(ev))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": 100 * (i + 1), "time": t}) + "\n"
                                               for i, t in enumerate(times)))
    (run / "stage.json").write_text(json.dumps({"stage": run.name, "protocol_steps": protocol, "note": "a note"}))
    return run


def test_rows_state_device_steps_wall_time_and_paper_and_label_reduced_budgets(tmp_path):
    _run(tmp_path, "gpu/omniglot-5w1s-maml", preset="omniglot-5w1s-maml", step=60_000, protocol=60_000,
         device="NVIDIA H200")
    _run(tmp_path, "gpu/omniglot-20w1s-maml", preset="omniglot-20w1s-maml", step=18_000, protocol=60_000,
         device="NVIDIA H200", acc=0.9, ci=0.01)
    table = rt.accuracy_table(tmp_path).splitlines()
    full = next(ln for ln in table if "`gpu/omniglot-5w1s-maml`" in ln)
    assert "| NVIDIA H200 | 60,000 of 60,000 |" in full and "reduced" not in full
    assert "| 30 s |" in full and "98.70 ± 0.40% (5-way 1-shot, 600 test episodes, 3 steps)" in full
    assert "| 98.7 ± 0.4 |" in full and "a note" in full
    reduced = next(ln for ln in table if "`gpu/omniglot-20w1s-maml`" in ln)
    assert "18,000 of 60,000 (**reduced budget**)" in reduced and "95.8 ± 0.3" in reduced
    # presets measured on the GPU leave the "not measured" rows; the others stay
    missing = [ln for ln in table if "not measured" in ln]
    assert len(missing) == len(rt.PAPER) - 2 and not any("omniglot-5w1s-maml`" in ln for ln in missing)


def test_cpu_timing_projects_the_protocol_from_the_logged_step_times(tmp_path):
    run = _run(tmp_path, "cpu/p", preset="omniglot-5w1s-protonet", step=300, protocol=20_000, device="cpu",
               times=(50.0, 150.0, 200.0))
    (run / "stage.json").write_text(json.dumps({"protocol_steps": 20_000, "machine": "2-core CPU"}))
    text = rt.cpu_timing(tmp_path)
    # (200 - 50) s over 200 steps = 0.75 s per step; windows 1.00 and 0.50 s; 20,000 steps = 4.2 h (2.8 fastest)
    assert "0.75 s per meta-step" in text and "(0.50–1.00 s" in text
    assert "about 4.2 hours" in text and "(2.8 at the fastest window)" in text


def test_bench_table_reports_each_peer_and_the_speedup(tmp_path):
    d = tmp_path / "gpu" / "bench"
    d.mkdir(parents=True)
    bench = {"config": {"meta_batch_size": 32},
             "machine": {"backend": "gpu", "device_kind": "NVIDIA H200", "torch_device": "cuda"},
             "results": {"auto": {"compile_s": 5.0, "median_step_s": 0.002},
                         "torch_loop": {"median_step_s": 0.05}, "higher": {"median_step_s": 0.08},
                         "learn2learn": {"skipped": "learn2learn is not installed"}}}
    (d / "omniglot_step.json").write_text(json.dumps(bench))
    row = rt.bench_table(tmp_path).splitlines()[2]
    assert row.startswith("| NVIDIA H200 (torch on cuda) | 32 | 2.0 | 50.0 | skipped | 80.0 | **25.0×** |"), row
    assert "not measured" not in rt.bench_table(tmp_path)


def test_import_gpu_keeps_the_small_files_of_each_stage(tmp_path):
    src = tmp_path / "out"
    src.mkdir()
    with tarfile.open(src / "01-omniglot-5w1s-maml.tar.gz", "w:gz") as tar:
        for name, data in (("omniglot-5w1s-maml/eval.json", b"{}"), ("omniglot-5w1s-maml/stage.json", b"{}"),
                           ("omniglot-5w1s-maml/omniglot-5w1s-maml.log", b"log"),
                           ("omniglot-5w1s-maml/runner_state.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (src / "summary.txt").write_text("omniglot-5w1s-maml: ok\n")
    files = rt.import_gpu(src, tmp_path / "results" / "gpu")
    assert sorted(f.name for f in files) == ["eval.json", "stage.json"]
    assert (tmp_path / "results" / "gpu" / "summary.txt").read_text() == "omniglot-5w1s-maml: ok\n"


def test_import_gpu_refuses_a_rehearsal(tmp_path):
    import pytest

    src = tmp_path / "out"
    src.mkdir()
    with tarfile.open(src / "01-x.tar.gz", "w:gz") as tar:
        data = json.dumps({"stage": "x", "rehearsal": True}).encode()
        info = tarfile.TarInfo("x/stage.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="rehearsal"):
        rt.import_gpu(src, tmp_path / "results")


def test_render_refuses_a_readme_without_its_markers():
    import pytest

    with pytest.raises(ValueError, match="results:accuracy:begin"):
        rt.render("no markers here")
