"""mini-ImageNet (Vinyals et al., 2016; Ravi & Larochelle, 2017 split) as a :class:`ClassStore`.

100 ImageNet classes, 600 RGB images each at 84x84, split by class into
64 meta-train, 16 meta-val and 20 meta-test classes (:data:`MINIIMAGENET_CLASSES`,
the Ravi & Larochelle split). Stores are ``uint8 [n_classes, n_per_class, S, S, 3]``,
classes in sorted WordNet-id order (the order of the usual
``mini-imagenet-cache-*.pkl`` files), images of a class in file-name order.

**Sources** (``source`` argument), under ``<data root>/miniimagenet/``:

* ``"zip"``: ``{split}.zip`` with members ``<split>/<wnid>/<wnid><8 digits>.jpg``;
  JPEGs are decoded with Pillow once and cached as ``.npz``.
* ``"npz"``: ``mini-imagenet-cache-{split}.npz`` holding either ``image_data``
  ``[N, 84, 84, 3]`` uint8 with ``labels`` ``[N]`` (wnid strings), or a
  :func:`jmeta.data.save_store` file (``images``, ``class_names``).
* ``"pickle"``: ``mini-imagenet-cache-{split}.pkl``, a pickled dict with
  ``image_data`` ``[N, 84, 84, 3]`` uint8 and ``class_dict``
  ``{wnid: [indices]}``. Unpickling can run arbitrary code, so it needs the
  explicit opt-in ``allow_pickle=True`` (``jmeta train --allow-pickle``, config
  key ``task.allow_pickle``); convert once with
  ``save_store(load_miniimagenet(split, source="pickle", allow_pickle=True), path)``.
* ``"auto"``: the first of zip, npz, pickle that exists.

**Training-set subset.** The copy of the data this project ships holds only
the first 100 (of 600) images per class in ``train.zip``; a split with fewer
than 600 images per class warns once per process and is marked
``store.info["subset"] = True``.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from jmeta import validate
from jmeta.data import _cache, _decode
from jmeta.data.errors import CorruptDataError, DataNotFoundError, PickleNotAllowedError
from jmeta.data.paths import PathLike, resolve_cache_dir, resolve_data_dir
from jmeta.data.store import ClassStore, load_store

__all__ = ["load_miniimagenet", "MINIIMAGENET_CLASSES", "MINIIMAGENET_SPLITS"]

MINIIMAGENET_SPLITS = ("train", "val", "test")
FULL_PER_CLASS = 600

MINIIMAGENET_CLASSES: dict[str, tuple[str, ...]] = {
    "train": tuple("""n01532829 n01558993 n01704323 n01749939 n01770081 n01843383 n01910747
        n02074367 n02089867 n02091831 n02101006 n02105505 n02108089 n02108551 n02108915 n02111277
        n02113712 n02120079 n02165456 n02457408 n02606052 n02687172 n02747177 n02795169 n02823428
        n02966193 n03017168 n03047690 n03062245 n03207743 n03220513 n03337140 n03347037 n03400231
        n03476684 n03527444 n03676483 n03838899 n03854065 n03888605 n03908618 n03924679 n03998194
        n04067472 n04243546 n04251144 n04258138 n04275548 n04296562 n04389033 n04435653 n04443257
        n04509417 n04515003 n04596742 n04604644 n04612504 n06794110 n07584110 n07697537 n07747607
        n09246464 n13054560 n13133613""".split()),
    "val": tuple("""n01855672 n02091244 n02114548 n02138441 n02174001 n02950826 n02971356
        n02981792 n03075370 n03417042 n03535780 n03584254 n03770439 n03773504 n03980874
        n09256479""".split()),
    "test": tuple("""n01930112 n01981276 n02099601 n02110063 n02110341 n02116738 n02129165
        n02219486 n02443484 n02871525 n03127925 n03146219 n03272010 n03544143 n03775546 n04146614
        n04149813 n04418357 n04522168 n07613480""".split()),
}
"""WordNet ids of the Ravi & Larochelle split (64/16/20), sorted."""

_SOURCES = ("auto", "zip", "npz", "pickle")
_WARNED: set[str] = set()


def _paths(root: Path, split: str) -> dict[str, Path]:
    d = root / "miniimagenet"
    return {"zip": d / f"{split}.zip", "npz": d / f"mini-imagenet-cache-{split}.npz",
            "pickle": d / f"mini-imagenet-cache-{split}.pkl"}


def _check_classes(path: Path, split: str, wnids: list[str]) -> None:
    expected = set(MINIIMAGENET_CLASSES[split])
    got = set(wnids)
    if got != expected:
        raise CorruptDataError(
            f"{path}: the {split!r} split should hold the {len(expected)} Ravi & Larochelle classes; "
            f"found {len(got)} classes, missing {sorted(expected - got)[:5]}, unexpected "
            f"{sorted(got - expected)[:5]} (wrong file for this split?)")


def _equalise(groups: dict[str, list[Any]], path: Path, max_per_class: int | None) -> tuple[int, int]:
    """(images kept per class, images available per class)."""
    counts = {k: len(v) for k, v in groups.items()}
    n = min(counts.values())
    if max(counts.values()) != n:
        warnings.warn(f"{path}: classes hold {n}..{max(counts.values())} images; keeping the first "
                      f"{n} of each so that every class has as many", stacklevel=4)
    return (n if max_per_class is None else min(n, max_per_class)), n


def _whole_cache(hit: dict, split: str, size: int, max_per_class: int | None) -> bool:
    """Whether a decoded cache holds what :func:`_decode_zip` would return for these arguments."""
    if np.shape(hit["available"]) != ():
        return False
    available = int(hit["available"])
    n = available if max_per_class is None else min(max_per_class, available)
    classes = MINIIMAGENET_CLASSES[split]
    return (n >= 1 and hit["images"].dtype == np.uint8 and
            hit["images"].shape == (len(classes), n, size, size, 3) and tuple(hit["class_names"].tolist()) == classes)


def _decode_zip(path: Path, split: str, size: int, max_per_class: int | None):
    member = re.compile(rf"^{re.escape(split)}/(n\d{{8}})/([^/]+\.(?:jpe?g|JPE?G))$")
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CorruptDataError(f"{path}: not a readable zip file ({e}); it is truncated or "
                               f"corrupted: delete it and fetch it again") from e
    with z:
        groups: dict[str, list[zipfile.ZipInfo]] = {}
        for info in z.infolist():
            m = member.match(info.filename)
            if m:
                groups.setdefault(m.group(1), []).append(info)
        if not groups:
            raise CorruptDataError(f"{path}: no members named {split}/<wnid>/<file>.jpg")
        wnids = sorted(groups)
        _check_classes(path, split, wnids)
        n, available = _equalise(groups, path, max_per_class)
        try:
            blobs = [(f"{path}:{i.filename}", z.read(i)) for w in wnids
                     for i in sorted(groups[w], key=lambda i: i.filename)[:n]]
        except (zipfile.BadZipFile, EOFError, OSError, zipfile.error) as e:
            raise CorruptDataError(f"{path}: cannot read a member ({e}); the file is truncated or "
                                   f"corrupted: delete it and fetch it again") from e
    imgs = [_decode.decode_image(data, mode="RGB", size=size, name=name) for name, data in blobs]
    shapes = {im.shape for im in imgs}
    if len(shapes) != 1:
        raise CorruptDataError(f"{path}: images decode to different shapes {sorted(shapes)[:4]}")
    return _decode.stack(imgs).reshape(len(wnids), n, size, size, 3), wnids, available


def _from_flat(path: Path, split: str, image_data: np.ndarray, index: dict[str, list[int]],
               size: int, max_per_class: int | None):
    if image_data.ndim != 4 or image_data.shape[-1] != 3 or image_data.dtype != np.uint8:
        raise CorruptDataError(f"{path}: image_data must be uint8 [N, H, W, 3], got "
                               f"{image_data.dtype} {image_data.shape}")
    wnids = sorted(index)
    _check_classes(path, split, wnids)
    n, available = _equalise(index, path, max_per_class)
    idx = np.asarray([list(index[w])[:n] for w in wnids], dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= len(image_data)):
        raise CorruptDataError(f"{path}: class indices exceed the {len(image_data)} images")
    images = image_data[idx]
    if images.shape[2:4] != (size, size):
        flat = images.reshape(-1, *images.shape[2:])
        from PIL import Image
        flat = _decode.stack(np.asarray(Image.fromarray(im).resize((size, size), Image.LANCZOS))
                             for im in flat)
        images = flat.reshape(len(wnids), n, size, size, 3)
    return np.ascontiguousarray(images), wnids, available


def _load_pickle(path: Path, split: str, size: int, max_per_class: int | None):
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, ImportError) as e:
        raise CorruptDataError(f"{path}: cannot unpickle ({type(e).__name__}: {e}); the file is "
                               f"truncated or not a mini-ImageNet cache pickle") from e
    if not isinstance(data, dict) or "image_data" not in data or "class_dict" not in data:
        raise CorruptDataError(f"{path}: expected a dict with keys 'image_data' and 'class_dict', "
                               f"got {type(data).__name__}"
                               f"{' with keys ' + str(sorted(data)) if isinstance(data, dict) else ''}")
    return _from_flat(path, split, np.asarray(data["image_data"]), data["class_dict"], size,
                      max_per_class)


def _load_npz_variant(path: Path, split: str, size: int, max_per_class: int | None):
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise CorruptDataError(f"{path}: cannot read this .npz ({e}); it is truncated or "
                               f"corrupted") from e
    if {"images", "class_names"} <= files:
        store = load_store(path)
        images, wnids = store.images, list(store.class_names)
        order = np.argsort(wnids)
        index = {wnids[i]: [int(i) * store.num_per_class + j for j in range(store.num_per_class)]
                 for i in order}
        flat = images.reshape(-1, *images.shape[2:])
        return _from_flat(path, split, flat, index, size, max_per_class)
    if {"image_data", "labels"} <= files:
        arrays = _cache.load_npz(path, ("image_data", "labels"))
        labels = arrays["labels"].astype(str)
        index: dict[str, list[int]] = {}
        for i, w in enumerate(labels.tolist()):
            index.setdefault(w, []).append(i)
        return _from_flat(path, split, arrays["image_data"], index, size, max_per_class)
    raise CorruptDataError(f"{path}: expected arrays ('image_data', 'labels') or ('images', "
                           f"'class_names'), found {sorted(files)}")


def load_miniimagenet(split: str, *, data_dir: PathLike | None = None, image_size: int = 84,
                      source: str = "auto", allow_pickle: bool = False, cache: bool = True,
                      cache_dir: PathLike | None = None,
                      max_per_class: int | None = None) -> ClassStore:
    """Loads a mini-ImageNet split as a :class:`ClassStore` ``[C, M, S, S, 3]`` uint8.

    Args:
      split: ``"train"`` (64 classes), ``"val"`` (16) or ``"test"`` (20).
      data_dir: data root holding ``miniimagenet/`` (default:
        ``JMETA_DATA_DIR`` or ``~/.cache/jmeta/data``).
      image_size: side ``S`` of the output; 84 is the standard size, other
        sizes are LANCZOS resizes.
      source: ``"auto"``, ``"zip"``, ``"npz"`` or ``"pickle"`` (see module doc).
      allow_pickle: opt in to unpickling ``mini-imagenet-cache-{split}.pkl``
        (unpickling untrusted files can execute arbitrary code).
      cache: read/write the decoded-array cache (zip source only; the other
        sources are arrays already).
      cache_dir: cache folder (default: ``JMETA_CACHE_DIR``, else
        ``<data root>/cache`` if writable, else ``~/.cache/jmeta/cache``).
      max_per_class: keep only the first ``max_per_class`` images of each
        class (file-name order); decodes only those. ``None`` keeps all.

    Returns:
      The store; ``store.info`` holds ``source``, ``file``, ``cache_path``,
      ``cache_hit``, ``available_per_class`` (images per class in the source)
      and ``subset`` (the source has fewer than 600 images per class).

    Raises:
      ValueError: bad ``split``, ``source``, ``image_size`` or
        ``max_per_class``.
      PickleNotAllowedError: (a ``ValueError``) a pickle without ``allow_pickle=True``.
      DataNotFoundError: no source file (the message lists the paths tried).
      CorruptDataError: a truncated or malformed file.
    """
    if split not in MINIIMAGENET_SPLITS:
        raise ValueError(f"load_miniimagenet: unknown split {split!r}; valid: {list(MINIIMAGENET_SPLITS)}")
    if source not in _SOURCES:
        raise ValueError(f"load_miniimagenet: unknown source {source!r}; valid: {list(_SOURCES)}")
    image_size = validate.integer("load_miniimagenet: image_size (84 is standard)", image_size, min=1, max=1024)
    max_per_class = validate.integer("load_miniimagenet: max_per_class", max_per_class, min=1, optional=True)
    root = resolve_data_dir(data_dir)
    paths = _paths(root, split)
    if source == "auto":
        source = next((s for s in ("zip", "npz", "pickle") if paths[s].is_file()), None)
        if source is None:
            raise DataNotFoundError(
                f"mini-ImageNet {split!r} split not found; looked for {[str(p) for p in paths.values()]}. "
                f"Place {split}.zip (members {split}/<wnid>/<file>.jpg) in {root / 'miniimagenet'}, or "
                f"set data_dir / JMETA_DATA_DIR to the folder that holds miniimagenet/.")
    path = paths[source]
    if not path.is_file():
        raise DataNotFoundError(f"mini-ImageNet file {path} does not exist (source={source!r}); "
                                f"set data_dir / JMETA_DATA_DIR to the folder that holds miniimagenet/.")
    if source == "pickle" and not allow_pickle:
        raise PickleNotAllowedError(
            f"load_miniimagenet: {path} is a pickle; unpickling can execute arbitrary code, so it "
            f"needs the explicit opt-in allow_pickle=True (only for files you trust). To avoid "
            f"pickles afterwards, convert it once with jmeta.data.save_store(load_miniimagenet("
            f"{split!r}, source='pickle', allow_pickle=True), '{paths['npz']}').", path=path)

    info: dict[str, Any] = {"source": source, "file": str(path), "cache_path": None, "cache_hit": False}
    images = wnids = None
    available = 0
    if source == "zip":
        if cache:
            digest = _cache.sha256_file(path)
            cpath = resolve_cache_dir(cache_dir, root) / (
                f"miniimagenet-{split}-zip-{image_size}px-{max_per_class or 'all'}"
                f"-v{_cache.CACHE_VERSION}-{digest[:16]}.npz")
            info["cache_path"] = str(cpath)
            hit = _cache.cached_arrays(cpath, ("images", "class_names", "available"))
            if hit is not None and not _whole_cache(hit, split, image_size, max_per_class):
                warnings.warn(f"ignoring cache {cpath}: it holds {hit['images'].dtype} {hit['images'].shape}, "
                              f"not uint8 [{len(MINIIMAGENET_CLASSES[split])}, n, {image_size}, {image_size}, 3] "
                              f"of the {split!r} classes; decoding again", stacklevel=2)
                hit = None
            if hit is not None:
                images, wnids, available = (hit["images"], hit["class_names"].tolist(),
                                            int(hit["available"]))
                info["cache_hit"] = True
        if images is None:
            images, wnids, available = _decode_zip(path, split, image_size, max_per_class)
            if cache:
                _cache.save_npz_atomic(cpath, {"images": images,
                                               "class_names": np.asarray(wnids, dtype=str),
                                               "available": np.asarray(available)})
    elif source == "npz":
        images, wnids, available = _load_npz_variant(path, split, image_size, max_per_class)
    else:
        images, wnids, available = _load_pickle(path, split, image_size, max_per_class)

    info["available_per_class"] = available
    info["subset"] = bool(available < FULL_PER_CLASS)
    if info["subset"] and str(path) not in _WARNED:
        _WARNED.add(str(path))
        warnings.warn(f"mini-ImageNet {split!r} from {path} holds {available} images per class "
                      f"(the standard split has {FULL_PER_CLASS}): results on it are not comparable "
                      f"to published numbers", stacklevel=2)
    return ClassStore(images, wnids, f"miniimagenet/{split}", info)
