"""Configs: presets, overrides, validation errors that name the key and the valid choices."""

from __future__ import annotations

import json

import pytest

from jmeta.run import config as C


def test_default_is_the_papers_sinusoid_setting():
    cfg = C.load(None)
    assert (cfg.task.family, cfg.task.k_support, cfg.algorithm.name) == ("sinusoid", 10, "maml")
    assert (cfg.algorithm.inner_lr, cfg.algorithm.inner_steps) == (0.01, 1)
    assert (cfg.train.meta_batch_size, cfg.train.meta_lr, cfg.train.steps) == (25, 1e-3, 70_000)
    assert cfg.model.hidden == (40, 40)


def test_every_preset_builds_and_roundtrips_through_json(tmp_path):
    from jmeta.run.experiment import build

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
    ("algorithm.inner_lrr=0.1", r"algorithm.inner_lrr is not an option of algorithm.name='maml'; its options: \[.*'inner_lr'"),
    ("algo.inner_lr=0.1", r"section one of"),
    ("algorithm.name=maml2", r"algorithm.name must be one of \[.*'maml'"),
    ("algorithm.inner_lr=-1", r"algorithm.inner_lr must be a number > 0"),
    ("task.k_support=0", r"task.k_support must be an integer >= 1"),
    ("train.steps=ten", r"train.steps must be an integer"),
    ("algorithm.first_order=3", r"algorithm.first_order must be True or False"),
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
    from jmeta.run.experiment import build

    cfg = C.apply_override(C.load(None), "algorithm.name=anil")
    with pytest.raises(C.ConfigError, match=r"algorithm.adapt_params='head'.*selects no parameter.*'layers_2/kernel'"):
        build(cfg)


def test_eval_steps_are_one_setting():
    """algorithm.eval_steps and eval.steps are the evaluation's inner steps: setting one sets both (the
    evaluation used eval.steps while `jmeta export` used algorithm.eval_steps), report steps follow a lower
    count, contradicting values are refused."""
    base = C.load("sinusoid-maml")
    for key in ("algorithm.eval_steps", "eval.steps"):
        cfg = C.apply_override(base, f"{key}=3")
        assert (cfg.eval.steps, cfg.eval.report_steps) == (3, (1, 3)) and "eval_steps" not in cfg.algorithm.to_dict()
    cfg = C.apply_override(base, "eval.steps=20")
    assert (cfg.eval.steps, cfg.eval.report_steps) == (20, (1, 10))
    cfg = C.apply_overrides(base, ["eval.steps=4", "eval.report_steps=[2]"])
    assert (cfg.eval.steps, cfg.eval.report_steps) == (4, (2,))
    with pytest.raises(C.ConfigError, match="must agree"):
        C.apply_overrides(base, ["eval.steps=4", "algorithm.eval_steps=5"])


@pytest.mark.parametrize("overrides, message", [
    (["algorithm.name=imaml", "algorithm.remat=full"], "algorithm.remat is not an option of algorithm.name='imaml'"),
    (["algorithm.name=imaml", "algorithm.learn_lr=scalar"], "algorithm.learn_lr is not an option of algorithm.name='imaml'"),
    (["algorithm.name=reptile", "algorithm.learn_lr=scalar"], "Reptile cannot learn inner learning rates"),
    (["algorithm.name=reptile", "algorithm.multi_step_loss=true"], "Reptile has no query loss"),
])
def test_options_the_algorithm_does_not_use_are_refused(overrides, message):
    """They were saved in config.json and changed nothing; now an option is one of the algorithm's constructor
    arguments, or an error when the config is made."""
    with pytest.raises(C.ConfigError, match=message):
        C.apply_overrides(C.load("sinusoid-maml"), overrides)


def test_head_and_resnet_options_are_refused_before_any_data_is_read():
    with pytest.raises(C.ConfigError, match=r"algorithm.first_order is not an option of algorithm.name='protonet'; "
                                            r"its options: \['bn_mode', 'joint_forward'\]"):
        C.apply_overrides(C.load("miniimagenet-5w1s-protonet"), ["algorithm.first_order=true"])
    with pytest.raises(C.ConfigError, match=r"model.filters is not an option of model.name='resnet12'"):
        C.apply_overrides(C.load("miniimagenet-5w1s-r2d2"), ["model.filters=32"])  # conv4's width


def test_bn_mode_reaches_the_heads():
    """ProtoNet, R2-D2 and MetaOptNet take bn_mode (it was ignored); MAML's per-step mode is refused by them."""
    from jmeta.run.experiment import build_algorithm

    for name, mode in (("omniglot-5w1s-protonet", "frozen"), ("miniimagenet-5w1s-r2d2", "frozen"),
                       ("miniimagenet-5w1s-metaoptnet-svm", "frozen")):
        cfg = C.apply_overrides(C.load(name), [f"algorithm.bn_mode={mode}"])
        assert build_algorithm(cfg, lambda *a, **k: None, loss="cross_entropy").bn_mode == mode
    with pytest.raises(C.ConfigError, match="algorithm.bn_mode must be one of"):
        C.apply_overrides(C.load("omniglot-5w1s-protonet"), ["algorithm.bn_mode=per_step"])


def test_sinusoid_eval_k_query_reaches_the_evaluation_tasks():
    import jax

    from jmeta.run.experiment import build

    exp = build(C.apply_overrides(C.load("sinusoid-maml"), ["eval.k_query=100"]))
    assert exp.eval_samples[5](jax.random.key(0), 2).query_x.shape == (2, 100, 1)
    default = build(C.load("sinusoid-maml-k5"))
    assert default.eval_samples[5](jax.random.key(0), 2).query_x.shape == (2, 10, 1)


