"""Image presets end to end through the runner (Omniglot, real data, tiny budgets) and their config errors."""

import json

import jax
import numpy as np
import pytest

from jmeta.run import config as C
from jmeta.run.config import ConfigError


def _small(name, *extra):
    cfg = C.load(name)
    return C.apply_overrides(cfg, ["model.filters=8", "train.steps=3", "train.meta_batch_size=2",
                                   "train.log_every=1", "train.checkpoint_every=0", "eval.num_tasks=10",
                                   "eval.batch_size=5", *extra])


def _run(cfg, tmp_path, data_dir):
    from jmeta.run.runner import train

    return train(cfg, tmp_path, progress=False, data_dir=data_dir, tensorboard=False, plots=False)


def test_omniglot_maml_preset_runs_and_reports_accuracy_with_ci(tmp_path, data_dir):
    cfg = _small("omniglot-5w1s-maml")
    assert (cfg.algorithm.inner_lr, cfg.algorithm.inner_steps, cfg.eval.steps) == (0.4, 1, 3)
    summary = _run(cfg, tmp_path, data_dir)
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["num_tasks"] == 10 and ev == summary["eval"]
    acc = ev["summary"]["K=1 accuracy after 3 step(s)"]
    assert 0.0 <= acc["mean"] <= 1.0 and acc["ci95"] > 0
    curve = ev["results"]["K=1"]["accuracy"]["mean"]
    assert len(curve) == 4  # 0..3 adaptation steps
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["step"] for l in lines] == [1, 2, 3]
    assert json.loads((tmp_path / "config.json").read_text())["task"]["family"] == "omniglot"
    from jmeta.ops import recommended_conv_impl

    assert ev["conv_impl"] == recommended_conv_impl(per_task_kernels=True)  # recorded: MAML adapts the kernels


def test_protonet_trains_with_more_ways_than_it_tests(tmp_path, data_dir):
    from jmeta.run.experiment import build

    cfg = _small("omniglot-5w1s-protonet", "task.n_way=10")
    exp = build(cfg, data_dir=data_dir)
    assert exp.algorithm.n_way == 10 and exp.eval_algorithm.n_way == 5
    # shapes only (jax.eval_shape): no eager sampling ops compiled one by one
    batch = jax.eval_shape(lambda key: exp.eval_samples[1](key, 2, exp.eval_data), jax.random.key(0))
    assert batch.support_x.shape == (2, 5, 28, 28, 1) and batch.query_y.shape == (2, 5 * 15)
    summary = _run(cfg, tmp_path, data_dir)
    acc = summary["eval"]["summary"]["K=1 accuracy after 0 step(s)"]["mean"]
    assert acc > 0.3  # embeddings of a random Conv4 already separate Omniglot characters better than chance


def test_imaml_and_mamlpp_presets_take_a_finite_meta_step(data_dir):
    from jmeta.run.experiment import build
    from jmeta.train.step import init_train_state, make_meta_step

    for name, extra in (("omniglot-5w1s-imaml", ["algorithm.inner_steps=2"]),
                        ("omniglot-5w1s-mamlpp", ["algorithm.inner_steps=2"])):
        cfg = _small(name, *extra)
        exp = build(cfg, data_dir=data_dir)
        state = init_train_state(exp.algorithm, exp.model.params, exp.model.state, exp.meta_optimizer)
        step = make_meta_step(exp.algorithm, exp.train_sample, exp.meta_optimizer, meta_batch_size=2,
                              task_parallel=exp.task_parallel)
        new, metrics = step(state, jax.random.key(0), exp.train_data)
        assert np.isfinite(float(metrics["loss"])), name
        moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                                             new.meta_params, state.meta_params))
        assert max(moved) > 0, name


@pytest.mark.parametrize("name", ["omniglot-5w1s-maml", "miniimagenet-5w1s-protonet"])
@pytest.mark.parametrize("split", ["test", "val"])
def test_held_out_classes_are_never_meta_trained_on(name, split, data_dir):
    from jmeta.run.experiment import load_image_data

    cfg = C.apply_overrides(C.load(name), [f"eval.split={split}", "task.rotations=false"]
                            if name.startswith("omniglot") else [f"eval.split={split}"])
    train, held = load_image_data(cfg, data_dir=data_dir)
    assert held.num_classes >= 16 and not set(train.class_names) & set(held.class_names)
    if name.startswith("omniglot"):
        assert train.num_classes == (1100 if split == "val" else 1200)


def test_image_config_errors_name_the_key(data_dir):
    from jmeta.run.experiment import build

    with pytest.raises(ConfigError, match="eval.n_way"):
        build(_small("omniglot-5w1s-maml", "eval.n_way=20"), data_dir=data_dir)
    with pytest.raises(ConfigError, match="model.name"):
        C.apply_overrides(C.load("omniglot-5w1s-maml"), ["model.name=mlp"])
    with pytest.raises(ConfigError, match="eval.split"):
        C.apply_overrides(C.load("omniglot-5w1s-maml"), ["eval.split=train"])
    with pytest.raises(ConfigError, match="lr_boundaries"):
        C.apply_overrides(C.load("omniglot-5w1s-maml"), ["train.lr_boundaries=[10]"])


