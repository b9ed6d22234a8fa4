"""Configs: presets, overrides, validation errors that name the key and the valid choices."""

from __future__ import annotations

import json

import pytest

from jmeta import config as C


def test_default_is_the_papers_sinusoid_setting():
    cfg = C.load(None)
    assert (cfg.task.family, cfg.task.k_support, cfg.algorithm.name) == ("sinusoid", 10, "maml")
    assert (cfg.algorithm.inner_lr, cfg.algorithm.inner_steps) == (0.01, 1)
    assert (cfg.train.meta_batch_size, cfg.train.meta_lr, cfg.train.steps) == (25, 1e-3, 70_000)
    assert cfg.model.hidden == (40, 40)


def test_every_preset_builds_and_roundtrips_through_json(tmp_path):
    from jmeta.experiment import build

    for name, make in C.PRESETS.items():
        cfg = make()
        C.validate(cfg)
        p = tmp_path / f"{name}.json"
        p.write_text(cfg.to_json())
        again = C.load(str(p))
        assert again.to_dict() == cfg.to_dict(), name
        if cfg.task.family == "sinusoid":
            exp = build(cfg)
            assert callable(exp.train_sample) and set(exp.eval_samples) == set(cfg.eval.shots)


def test_overrides_parse_values():
    cfg = C.load("sinusoid-maml")
    cfg = C.apply_override(cfg, "algorithm.inner_lr=0.02")
    cfg = C.apply_override(cfg, "algorithm.first_order=true")
    cfg = C.apply_override(cfg, "model.hidden=[64, 64]")
    cfg = C.apply_override(cfg, "algorithm.learn_lr=per_param")
    cfg = C.apply_override(cfg, "train.task_parallel=5")
    assert cfg.algorithm.inner_lr == 0.02 and cfg.algorithm.first_order is True
    assert cfg.model.hidden == (64, 64) and cfg.algorithm.learn_lr == "per_param"
    assert cfg.train.task_parallel == 5
    cfg = C.apply_override(cfg, "algorithm.learn_lr=null")
    assert cfg.algorithm.learn_lr is None


@pytest.mark.parametrize("override, message", [
    ("algorithm.inner_lrr=0.1", r"unknown key 'algorithm.inner_lrr'; valid keys of algorithm: \[.*'inner_lr'"),
    ("algo.inner_lr=0.1", r"section one of"),
    ("algorithm.name=maml2", r"algorithm.name must be one of \[.*'maml'"),
    ("algorithm.inner_lr=-1", r"algorithm.inner_lr must be > 0"),
    ("task.k_support=0", r"task.k_support must be >= 1"),
    ("train.steps=ten", r"train.steps must be an integer"),
    ("algorithm.first_order=3", r"algorithm.first_order must be true or false"),
    ("train.task_parallel=fast", r"train.task_parallel must be"),
    ("eval.report_steps=[1, 50]", r"eval.report_steps must be integers in \[0, eval.steps=10\]"),
    ("inner_lr", r"must look like section.key=value"),
])
def test_bad_overrides_name_the_key_and_valid_choices(override, message):
    with pytest.raises(C.ConfigError, match=message):
        C.apply_override(C.load(None), override)


def test_unknown_preset_and_bad_file(tmp_path):
    with pytest.raises(C.ConfigError, match=r"no preset or config file named 'nope'; presets: \["):
        C.load("nope")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(C.ConfigError, match="is not valid JSON"):
        C.load(str(bad))
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"train": {"stepz": 3}}))
    with pytest.raises(C.ConfigError, match=r"unknown key\(s\) \['train.stepz'\]"):
        C.load(str(extra))


def test_anil_without_head_is_a_clear_error():
    from jmeta.experiment import build

    cfg = C.apply_override(C.load(None), "algorithm.name=anil")
    with pytest.raises(C.ConfigError, match="adapt_params must name the head"):
        build(cfg)