def test_cosine_meta_lr_schedule_and_the_mamlpp_preset():
    """MAML++ cosine-anneals Adam's rate to 1e-5 over training and uses the multi-step loss for 10 epochs of
    500 iterations (the authors' omniglot_maml++ config)."""
    import jax.numpy as jnp
    import numpy as np

    from jmeta.run.experiment import build_meta_optimizer

    cfg = C.apply_overrides(C.load("sinusoid-maml"), ["train.steps=100", "train.lr_cosine=true",
                                                      "train.lr_min=1e-5", "train.meta_optimizer=sgd"])
    opt = build_meta_optimizer(cfg)
    params, grads = {"w": jnp.zeros(())}, {"w": jnp.ones(())}
    state, lrs = opt.init(params), []
    for _ in range(101):
        u, state = opt.update(grads, state, params)
        lrs.append(-float(u["w"]))
    np.testing.assert_allclose([lrs[0], lrs[50], lrs[100]], [1e-3, (1e-3 + 1e-5) / 2, 1e-5], rtol=1e-5)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    for bad, message in ((["train.lr_cosine=true", "train.lr_decay_every=10"], "schedule of its own"),
                         (["train.lr_min=0.01"], r"train.lr_min must be in \[0, train.meta_lr")):
        with pytest.raises(C.ConfigError, match=message):
            C.apply_overrides(C.load("sinusoid-maml"), bad)
    pp = C.load("omniglot-5w1s-mamlpp")
    assert (pp.train.lr_cosine, pp.train.lr_min, pp.algorithm.msl_anneal_steps) == (True, 1e-5, 5_000)
    assert (pp.train.steps, pp.train.meta_batch_size, pp.train.meta_lr) == (50_000, 8, 1e-3)


@pytest.mark.parametrize("override, key", [
    ("train.grad_clip=Infinity", "train.grad_clip"),
    ("train.weight_decay=NaN", "train.weight_decay"),
    ("train.lr_decay=Infinity", "train.lr_decay"),
    ("train.meta_lr=NaN", "train.meta_lr"),  # was refused naming train.lr_min
    ("algorithm.inner_lr=-Infinity", "algorithm.inner_lr"),
    ("train.lr_min=NaN", "train.lr_min"),
])
def test_non_finite_numbers_are_refused_naming_the_key(override, key):
    with pytest.raises(C.ConfigError, match=rf"^{key} must be a finite number .*; got (nan|-?inf)$"):
        C.apply_override(C.load(None), override)


def test_non_finite_lr_scales_are_refused():
    for scales in ("[NaN]", "[Infinity]"):
        with pytest.raises(C.ConfigError, match="train.lr_scales must be positive finite numbers"):
            C.apply_overrides(C.load(None), ["train.lr_boundaries=[10]", f"train.lr_scales={scales}"])


@pytest.mark.parametrize("override, key", [
    ("train.steps=1e20", "train.steps"), ("eval.num_tasks=1e20", "eval.num_tasks"),
    ("train.steps=100000000000000000000", "train.steps"), ("train.steps=2147483648", "train.steps"),
])
def test_huge_integers_are_refused_with_the_bound(override, key):
    with pytest.raises(C.ConfigError, match=rf"{key} must be an integer <= 2147483647; got 1?\d+"):
        C.apply_override(C.load(None), override)
    assert C.apply_override(C.load(None), f"{key}=2147483647")  # the bound itself is accepted


@pytest.mark.parametrize("name", ["../../esc", "/abs/path", "a/b", "..", ".", "", "a\\b"])
def test_a_name_is_a_name_not_a_path(name):
    with pytest.raises(C.ConfigError, match=r"name must be a plain name .* got "):
        C.apply_override(C.load(None), f"name={name}")
    with pytest.raises(C.ConfigError, match=r"name must be a plain name"):
        C.from_dict({"name": name})
    assert C.apply_override(C.load(None), "name=my-run.v2..final").name == "my-run.v2..final"


def test_a_saved_config_always_loads_back(tmp_path):
    """Every value a config accepts survives config.json (non-finite numbers, which JSON writes as null, never
    get in); with the extreme accepted values too."""
    from jmeta.run.logs import atomic_write_json  # how the runner writes config.json

    cfg = C.apply_overrides(C.load(None), ["train.grad_clip=1e308", "train.weight_decay=0", "train.steps=2147483647",
                                           "name=x..y", "train.lr_min=5e-324"])
    for name, make in [("extreme", lambda: cfg), *C.PRESETS.items()]:
        p = tmp_path / f"{name}.json"
        atomic_write_json(p, make().to_dict())
        assert C.load(str(p)).to_dict() == make().to_dict(), name


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--set", "train.grad_clip=Infinity"], "train.grad_clip must be a finite number"),
    (["train", "--set", "train.meta_lr=NaN"], "train.meta_lr must be a finite number"),
    (["train", "--set", "name=../../esc"], "name must be a plain name"),
    (["train", "--steps", "100000000000000000000"], "train.steps must be an integer <= 2147483647"),
])
def test_cli_refuses_bad_values_up_front_in_one_line(tmp_path, monkeypatch, capsys, argv, fragment):
    from jmeta.run.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == [] and not (tmp_path.parent / "esc").exists()  # no run folder made
