"""Weights & Biases sink in offline mode (no network); skipped when wandb is not installed."""

from __future__ import annotations

import time

import pytest

from jmeta.run.wandb_logger import WandbSink


def test_missing_wandb_gives_install_hint(monkeypatch, tmp_path):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "wandb" or name.startswith("wandb."):
            raise ImportError("No module named 'wandb'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match="pip install wandb"):
        WandbSink(tmp_path, {}, mode="offline")


def test_bad_mode(tmp_path):
    with pytest.raises(ValueError, match="online.*offline.*disabled"):
        WandbSink(tmp_path, {}, mode="cloudy")


def test_offline_run_logs_records_and_resumes_same_id(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    sink = WandbSink(tmp_path, {"train": {"seed": 3}}, mode="offline", project="jmeta-test")
    for s in (10, 20, 30):
        sink.write(s, {"step": s, "loss": 0.125 * s, "time": 1.0, "note": "x"})
    assert sink.run.config["train"] == {"seed": 3}
    run_id = sink.run.id
    sink.close()
    sink.close()  # idempotent
    assert (tmp_path / "wandb_id.txt").read_text().strip() == run_id
    files = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 1
    want = (b"loss", b"1.25", b"2.5", b"3.75")
    deadline = time.monotonic() + 60  # wandb's service process flushes the run file shortly after finish()
    while not all(v in files[0].read_bytes() for v in want) and time.monotonic() < deadline:
        time.sleep(0.05)
    data = files[0].read_bytes()
    assert all(v in data for v in want), data[:200]

    again = WandbSink(tmp_path, {}, mode="offline", project="jmeta-test")  # `jmeta train --resume`
    assert again.run.id == run_id
    again.close()


def test_cli_wandb_without_package_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    import builtins

    from jmeta.run.cli import main

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "wandb" or name.startswith("wandb."):
            raise ImportError("No module named 'wandb'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    assert main(["train", "--steps", "1", "--out", str(tmp_path / "r"), "--wandb", "--no-progress"]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1 and err[0].startswith("error: --wandb needs the wandb package: pip install wandb"), err
    assert not (tmp_path / "r" / "metrics.jsonl").exists()
