"""TensorFlow Datasets backend: any TFDS image-classification dataset as a :class:`ClassStore`.

``tensorflow_datasets`` is imported inside :func:`from_tfds` only, so
``import jmeta.data`` never imports TensorFlow or TFDS.

Two read paths, chosen by ``reader``:

* ``"data_source"``: ``tfds.data_source`` (random access to ``array_record``
  files; needs ``tensorflow-datasets`` and ``array-record`` but **not**
  TensorFlow). Images are decoded by Pillow.
* ``"load"``: ``tfds.load`` + ``tfds.as_numpy`` (``tfrecord`` files; needs
  TensorFlow).
* ``"auto"``: ``"data_source"`` if the prepared dataset is in
  ``array_record`` format, else ``"load"``.

Caveat: TFDS decodes 1-bit PNGs (e.g. ``omniglot``) to ``{0, 255}`` with
TensorFlow but to ``{0, 1}`` with Pillow; pass ``binary_to_255=True`` to
rescale images whose maximum is 1. TFDS's ``omniglot`` also has the source's
white background and three channels, unlike :func:`jmeta.data.load_omniglot`
(ink = 255 on 0, one channel): invert and take one channel before mixing the
two backends.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from jmeta.data.paths import PathLike
from jmeta.data.store import ClassStore

__all__ = ["from_tfds"]

_READERS = ("auto", "data_source", "load")


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            "from_tfds needs tensorflow-datasets: `pip install tensorflow-datasets array-record` "
            "(array_record datasets, no TensorFlow needed) or add `tensorflow-cpu` for tfrecord "
            "datasets") from e
    return tfds


def from_tfds(name: str, split: str, *, data_dir: PathLike | None = None,
              image_key: str = "image", label_key: str = "label",
              max_per_class: int | None = None, reader: str = "auto",
              download: bool = False, binary_to_255: bool = False) -> ClassStore:
    """Reads a TFDS image-classification split and groups its images by label.

    Args:
      name: TFDS dataset name, e.g. ``"omniglot"`` or ``"cifar100"``
        (``"name:version"`` works too).
      split: TFDS split, e.g. ``"train"`` or ``"test"`` (slicing such as
        ``"train[:10%]"`` works).
      data_dir: TFDS data folder (default: TFDS's own, ``~/tensorflow_datasets``).
      image_key: feature holding the image (``[H, W]`` or ``[H, W, C]`` uint8).
      label_key: feature holding the integer class label.
      max_per_class: keep at most this many examples per class (first in
        dataset order). Classes with unequal counts are cut to the smallest
        count (with a warning), since a store is rectangular.
      reader: ``"auto"``, ``"data_source"`` or ``"load"`` (see module doc).
      download: let TFDS download and prepare the dataset if missing.
      binary_to_255: multiply by 255 when the largest pixel value is 1.

    Returns:
      A :class:`ClassStore`; classes are the labels present, in increasing
      label order, named by the ``ClassLabel`` names when available.

    Raises:
      ImportError: tensorflow-datasets is not installed.
      ValueError: bad ``reader``/``max_per_class``, a missing feature key, or
        images of differing shapes.
    """
    if reader not in _READERS:
        raise ValueError(f"from_tfds: unknown reader {reader!r}; valid: {list(_READERS)}")
    if max_per_class is not None and (not isinstance(max_per_class, int) or max_per_class < 1):
        raise ValueError(f"from_tfds: max_per_class must be None or an int >= 1, got {max_per_class!r}")
    tfds = _import_tfds()
    data_dir = None if data_dir is None else str(data_dir)
    builder = tfds.builder(name, data_dir=data_dir)
    if download:
        builder.download_and_prepare()
    features = builder.info.features
    for key in (image_key, label_key):
        if key not in features:
            raise ValueError(f"from_tfds: {name!r} has no feature {key!r}; features: {list(features)}")
    if reader == "auto":
        fmt = getattr(builder.info, "file_format", None)
        reader = "data_source" if "array_record" in str(fmt).lower() else "load"

    groups: dict[int, list[np.ndarray]] = {}

    def add(example: dict[str, Any]) -> None:
        label = int(example[label_key])
        bucket = groups.setdefault(label, [])
        if max_per_class is None or len(bucket) < max_per_class:
            bucket.append(np.asarray(example[image_key]))

    if reader == "data_source":
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        n = len(source)
        step = 1024
        for lo in range(0, n, step):
            batch = source.__getitems__(list(range(lo, min(n, lo + step))))
            for ex in batch:
                add(ex)
    else:
        ds = tfds.load(name, split=split, data_dir=data_dir, download=False)
        for ex in tfds.as_numpy(ds):
            add(ex)

    if not groups:
        raise ValueError(f"from_tfds: {name!r} split {split!r} holds no examples")
    labels = sorted(groups)
    counts = [len(groups[l]) for l in labels]
    m = min(counts)
    if max(counts) != m:
        warnings.warn(f"from_tfds: {name}/{split} classes hold {m}..{max(counts)} examples; keeping "
                      f"the first {m} of each", stacklevel=2)
    shapes = {im.shape for l in labels for im in groups[l][:m]}
    if len(shapes) != 1:
        raise ValueError(f"from_tfds: {name}/{split} images differ in shape {sorted(shapes)[:4]}; "
                         f"resize them first (a ClassStore is rectangular)")
    images = np.stack([np.stack(groups[l][:m]) for l in labels])
    if images.ndim == 4:
        images = images[..., None]
    if images.dtype != np.uint8:
        raise ValueError(f"from_tfds: {image_key!r} must be uint8 images, got {images.dtype}")
    if binary_to_255 and images.max() == 1:
        images = images * np.uint8(255)
    label_feature = features[label_key]
    names_list = getattr(label_feature, "names", None)
    class_names = [names_list[l] if names_list else str(l) for l in labels]
    info = {"source": "tfds", "reader": reader, "tfds_name": name, "split": split,
            "labels": labels, "data_dir": data_dir}
    return ClassStore(np.ascontiguousarray(images), class_names, f"tfds/{name}/{split}", info)
