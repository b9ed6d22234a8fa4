"""Class-indexed image store: the host-side form of a few-shot dataset.

A :class:`ClassStore` holds every image of a dataset as one ``uint8`` array
``[n_classes, n_per_class, H, W, C]`` (channel last), so that an episode
sampler on the device can gather ``N`` classes and ``K + Q`` examples with a
single indexing operation (see :class:`jmeta.tasks.episodes.EpisodeSampler`).

Example:
  >>> store = load_omniglot("train", rotations=True)   # 4800 classes
  >>> store.images.shape
  (4800, 20, 28, 28, 1)
  >>> train, val = load_omniglot("train").split([1100, 100])
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import numpy as np

from jmeta._struct import frozen_dataclass, hparam
from jmeta.data.errors import CorruptDataError

__all__ = ["ClassStore", "save_store", "load_store"]


def _names(name: str, value) -> tuple[str, ...]:
    return tuple(str(n) for n in value)


def _info(name: str, value) -> dict:
    return dict(value)


@frozen_dataclass(eq=False)
class ClassStore:
    """Images of a classification dataset grouped by class.

    Attributes:
      images: ``uint8`` array ``[n_classes, n_per_class, H, W, C]``.
      class_names: one name per class (a tuple; a list is converted).
      name: the dataset and split, e.g. ``"omniglot/train"``.
      info: free-form facts about where the data came from (source file,
        cache path, ``"cache_hit"``, ``"subset"``, ...). Not used by any
        computation.

    Two stores are equal only if they are the same object (``eq=False``):
    comparing image arrays element-wise would be costly and ambiguous.
    """

    images: np.ndarray
    class_names: tuple[str, ...] = hparam(check=_names)
    name: str = ""
    info: Mapping[str, Any] = hparam(check=_info, default_factory=dict)

    def __post_init__(self):
        images = self.images
        if not isinstance(images, np.ndarray):
            raise TypeError(f"ClassStore.images must be a numpy array, got {type(images).__name__} "
                            f"(use np.asarray first)")
        if images.ndim != 5:
            raise ValueError(f"ClassStore.images must have 5 axes [n_classes, n_per_class, H, W, C], "
                             f"got shape {images.shape}")
        if images.dtype != np.uint8:
            raise ValueError(f"ClassStore.images must be uint8, got {images.dtype}")
        if len(self.class_names) != images.shape[0]:
            raise ValueError(f"ClassStore.class_names has {len(self.class_names)} names but images has "
                             f"{images.shape[0]} classes")

    # -- shape -------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of classes (first axis)."""
        return int(self.images.shape[0])

    @property
    def num_per_class(self) -> int:
        """Examples per class (second axis)."""
        return int(self.images.shape[1])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image."""
        return tuple(int(d) for d in self.images.shape[2:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.num_classes

    def __repr__(self) -> str:
        return (f"ClassStore(name={self.name!r}, num_classes={self.num_classes}, "
                f"num_per_class={self.num_per_class}, image_shape={self.image_shape})")

    # -- derived stores ------------------------------------------------------
    def replace(self, **changes) -> "ClassStore":
        """A copy with some fields replaced (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def select(self, classes: Sequence[int] | np.ndarray, *, name: str | None = None) -> "ClassStore":
        """The store restricted to the classes ``classes`` (in that order).

        Args:
          classes: class indices into this store.
          name: name of the result (default: this store's name).
        """
        arr = np.asarray(classes)
        if arr.dtype == bool:
            raise TypeError(f"ClassStore.select takes class indices, got a boolean mask of {arr.size} values; "
                            "pass np.flatnonzero(mask)")
        idx = arr.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_classes):
            raise IndexError(f"ClassStore.select: class indices must lie in [0, {self.num_classes}), "
                             f"got range [{idx.min()}, {idx.max()}]")
        return ClassStore(self.images[idx], tuple(self.class_names[i] for i in idx),
                          self.name if name is None else name, self.info)

    def split(self, sizes: Sequence[int], *, seed: int | None = None,
              names: Sequence[str] | None = None) -> tuple["ClassStore", ...]:
        """Splits the classes into disjoint consecutive parts.

        Args:
          sizes: number of classes in each part; their sum must equal
            :attr:`num_classes`, except that one entry may be ``-1`` meaning
            "all remaining classes".
          seed: if given, the classes are shuffled with
            ``np.random.default_rng(seed)`` before splitting; otherwise the
            stored class order is kept (part 0 = the first classes).
          names: names of the parts (default ``"<name>/part<i>"``).

        Returns:
          One :class:`ClassStore` per entry of ``sizes``.

        Raises:
          ValueError: bad ``sizes``/``names``, or a store that holds rotations
            as classes (:meth:`with_rotations`): a split would put rotations
            of one character on both sides. Split the unrotated store and
            rotate each part (``load_omniglot(split, rotations=True)`` does).

        Example:
          >>> train, val = store.split([-1, 100])   # last 100 classes -> val
        """
        if self.info.get("rotations"):
            raise ValueError(f"ClassStore.split: {self.name!r} holds rotations as classes (with_rotations), so a "
                             "split would put rotations of one character on both sides (test characters leaking "
                             "into training); split the unrotated store and call with_rotations() on each part "
                             "(load_omniglot(split, rotations=True) does this)")
        sizes = [int(s) for s in sizes]
        if not sizes:
            raise ValueError("ClassStore.split: sizes must hold at least one entry")
        if sizes.count(-1) > 1 or any(s < -1 for s in sizes):
            raise ValueError(f"ClassStore.split: sizes must be non-negative, with at most one -1 "
                             f"(the rest), got {sizes}")
        if -1 in sizes:
            rest = self.num_classes - sum(s for s in sizes if s >= 0)
            if rest < 0:
                raise ValueError(f"ClassStore.split: sizes {sizes} exceed the {self.num_classes} classes")
            sizes[sizes.index(-1)] = rest
        if sum(sizes) != self.num_classes:
            raise ValueError(f"ClassStore.split: sizes {sizes} sum to {sum(sizes)}, but the store has "
                             f"{self.num_classes} classes (use -1 for 'the rest')")
        if names is not None and len(names) != len(sizes):
            raise ValueError(f"ClassStore.split: {len(names)} names for {len(sizes)} parts")
        order = np.arange(self.num_classes)
        if seed is not None:
            order = np.random.default_rng(seed).permutation(self.num_classes)
        bounds = np.cumsum([0] + sizes)
        return tuple(
            self.select(order[bounds[i]:bounds[i + 1]],
                        name=names[i] if names is not None else f"{self.name}/part{i}")
            for i in range(len(sizes)))

    def with_rotations(self) -> "ClassStore":
        """Adds rotations by 90, 180 and 270 degrees as new classes (4x classes).

        The Omniglot augmentation of Vinyals et al. (2016) and Finn et al.
        (2017). Class ``c + r * n`` (``n`` = :attr:`num_classes`,
        ``r`` in 0..3) is class ``c`` rotated counter-clockwise by ``90 * r``
        degrees (``np.rot90``); its name is ``"<name>/rot<90 r>"``.
        Images must be square.
        """
        h, w, _ = self.image_shape
        if h != w:
            raise ValueError(f"ClassStore.with_rotations needs square images, got H={h}, W={w}")
        rotated = [np.rot90(self.images, r, axes=(2, 3)) for r in range(4)]
        names = tuple(f"{n}/rot{90 * r}" if r else n for r in range(4) for n in self.class_names)
        return ClassStore(np.ascontiguousarray(np.concatenate(rotated, axis=0)), names,
                          self.name + "+rot", {**self.info, "rotations": True})

    def take_per_class(self, n: int) -> "ClassStore":
        """The first ``n`` examples of every class."""
        if not 1 <= n <= self.num_per_class:
            raise ValueError(f"ClassStore.take_per_class: n must lie in [1, {self.num_per_class}], got {n}")
        return self.replace(images=np.ascontiguousarray(self.images[:, :n]))


def save_store(store: ClassStore, path: str | os.PathLike) -> None:
    """Writes a store to an ``.npz`` (``images``, ``class_names``, ``name``), atomically."""
    from jmeta.data._cache import save_npz_atomic
    save_npz_atomic(path, {"images": store.images,
                           "class_names": np.asarray(store.class_names, dtype=str),
                           "name": np.asarray(store.name)})


def load_store(path: str | os.PathLike) -> ClassStore:
    """Reads a store written by :func:`save_store` (no pickle involved)."""
    from jmeta.data._cache import load_npz
    arrays = load_npz(path, ("images", "class_names", "name"))
    try:
        return ClassStore(arrays["images"], tuple(arrays["class_names"].tolist()),
                          name=str(arrays["name"]), info={"source": os.fspath(path)})
    except (TypeError, ValueError) as e:
        raise CorruptDataError(f"{path}: not a ClassStore file: {e}") from e