def _has_conv(model, shape):
    x = jax.numpy.zeros((2, *shape))
    jaxpr = jax.make_jaxpr(lambda p, s: model.apply(p, s, x, train=True))(model.params, model.state)
    return "conv_general_dilated" in str(jaxpr)


@pytest.mark.parametrize("name, extra, backend, expected", [
    ("omniglot-5w1s-maml", [], "gpu", "patches"),          # per-task kernels: no grouped convolutions on GPU
    ("omniglot-5w1s-fomaml", [], "gpu", "patches"),
    ("omniglot-5w1s-maml", ["algorithm.name=anil", "algorithm.adapt_params=head"], "gpu", "lax"),  # shared body
    ("omniglot-5w1s-maml", ['algorithm.adapt_params=["block_3", "head"]'], "gpu", "patches"),
    ("omniglot-5w1s-protonet", [], "gpu", "lax"),
    ("omniglot-5w1s-maml", ["model.conv_impl=lax"], "gpu", "lax"),  # an explicit form is kept
    ("omniglot-5w1s-protonet", ["model.conv_impl=patches"], "gpu", "patches"),
    ("omniglot-5w1s-imaml", [], "gpu", "patches"),
    ("omniglot-5w1s-maml", [], "cpu", "patches_vjp"),
    ("omniglot-5w1s-protonet", [], "cpu", "patches_vjp"),
])
def test_image_model_convolution_form_follows_backend_and_algorithm(name, extra, backend, expected, data_dir,
                                                                   monkeypatch):
    from jmeta.run.experiment import build

    cfg = _small(name, *extra)
    reference = build(cfg, data_dir=data_dir).model.params  # this machine's backend
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    exp = build(cfg, data_dir=data_dir)
    assert exp.conv_impl == expected
    # the model really runs that form: "patches" has no convolution op; the others do
    assert _has_conv(exp.model, (28, 28, 1)) == (expected != "patches")
    # the form does not change the initialisation
    for a, b in zip(jax.tree.leaves(exp.model.params), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    if name.endswith("imaml"):  # forward-over-reverse Hessian-vector products need a form without custom_vjp
        assert exp.algorithm.hvp == ("reverse" if expected == "patches_vjp" else "forward")


def test_every_convolution_form_gives_the_same_meta_step(data_dir):
    """One second-order MAML meta-step of the image preset built with each form: the same meta-gradient
    (an SGD(1) meta-optimizer, so the parameter change is the gradient; Adam's first step is about sign(g)
    and would amplify rounding in the near-zero gradients of the biases before BatchNorm)."""
    import optax

    from jmeta.run.experiment import build
    from jmeta.train.step import init_train_state, make_meta_step

    grads = {}
    for impl in ("lax", "patches", "patches_vjp"):
        exp = build(_small("omniglot-5w1s-maml", f"model.conv_impl={impl}"), data_dir=data_dir)
        assert exp.conv_impl == impl
        opt = optax.sgd(1.0)
        state = init_train_state(exp.algorithm, exp.model.params, exp.model.state, opt)
        step = make_meta_step(exp.algorithm, exp.train_sample, opt, meta_batch_size=2, task_parallel="vmap")
        with jax.default_matmul_precision("highest"):
            new, metrics = step(state, jax.random.key(3), exp.train_data)
        assert np.isfinite(float(metrics["loss"]))
        grads[impl] = jax.tree.map(lambda a, b: np.asarray(b) - np.asarray(a), new.meta_params, state.meta_params)
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads["lax"]))
    assert scale > 1e-3
    for impl in ("patches", "patches_vjp"):
        for a, b in zip(jax.tree.leaves(grads[impl]), jax.tree.leaves(grads["lax"])):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * scale)


def test_bad_conv_impl_names_the_key_and_choices():
    valid = r"model.conv_impl must be one of \['auto', 'lax', 'patches_vjp', 'patches'\]"
    with pytest.raises(ConfigError, match=valid):
        C.apply_overrides(C.load("omniglot-5w1s-maml"), ["model.conv_impl=cudnn"])
    with pytest.raises(ConfigError, match=r"model.conv_impl is not an option of model.name='mlp'"):  # no convolutions
        C.apply_overrides(C.load("sinusoid-maml"), ["model.conv_impl=patch"])


def test_meta_optimizer_schedules():
    from jmeta.run.experiment import build_meta_optimizer

    cfg = C.load("miniimagenet-5w1s-metaoptnet-svm")
    opt = build_meta_optimizer(cfg)
    params = {"w": jax.numpy.ones(3)}
    state = opt.init(params)
    # with zero gradients only weight decay moves the parameters: lr * wd * w, Nesterov momentum aside
    upd, _ = opt.update({"w": jax.numpy.zeros(3)}, state, params)
    assert np.allclose(np.asarray(upd["w"]), -0.1 * 5e-4 * (1 + 0.9), rtol=1e-5)
    cfg = C.apply_overrides(C.load("omniglot-5w1s-protonet"), ["train.lr_decay_every=2"])
    opt = build_meta_optimizer(cfg)
    state = opt.init(params)
    sizes = []
    for _ in range(5):
        upd, state = opt.update({"w": jax.numpy.ones(3)}, state, params)
        sizes.append(float(np.abs(np.asarray(upd["w"])).max()))
    np.testing.assert_allclose(sizes, [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4], rtol=1e-3)
