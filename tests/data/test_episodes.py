"""EpisodeSampler: episode structure, provenance, determinism, no retracing, rotation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta.data import ClassStore
from jmeta.tasks.base import TaskBatch
from jmeta.tasks.episodes import EpisodeSampler, EpisodeTasks, put_on_device

C, M, H = 30, 12, 8


@pytest.fixture(scope="module")
def provenance_store() -> ClassStore:
    """Pixel (0,0) channel 0 = class id, channel 1 = example id; the rest breaks symmetry."""
    images = np.zeros((C, M, H, H, 2), np.uint8)
    images[:, :, 0, 0, 0] = np.arange(C)[:, None]
    images[:, :, 0, 0, 1] = np.arange(M)[None, :]
    images[:, :, 1, 2, :] = 200  # an off-centre marker to see rotations
    return ClassStore(images, [f"c{i}" for i in range(C)], "provenance")


@pytest.fixture(scope="module")
def device_images(provenance_store):
    return put_on_device(provenance_store)


RAW = dict(scale=False, dtype="int32")  # keep raw pixel values to decode provenance


@functools.partial(jax.jit, static_argnums=(0, 3))
def sample(sampler, images, key, num_tasks):
    """Jitted sampling (eager mode would compile every primitive separately)."""
    return sampler.sample(key, num_tasks, images)


def _decode(x):
    """(class, example) of every image in x [..., n, H, W, 2] from pixel (0,0)."""
    x = np.asarray(x)
    return x[..., 0, 0, 0], x[..., 0, 0, 1]


@pytest.mark.parametrize("n, k, q", [(5, 1, 3), (5, 5, 7), (30, 2, 10)])
def test_episode_structure(device_images, n, k, q):
    sampler = EpisodeSampler(n, k, q, **RAW)
    b = sample(sampler, device_images, jax.random.key(0), 16)
    assert isinstance(b, TaskBatch)
    b.validate()
    assert b.support_x.shape == (16, n * k, H, H, 2) and b.query_x.shape == (16, n * q, H, H, 2)
    assert b.support_y.shape == (16, n * k) and b.support_y.dtype == jnp.int32
    assert b.query_y.dtype == jnp.int32
    sc, se = _decode(b.support_x)
    qc, qe = _decode(b.query_x)
    sy, qy = np.asarray(b.support_y), np.asarray(b.query_y)
    for t in range(16):
        # labels 0..N-1, each exactly K times in support and Q times in query
        assert np.array_equal(np.bincount(sy[t], minlength=n), np.full(n, k))
        assert np.array_equal(np.bincount(qy[t], minlength=n), np.full(n, q))
        # each label is one class, the N classes are distinct, same class in support and query
        label_to_class = {}
        for cls, lab in list(zip(sc[t], sy[t])) + list(zip(qc[t], qy[t])):
            assert label_to_class.setdefault(int(lab), int(cls)) == int(cls)
        assert len(set(label_to_class.values())) == n
        # K+Q distinct examples per class, support and query disjoint
        for lab in range(n):
            s_ex = set(se[t][sy[t] == lab].tolist())
            q_ex = set(qe[t][qy[t] == lab].tolist())
            assert len(s_ex) == k and len(q_ex) == q and not s_ex & q_ex


def test_labels_are_randomly_assigned(device_images):
    """Label 0 is not always the smallest class id (labels are permuted)."""
    b = sample(EpisodeSampler(5, 1, 1, **RAW), device_images, jax.random.key(1), 64)
    sc, _ = _decode(b.support_x)  # grouped by label: column i has label i
    assert not np.all(np.argsort(sc, axis=1) == np.arange(5))
    assert len(np.unique(sc)) > 20  # many classes get used


def test_deterministic_per_key_and_varies_across_keys(device_images):
    sampler = EpisodeSampler(5, 2, 3, **RAW)
    f = jax.jit(sampler.sample, static_argnums=1)
    a = f(jax.random.key(7), 4, device_images)
    b = f(jax.random.key(7), 4, device_images)
    c = f(jax.random.key(8), 4, device_images)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.array_equal(a.support_x, c.support_x)


def test_compiles_once_across_keys(device_images):
    sampler = EpisodeSampler(5, 1, 5)
    traces = []

    @jax.jit
    def step(images, key):
        traces.append(1)  # Python side effect: runs only while tracing
        return sampler.sample(key, 8, images)

    for i in range(5):
        step(device_images, jax.random.key(i)).query_x.block_until_ready()
    assert len(traces) == 1


def test_images_are_an_argument_not_a_constant(device_images):
    import re
    sampler = EpisodeSampler(5, 1, 5)
    hlo = jax.jit(sampler.sample, static_argnums=1).lower(jax.random.key(0), 2, device_images).as_text()
    assert re.search(rf"@main\(%arg0: [^)]*%arg1: tensor<{C}x{M}x{H}x{H}x2xui8>", hlo)
    assert len(hlo) < 100_000  # no dataset-sized constant baked in


def test_normalisation(device_images):
    b = sample(EpisodeSampler(3, 1, 1), device_images, jax.random.key(0), 2)
    assert b.support_x.dtype == jnp.float32
    assert float(b.support_x.max()) == pytest.approx(200 / 255)
    normed = EpisodeSampler(3, 1, 1, mean=(0.5, 0.25), std=0.5, dtype="bfloat16")
    b = sample(normed, device_images, jax.random.key(0), 2)
    assert b.support_x.dtype == jnp.bfloat16
    raw = sample(EpisodeSampler(3, 1, 1, **RAW), device_images, jax.random.key(0), 2).support_x
    expect = (np.asarray(raw, np.float32) / 255 - np.array([0.5, 0.25])) / 0.5
    np.testing.assert_allclose(np.asarray(b.support_x, np.float32), expect, atol=1e-2)


def test_shuffle_keeps_pairs(device_images):
    b = sample(EpisodeSampler(5, 3, 4, shuffle=True, **RAW), device_images, jax.random.key(3), 8)
    sy = np.asarray(b.support_y)
    assert not all(np.all(np.diff(row) >= 0) for row in sy)  # not grouped any more
    sc, _ = _decode(b.support_x)
    qc, _ = _decode(b.query_x)
    for t in range(8):  # each label still maps to one class across support and query
        pairs = set(zip(sy[t].tolist(), sc[t].tolist())) | set(zip(np.asarray(b.query_y)[t].tolist(),
                                                                      qc[t].tolist()))
        assert len(pairs) == 5


def test_rotation_rotates_whole_classes(provenance_store):
    # Marker-only images: the marker position tells the rotation; class id lives in the value.
    images = np.zeros((C, M, H, H, 1), np.uint8)
    images[:, :, 1, 2, 0] = (np.arange(C) + 1)[:, None]
    dev = put_on_device(images)
    sampler = EpisodeSampler(5, 2, 2, rotate=True, **RAW)
    b = sample(sampler, dev, jax.random.key(0), 32)
    marker = np.zeros((H, H), np.int32)
    marker[1, 2] = 1
    rots = [np.rot90(marker, r) for r in range(4)]
    seen = set()
    for x, y in ((b.support_x, b.support_y), (b.query_x, b.query_y)):
        x, y = np.asarray(x)[..., 0], np.asarray(y)
        for t in range(32):
            for i in range(x.shape[1]):
                mask = (x[t, i] > 0).astype(np.int32)
                r = next(r for r in range(4) if np.array_equal(mask, rots[r]))
                seen.add(r)
    assert seen == {0, 1, 2, 3}
    # one rotation per class within an episode: support and query agree
    for t in range(32):
        sx, qx = np.asarray(b.support_x)[t, ..., 0], np.asarray(b.query_x)[t, ..., 0]
        for lab in range(5):
            ms = {tuple(np.argwhere(im > 0)[0]) for im in sx[np.asarray(b.support_y)[t] == lab]}
            mq = {tuple(np.argwhere(im > 0)[0]) for im in qx[np.asarray(b.query_y)[t] == lab]}
            assert len(ms | mq) == 1


def test_bind_is_a_pytree_task_family(device_images):
    tasks = EpisodeSampler(5, 1, 2).bind(device_images)
    assert isinstance(tasks, EpisodeTasks)
    assert jax.tree.leaves(tasks)[0] is device_images
    b = jax.jit(lambda t, k: t.sample(k, 3))(tasks, jax.random.key(0))
    assert b.support_x.shape == (3, 5, H, H, 2)


def test_typed_and_legacy_keys(device_images):
    s = EpisodeSampler(2, 1, 1)
    assert sample(s, device_images, jax.random.PRNGKey(0), 1).support_x.shape[0] == 1
    one = jax.jit(s.sample_one)(jax.random.key(0), device_images)
    assert one.support_x.shape == (2, H, H, 2) and one.query_y.shape == (2,)


def test_sample_indices_match_sample(device_images):
    sampler = EpisodeSampler(4, 2, 3, **RAW)
    key = jax.random.key(11)
    classes, examples = jax.jit(sampler.sample_indices, static_argnums=(1, 2, 3))(key, 5, C, M)
    b = sample(sampler, device_images, key, 5)
    sc, se = _decode(b.support_x)
    qc, qe = _decode(b.query_x)
    np.testing.assert_array_equal(sc, np.repeat(np.asarray(classes), 2, axis=1))
    np.testing.assert_array_equal(se, np.asarray(examples)[:, :, :2].reshape(5, 8))
    np.testing.assert_array_equal(qe, np.asarray(examples)[:, :, 2:].reshape(5, 12))


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_way=0, k_shot=1, q_query=1), "n_way"), (dict(n_way=2, k_shot=True, q_query=1), "k_shot"),
    (dict(n_way=2, k_shot=1, q_query=0), "q_query"), (dict(n_way=2, k_shot=1, q_query=1, std=0.0), "std"),
    (dict(n_way=2, k_shot=1, q_query=1, dtype="notadtype"), "dtype"),
    (dict(n_way=2, k_shot=1, q_query=1, std=float("nan")), "std must be a finite"),
    (dict(n_way=2, k_shot=1, q_query=1, mean="grey"), "mean must be a number"),
    (dict(n_way=2, k_shot=1, q_query=1, mean=[[0.5]]), "mean must be a finite number"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EpisodeSampler(**kwargs)


@pytest.mark.parametrize("sampler, match", [
    (EpisodeSampler(31, 1, 1), "n_way=31 exceeds the 30 classes"),
    (EpisodeSampler(5, 6, 7), "k_shot \\+ q_query = 13 exceeds the 12"),
    (EpisodeSampler(5, 1, 1, mean=(0.1, 0.2, 0.3)), "3 values but images have 2 channels"),
])
def test_bad_images(device_images, sampler, match):
    with pytest.raises(ValueError, match=match):
        sampler.sample(jax.random.key(0), 2, device_images)


@pytest.mark.parametrize("sampler, args, match", [
    (EpisodeSampler(5, 1, 1), (2, 3, 20), "n_way=5 exceeds the 3 classes"),
    (EpisodeSampler(5, 6, 10), (2, 30, 10), "k_shot \\+ q_query = 16 exceeds the 10"),
    (EpisodeSampler(5, 1, 1), (0, 30, 10), "num_tasks"),
])
def test_sample_indices_refuses_impossible_episodes(sampler, args, match):
    with pytest.raises(ValueError, match=match):
        sampler.sample_indices(jax.random.key(0), *args)


def test_bad_images_shape_and_dtype():
    with pytest.raises(ValueError, match=r"\[C, M, H, W, ch\]"):
        sample(EpisodeSampler(2, 1, 1), jnp.zeros((4, 4, 8, 8), jnp.uint8), jax.random.key(0), 1)
    with pytest.raises(ValueError, match="scale=False"):
        sample(EpisodeSampler(2, 1, 1), jnp.zeros((4, 4, 8, 8, 1)), jax.random.key(0), 1)
    with pytest.raises(ValueError, match="square"):
        sample(EpisodeSampler(2, 1, 1, rotate=True), jnp.zeros((4, 4, 8, 6, 1), jnp.uint8),
                                                    jax.random.key(0), 1)
    with pytest.raises(ValueError, match="num_tasks"):
        sample(EpisodeSampler(2, 1, 1), jnp.zeros((4, 4, 8, 8, 1), jnp.uint8), jax.random.key(0), 0)


def test_real_omniglot_episode(omniglot_all):
    store = omniglot_all.select(range(100)).with_rotations()
    b = sample(EpisodeSampler(20, 1, 5, rotate=False), put_on_device(store), jax.random.key(0), 2)
    assert b.support_x.shape == (2, 20, 28, 28, 1)
    assert 0.0 <= float(b.support_x.min()) and float(b.support_x.max()) <= 1.0


def test_subsets_and_orders_are_uniform():
    """All N-subsets of the classes are equally likely, and so are the label orders."""
    from collections import Counter
    sampler = EpisodeSampler(3, 1, 2)
    classes, examples = jax.jit(sampler.sample_indices, static_argnums=(1, 2, 3))(
        jax.random.key(0), 6000, 6, 5)
    classes, examples = np.asarray(classes), np.asarray(examples)
    subsets = Counter(tuple(sorted(r)) for r in classes.tolist())
    assert len(subsets) == 20 and min(subsets.values()) > 0.75 * 300 and max(subsets.values()) < 1.25 * 300
    first = np.bincount(classes[:, 0], minlength=6)  # the class that gets label 0
    assert first.min() > 0.8 * 1000 and first.max() < 1.2 * 1000
    support = np.bincount(examples[:, :, 0].reshape(-1), minlength=5)  # the support example
    assert support.min() > 0.85 * 3600 and support.max() < 1.15 * 3600


def test_mean_and_std_computed_from_data_are_accepted():
    """numpy scalars and 0-d jax arrays (what x.mean() gives) are scalars, not sequences."""
    import jax.numpy as jnp

    for mean, std in ((np.float32(0.5), np.float64(0.25)), (jnp.float32(0.5), jnp.asarray(0.25)),
                      (np.asarray([0.5]), [0.25])):
        s = EpisodeSampler(2, 1, 1, mean=mean, std=std)
        assert s.mean == (0.5,) and s.std == (0.25,)
        hash(s)  # still a static argument of jit
