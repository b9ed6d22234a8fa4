r"""N-way K-shot episodes sampled on the device from a class-indexed image array.

The dataset lives on the accelerator as one ``uint8`` array
``images[C, M, H, W, ch]`` (``C`` classes, ``M`` examples each; see
:class:`jmeta.data.ClassStore` and :func:`put_on_device`). An
:class:`EpisodeSampler` turns ``(images, key)`` into a :class:`TaskBatch` with
one gather, inside the jitted meta-step: no host work, no data loader.

Per task:

1. ``N`` distinct classes, a uniformly random subset (Floyd's algorithm,
   ``O(N^2)`` work per task whatever the number of classes ``C``), put in
   uniformly random order: label ``i`` goes to the ``i``-th class, so labels
   are a random permutation;
2. ``K + Q`` distinct examples of each chosen class, likewise (a uniform
   random subset of the ``M`` examples, in random order); the first ``K`` go to
   the support set, the other ``Q`` to the query set, so support and query
   never share an image;
3. optionally a random rotation by a multiple of 90 degrees per class (the
   same for all images of that class in the episode), a common Omniglot
   augmentation and an *alternative* to :meth:`ClassStore.with_rotations`:
   on a store that already holds the rotations as classes, class ``c + n``
   turned a further 270 degrees is class ``c``, so an episode could hold one
   character under two labels (3% of 20-way Omniglot episodes);
4. normalisation on the device: ``x / 255`` (``scale``), then
   ``(x - mean) / std`` if given, cast to ``dtype``.

Layout: ``support_x [B, N*K, H, W, ch]``, ``support_y [B, N*K]`` int32 and
``query_x [B, N*Q, H, W, ch]``, ``query_y [B, N*Q]``. Examples are grouped by
label (label-major: ``y = [0]*K + [1]*K + ...``) unless ``shuffle=True``,
which permutes the support and the query set independently. Grouped order is
harmless for the permutation-invariant losses used in meta-learning, but
matters for models with order-dependent layers (e.g. BatchNorm is fine,
sequence models are not).

Example:
  >>> store = jmeta.data.load_omniglot("train", rotations=True)
  >>> images = put_on_device(store)                      # uint8 on device
  >>> sampler = EpisodeSampler(n_way=5, k_shot=1, q_query=15)
  >>> sample = jax.jit(sampler.sample, static_argnums=1)
  >>> batch = sample(jax.random.key(0), 32, images)      # x: [32, 5, 28, 28, 1]
  >>> step = jmeta.make_meta_step(maml, sampler.sample, opt, meta_batch_size=32)
  >>> state, metrics = step(state, key, images)          # images: an argument of the compiled step

Like every task family, :meth:`EpisodeSampler.sample` takes ``(key, num_tasks, data)``; its data are the
images.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jmeta import validate
from jmeta._struct import hparam, static_dataclass
from jmeta.tasks.base import TaskBatch, check_no_data

__all__ = ["EpisodeSampler", "EpisodeTasks", "put_on_device"]

Array = Any


def put_on_device(store_or_images: Any, device: Any = None) -> jax.Array:
    """Copies a store's ``uint8`` images to the device (or a sharding).

    Args:
      store_or_images: a :class:`jmeta.data.ClassStore` or an array
        ``[C, M, H, W, ch]``.
      device: a ``jax.Device`` or ``jax.sharding.Sharding``; default device if
        ``None``. Replicate over a mesh with ``NamedSharding(mesh, P())``.

    Returns:
      The images as a ``jax.Array`` of the same dtype (uint8 stays uint8:
      normalise on the device, inside the step).
    """
    images = getattr(store_or_images, "images", store_or_images)
    if getattr(images, "ndim", None) != 5:
        raise ValueError(f"put_on_device expects images [C, M, H, W, ch], got shape "
                         f"{getattr(images, 'shape', None)}")
    return jax.device_put(images, device)


def _as_tuple(name: str, v: Any) -> tuple[float, ...] | None:
    """A scalar or per-channel sequence (Python, numpy or a jax array, e.g. computed from data) as floats."""
    if v is None:
        return None
    try:
        arr = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"EpisodeSampler.{name} must be a number or a sequence of per-channel numbers, "
                         f"got {v!r}") from e
    if arr.ndim > 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"EpisodeSampler.{name} must be a finite number or a non-empty sequence of finite "
                         f"per-channel numbers, got {v!r}")
    return tuple(float(x) for x in arr.reshape(-1))


def _count(name: str, value: Any) -> int:
    return validate.integer(f"EpisodeSampler.{name}", value, min=1)


def _old_order(what: str, new: str) -> None:
    warnings.warn(f"EpisodeSampler.{what} with the images first is deprecated: call {new} (the signature "
                  "every task family shares; this order goes in the next release)", DeprecationWarning, stacklevel=3)


@static_dataclass(eq=True)
class EpisodeSampler:
    """Samples batches of N-way K-shot classification episodes on the device.

    Attributes:
      n_way: classes per episode ``N`` (``>= 1``).
      k_shot: support examples per class ``K`` (``>= 1``).
      q_query: query examples per class ``Q`` (``>= 1``).
      rotate: rotate every class of an episode by a random multiple of 90
        degrees (needs square images); not on a store built with
        ``rotations=True`` / ``with_rotations`` (see the module docstring).
      shuffle: shuffle the order of examples within the support set and within
        the query set (default: grouped by label).
      dtype: dtype of the inputs, e.g. ``"float32"`` or ``"bfloat16"``.
      scale: divide by 255 (uint8 -> [0, 1]).
      mean: optional per-channel (or scalar) mean subtracted after scaling.
      std: optional per-channel (or scalar) std divided by after centring.

    The sampler is hashable and a pytree without leaves, so it can be a static argument of ``jit`` or an
    ordinary one.
    """

    n_way: int = hparam(check=_count)
    k_shot: int = hparam(check=_count)
    q_query: int = hparam(check=_count)
    rotate: bool = False
    shuffle: bool = False
    dtype: Any = "float32"
    scale: bool = True
    mean: float | Sequence[float] | None = hparam(None, _as_tuple)
    std: float | Sequence[float] | None = hparam(None, _as_tuple)

    def __post_init__(self):
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(f"EpisodeSampler.std must be positive, got {self.std}")
        try:
            jnp.dtype(self.dtype)
        except TypeError as e:
            raise ValueError(f"EpisodeSampler.dtype {self.dtype!r} is not a dtype") from e

    # -- shapes --------------------------------------------------------------
    @property
    def support_size(self) -> int:
        """``N * K``."""
        return self.n_way * self.k_shot

    @property
    def query_size(self) -> int:
        """``N * Q``."""
        return self.n_way * self.q_query

    def _check_counts(self, c: int, m: int, what: str) -> None:
        if self.n_way > c:
            raise ValueError(f"EpisodeSampler: n_way={self.n_way} exceeds the {c} classes of {what}")
        if self.k_shot + self.q_query > m:
            raise ValueError(f"EpisodeSampler: k_shot + q_query = {self.k_shot + self.q_query} exceeds "
                             f"the {m} examples per class of {what}")

    def _check_images(self, images: Array) -> None:
        shape = getattr(images, "shape", None)
        if shape is None or len(shape) != 5:
            raise ValueError(f"EpisodeSampler: images must be an array [C, M, H, W, ch], got shape {shape}")
        c, m, h, w, ch = shape
        self._check_counts(c, m, "images")
        if self.rotate and h != w:
            raise ValueError(f"EpisodeSampler: rotate=True needs square images, got H={h}, W={w}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and len(v) not in (1, ch):
                raise ValueError(f"EpisodeSampler.{name} has {len(v)} values but images have {ch} channels")
        if self.scale and jnp.dtype(images.dtype) != jnp.uint8:
            raise ValueError(f"EpisodeSampler: scale=True expects uint8 images, got {images.dtype}; "
                             f"pass scale=False for images that are already scaled")

    # -- sampling ------------------------------------------------------------
    def normalize(self, x: Array) -> Array:
        """Maps raw images to model inputs (scale, mean/std, dtype), on the device."""
        x = x.astype(jnp.float32)
        if self.scale:
            x = x * (1.0 / 255.0)
        if self.mean is not None:
            x = x - jnp.asarray(self.mean, jnp.float32)
        if self.std is not None:
            x = x / jnp.asarray(self.std, jnp.float32)
        return x.astype(self.dtype)

    def _draw(self, key: Array, b: int) -> dict[str, Array]:
        """All random bits of a batch from a single ``jax.random.bits`` call.

        One threefry instance instead of one per use keeps the compile time
        of the sampler low (each instance costs about a second to compile on
        XLA:CPU).
        """
        n, k, q = self.n_way, self.k_shot, self.q_query
        shapes = {"classes": (b, n), "class_order": (b, n),
                  "examples": (b, n, k + q), "example_order": (b, n, k + q)}
        if self.rotate:
            shapes["rotation"] = (b, n)
        if self.shuffle:
            shapes["support_order"] = (b, n * k)
            shapes["query_order"] = (b, n * q)
        sizes = [int(np.prod(v)) for v in shapes.values()]
        flat = jax.random.bits(key, (sum(sizes),), jnp.uint32)
        out, start = {}, 0
        for (name, shape), size in zip(shapes.items(), sizes):
            out[name] = flat[start:start + size].reshape(shape)
            start += size
        return out

    @staticmethod
    def _random_subset(bits: Array, order_bits: Array, population: int) -> Array:
        """Distinct ints in ``[0, population)`` in random order, ``[..., n]`` (Floyd's algorithm)."""
        n = bits.shape[-1]

        def body(i, chosen):
            j = jnp.uint32(population - n) + i.astype(jnp.uint32)  # j = m - n + i
            t = (jax.lax.dynamic_index_in_dim(bits, i, axis=-1, keepdims=False) % (j + 1))
            t = t.astype(jnp.int32)
            taken = jnp.any(chosen == t[..., None], axis=-1)
            new = jnp.where(taken, j.astype(jnp.int32), t)
            return jax.lax.dynamic_update_index_in_dim(chosen, new, i, axis=-1)

        subset = jax.lax.fori_loop(0, n, body, jnp.full(bits.shape, -1, jnp.int32))
        # Floyd's output order is not uniform: shuffle it (argsort of random bits).
        return jnp.take_along_axis(subset, jnp.argsort(order_bits, axis=-1), axis=-1)

    def _indices(self, draws: dict[str, Array], c: int, m: int) -> tuple[Array, Array]:
        classes = self._random_subset(draws["classes"], draws["class_order"], c)
        examples = self._random_subset(draws["examples"], draws["example_order"], m)
        return classes, examples

    def sample_indices(self, key: Array, num_tasks: int, num_classes: int,
                       num_per_class: int) -> tuple[Array, Array]:
        """Class and example indices of ``num_tasks`` episodes (as :meth:`sample` draws them).

        Classes are a uniformly random ``N``-subset of ``range(C)`` (Floyd's
        algorithm, so the cost does not grow with ``C``) in uniformly random
        order; label ``i`` is class ``classes[:, i]``. Examples are a uniformly
        random ``(K+Q)``-subset of ``range(M)`` per class, in random order.

        Returns:
          ``classes [B, N]`` int32 and ``examples [B, N, K+Q]`` int32 (the
          first ``K`` columns are the support set); for the same key they are
          the indices that :meth:`sample` gathers.
        """
        num_tasks = validate.integer("num_tasks", num_tasks, min=1)
        self._check_counts(int(num_classes), int(num_per_class), "the dataset (num_classes, num_per_class)")
        return self._indices(self._draw(key, num_tasks), int(num_classes), int(num_per_class))

    def sample(self, key: Array, num_tasks: int, images: Array) -> TaskBatch:
        """A batch of ``num_tasks`` episodes; pure and jit-able.

        All random draws of the batch come from one ``jax.random.bits`` call,
        which keeps the compiled program small and quick to compile.

        Args:
          key: a ``jax.random.key``.
          num_tasks: batch size ``B`` (static under ``jit``).
          images: device array ``[C, M, H, W, ch]``, the family's ``data`` (pass
            it as an argument of the jitted function, not as a closure constant,
            so that large datasets are not embedded in the compiled program).

        Returns:
          A :class:`TaskBatch` with ``support_x [B, N*K, H, W, ch]``,
          ``support_y [B, N*K]`` int32, ``query_x [B, N*Q, H, W, ch]``,
          ``query_y [B, N*Q]`` int32.
        """
        if getattr(key, "ndim", None) == 5:  # sample(images, key, num_tasks): the order before this release
            _old_order("sample(images, key, num_tasks)", "sample(key, num_tasks, images)")
            key, num_tasks, images = num_tasks, images, key
        b = validate.integer("num_tasks", num_tasks, min=1)
        self._check_images(images)
        c, m, h, w, ch = images.shape
        n, k, q = self.n_way, self.k_shot, self.q_query
        draws = self._draw(key, b)
        classes, examples = self._indices(draws, c, m)
        # One gather on the device: flat index class * M + example into [C*M, H, W, ch].
        flat_idx = (classes[:, :, None] * m + examples).reshape(-1)
        x = jnp.take(images.reshape(c * m, h, w, ch), flat_idx, axis=0, mode="clip")
        x = x.reshape(b, n, k + q, h, w, ch)
        if self.rotate:
            # A rotation is a fixed permutation of the H*W pixels: gather with it, per class.
            base = np.arange(h * w).reshape(h, w)
            table = jnp.asarray(np.stack([np.rot90(base, r).reshape(-1) for r in range(4)]), jnp.int32)
            r = draws["rotation"] % 4
            x = x.reshape(b, n, k + q, h * w, ch)
            x = jnp.take_along_axis(x, table[r][:, :, None, :, None], axis=3)
            x = x.reshape(b, n, k + q, h, w, ch)
        x = self.normalize(x)
        labels = jnp.arange(n, dtype=jnp.int32)
        sx = x[:, :, :k].reshape(b, n * k, h, w, ch)
        qx = x[:, :, k:].reshape(b, n * q, h, w, ch)
        sy = jnp.broadcast_to(jnp.repeat(labels, k), (b, n * k))
        qy = jnp.broadcast_to(jnp.repeat(labels, q), (b, n * q))
        if self.shuffle:
            ps = jnp.argsort(draws["support_order"], axis=1)
            pq = jnp.argsort(draws["query_order"], axis=1)
            sy, qy = jnp.take_along_axis(sy, ps, 1), jnp.take_along_axis(qy, pq, 1)
            sx = jnp.take_along_axis(sx, ps[:, :, None, None, None], 1)
            qx = jnp.take_along_axis(qx, pq[:, :, None, None, None], 1)
        return TaskBatch(sx, sy, qx, qy)

    def sample_one(self, key: Array, images: Array) -> TaskBatch:
        """One episode without a task axis (``support_x [N*K, H, W, ch]`` etc.)."""
        if getattr(key, "ndim", None) == 5:  # sample_one(images, key): the order before this release
            _old_order("sample_one(images, key)", "sample_one(key, images)")
            key, images = images, key
        return jax.tree.map(lambda a: a[0], self.sample(key, 1, images))

    def bind(self, images: Array) -> "EpisodeTasks":
        """Pairs the sampler with device images: a task family whose ``sample(key, num_tasks)`` needs no data."""
        self._check_images(images)
        return EpisodeTasks(self, images)


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class EpisodeTasks:
    """An :class:`EpisodeSampler` bound to its images: a task family.

    A pytree whose only leaf is ``images`` (the sampler is static), so it can
    be passed into ``jit`` as an argument and the images stay an argument.

    Attributes:
      sampler: the episode sampler.
      images: device array ``[C, M, H, W, ch]``.
    """

    sampler: EpisodeSampler
    images: Array

    def sample(self, key: Array, num_tasks: int, data: Any = None) -> TaskBatch:
        """``sampler.sample(key, num_tasks, images)``; ``data`` must be ``None`` (the images are bound)."""
        check_no_data("EpisodeTasks.sample (its images are bound)", data)
        return self.sampler.sample(key, num_tasks, self.images)

    def tree_flatten(self):
        return (self.images,), self.sampler

    @classmethod
    def tree_unflatten(cls, sampler, children):
        return cls(sampler, *children)
